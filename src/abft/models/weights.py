"""The trained W_Q/W_K of a model: read, saved, checked against their base model and put back.

    save_delta(model, slices, path); load_delta(model, path)
    tensors = read_qk(path); assign_qk(model, tensors, slices)   # load_delta in two steps
    save_trained(model, run_dir, meta)      # delta.safetensors, or adapter/ when the model carries LoRA
    read_meta(path); check_base(model, meta, slices, path)   # the base-model fingerprint load_delta checks
    base = BaseWeights(model)               # W_Q/W_K before training (one per run), keyed as trained_tensors

Tensors are keyed by slice (models.arch.QKSlice): '<param>@q' / '<param>@k', so the Q and K parts of a fused
c_attn are separate tensors. With LoRA the slices still name the base W_Q/W_K, by their names without peft's
wrapper ('<module>.weight', as in the plain model; qk_param finds the tensor inside the wrapper), and
trained_tensors reports the effective weights (base + LoRA update).

Saved weights name their base model: delta.safetensors's metadata (and a LoRA adapter's
adapter_model.safetensors's) holds the base model's name and fingerprint (models.fingerprint), and
load_delta refuses another base, after the shape checks and before changing anything; weights saved before
fingerprints existed load unchecked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .. import distributed
from ..errors import UserError, param
from ..rundir import FILE_MODE
from .arch import QKSlice, find_qk_slices, is_lora_layer, owner, qk_param
from .fingerprint import DTYPE_NAMES, base_fingerprint
from .lora import ADAPTER_DIR, adapters_disabled, delta_weight, has_lora, merge_adapter, save_adapter

DELTA_FILE = "delta.safetensors"  # inside a run directory: the trained W_Q/W_K of a run without LoRA
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # inside an adapter directory (peft's name)


def _weight(model: torch.nn.Module, name: str, effective: bool = True) -> torch.Tensor:
    """A projection's weight; with LoRA the base (dequantised if 4-bit), plus the LoRA update if `effective`."""
    module = model.get_submodule(owner(name))
    if not is_lora_layer(module):
        return distributed.full(qk_param(model, name).detach())
    weight = module.base_layer.weight
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes 4-bit
        from peft.utils.integrations import dequantize_module_weight

        weight = dequantize_module_weight(module.base_layer)
    weight = distributed.full(weight.detach())
    delta = delta_weight(module) if effective else None
    return weight if delta is None else weight + distributed.full(delta.detach()).to(weight.dtype)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to("cpu", copy=True, memory_format=torch.contiguous_format)


def trained_tensors(model: torch.nn.Module, slices: list[QKSlice], effective: bool = True) -> dict[str, torch.Tensor]:
    """CPU copies of the Q/K slices' current values, keyed '<param>@<kind>' (bias: '<bias>@<kind>').

    With LoRA these are the effective weights (base + update), so norms of the change mean the same thing;
    `effective=False`: the base weights under the adapters instead.
    """
    weights: dict[str, torch.Tensor] = {}  # one per parameter: GPT-2's q and k slices share c_attn
    out = {}
    for s in slices:
        if s.param not in weights:
            weights[s.param] = _weight(model, s.param, effective)
        out[f"{s.param}@{s.kind}"] = _cpu_copy(s.select(weights[s.param]))
        if s.bias:
            out[f"{s.bias}@{s.kind}"] = _cpu_copy(s.select(distributed.full(qk_param(model, s.bias).detach()), True))
    return out


def _places(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], slices: list[QKSlice], what
) -> dict[str, tuple[str, QKSlice, bool]]:
    """{key: (parameter, slice, is_bias)} of `tensors` in the model; a UserError naming `what` when a key or a
    shape does not fit."""
    places: dict[str, tuple[str, QKSlice, bool]] = {}  # key -> (parameter, slice, is_bias)
    for s in slices:
        places[f"{s.param}@{s.kind}"] = (s.param, s, False)
        if s.bias:
            places[f"{s.bias}@{s.kind}"] = (s.bias, s, True)
    extra, missing = sorted(set(tensors) - set(places)), sorted(set(places) - set(tensors))
    if extra or missing:
        reason = f"it has tensor '{extra[0]}'" if extra else f"it lacks tensor '{missing[0]}'"
        raise UserError(f"{what} does not match this model ({reason}); load it onto its base model")
    for key in sorted(tensors):
        name, s, is_bias = places[key]
        shape = list(qk_param(model, name).shape)
        shape[0 if is_bias else s.out_dim] = s.stop - s.start
        if tuple(tensors[key].shape) != tuple(shape):
            raise UserError(
                f"{what}: '{key}' has shape {tuple(tensors[key].shape)}, the model {tuple(shape)}; "
                "load it onto its base model"
            )
    return places


def assign_qk(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    slices: Iterable[QKSlice] | None = None,
    source: str | Path | None = None,
) -> None:
    """Copy `tensors` (keyed as trained_tensors) into the model's Q/K slices, in place.

    Every key and shape is checked first, so a mismatch (a UserError naming `source`, e.g. the file they came
    from) leaves the model unchanged.
    """
    slices = list(slices) if slices is not None else find_qk_slices(model)
    places = _places(model, tensors, slices, source if source is not None else "these weights")
    with torch.no_grad():
        for name in dict.fromkeys(name for name, _, _ in places.values()):
            data = qk_param(model, name).data
            value = distributed.full(data)  # `data` itself, written in place, unless an FSDP share
            for key, (owner_name, s, is_bias) in places.items():
                if owner_name == name:
                    target = s.select(value, is_bias)
                    target.copy_(tensors[key].to(target.dtype))
            if value is not data:
                data.to_local().copy_(distributed.like(value, data).to_local())


def save_delta(model: torch.nn.Module, slices: list[QKSlice], path: Path, meta: dict | None = None) -> None:
    """Write the trained W_Q/W_K values (not differences) to a safetensors file, atomically.

    Its metadata names the base model (`meta["model"]`, else the model's name_or_path) and its fingerprint
    (models.fingerprint: the weights the file does not replace, so the trained model itself gives it), which
    load_delta checks."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(trained_tensors(model, slices), str(tmp), metadata=_metadata(model, slices, "abft-qk", meta))
        os.chmod(tmp, FILE_MODE)  # as open() would create it, not safetensors' 0600
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _metadata(model: torch.nn.Module, replaced: list[QKSlice], kind: str, meta: dict | None) -> dict[str, str]:
    """safetensors metadata of saved trained weights: {"abft": JSON of format, base model name, fingerprint}."""
    info = {"format": kind, "model": getattr(model, "name_or_path", "") or "", **(meta or {})}
    info.update(base_fingerprint(model, replaced) or {})
    # one metadata key: safetensors does not keep the order of several, and the file must be byte-stable
    return {"abft": json.dumps(info, sort_keys=True)}


def save_trained(model: torch.nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    """Save what training changed into a run directory: adapter/ (LoRA) or delta.safetensors; returns it.

    Both carry the base model's fingerprint (delta: in its metadata; adapter: in adapter_model.safetensors's
    metadata, which peft ignores). `directory` is created if needed; a UserError when it cannot be written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if has_lora(model):
            return save_adapter(model, directory / ADAPTER_DIR, metadata=_metadata(model, [], "abft-lora", meta))
        save_delta(model, find_qk_slices(model), directory / DELTA_FILE, meta)
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise UserError(f"cannot save the trained weights in {directory}: {reason}") from exc
    return directory / DELTA_FILE


def trained_weights(run: str | Path) -> Path | None:
    """A run directory's trained weights: its delta.safetensors, else its adapter/ (LoRA); None when it has
    neither (an evaluation-only run, or one with save=False)."""
    run = Path(run)
    if (run / DELTA_FILE).is_file():
        return run / DELTA_FILE
    if (run / ADAPTER_DIR).is_dir():
        return run / ADAPTER_DIR
    return None


def check_trained(run: str | Path) -> Path:
    """trained_weights(run), or a UserError when the run saved none."""
    found = trained_weights(run)
    if found is None:
        raise UserError(f"no trained weights in {run} (an evaluation-only or {param('save', False)} run)")
    return found


def read_qk(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a delta.safetensors file (save_delta's), keyed as trained_tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # SafetensorError / OSError: damaged, truncated or not a safetensors file
        raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}); train it again") from exc


def read_meta(path: str | Path) -> dict:
    """abft's metadata of saved trained weights (a delta file, an adapter directory or its .safetensors): {} for
    weights saved before abft wrote any; a UserError when the file or its metadata is not readable."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("abft")
    except Exception as exc:  # SafetensorError / OSError: damaged, truncated or not a safetensors file
        raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}); train it again") from exc
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    fingerprint = meta.get("base_fingerprint") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or (
        "base_fingerprint" in meta
        and not (
            isinstance(fingerprint, str)
            and re.fullmatch("[0-9a-f]{64}", fingerprint)
            and meta.get("base_dtype") in DTYPE_NAMES
        )
    ):
        raise UserError(f"{path}: its abft metadata is not as abft writes it (edited or damaged); train it again")
    return meta


def check_base(model: torch.nn.Module, meta: dict, replaced: Iterable[QKSlice], source: str | Path) -> None:
    """UserError (one line, both fingerprints) when saved weights with `meta` (read_meta) name another base
    model than `model`; weights without a fingerprint (saved by an older abft) pass."""
    recorded = meta.get("base_fingerprint")
    if recorded is None:
        return
    mine = base_fingerprint(model, replaced, dtype=meta["base_dtype"])
    if mine is None:  # a 4-bit model: its bytes are not the base's weights
        raise UserError(f"{source} cannot be checked against a 4-bit model; load its base in full precision")
    if mine["base_fingerprint"] != recorded:
        name = meta.get("model")
        raise UserError(
            f"{source} was trained on another base model"
            + (f" ({name})" if isinstance(name, str) and name else "")
            + f": fingerprint {recorded[:16]}, this model's {mine['base_fingerprint'][:16]} "
            f"({meta['base_dtype']}); load it onto its base model"
        )


def load_delta(model: torch.nn.Module, path: str | Path, slices: Iterable[QKSlice] | None = None) -> None:
    """Copy saved W_Q/W_K values into `model` in place (a run directory, its .safetensors file or adapter).

    A LoRA adapter (a run directory's adapter/, or an adapter directory) is merged into the base weights
    (models.lora.merge_adapter). Weights that name a base-model fingerprint are refused on another base
    (check_base); the model is left unchanged by any refusal.
    """
    path = Path(path)
    if path.is_dir():  # a run directory, or an adapter directory itself
        path = trained_weights(path) or (path if (path / "adapter_config.json").is_file() else path / DELTA_FILE)
    if path.is_dir():
        if (path / ADAPTER_WEIGHTS).is_file():
            check_base(model, read_meta(path), [], path)
        merge_adapter(model, path)
        return
    if not path.is_file():
        raise UserError(f"no trained weights at {path}")
    tensors = read_qk(path)
    slices = list(slices) if slices is not None else find_qk_slices(model)
    _places(model, tensors, slices, path)  # a model of another shape: named by its tensors, not a fingerprint
    check_base(model, read_meta(path), slices, path)
    assign_qk(model, tensors, slices, source=path)


class BaseWeights:
    """W_Q/W_K (and their biases) as they were before training, keyed as trained_tensors; one per run,
    shared by the report's qk_shift, MAUVE's base-model features and interpolation's restore.

    Without LoRA the slices are copied (to the CPU) when this is made. With LoRA nothing is copied: training
    moves the adapters only, so the base weights under them still hold the values.
    """

    def __init__(self, model: torch.nn.Module, slices: Iterable[QKSlice] | None = None) -> None:
        self.slices = list(slices) if slices is not None else find_qk_slices(model)
        self.lora = has_lora(model)
        self._copy = None if self.lora else trained_tensors(model, self.slices)

    def tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The base values (CPU tensors; with LoRA read from `model`'s base layers)."""
        return self._copy if self._copy is not None else trained_tensors(model, self.slices, effective=False)

    def restore(self, model: torch.nn.Module) -> None:
        """Put the base values back into a model without LoRA, in place."""
        if self._copy is None:
            raise ValueError("BaseWeights.restore: the base of a LoRA model is never changed; disable its adapters")
        assign_qk(model, self._copy, self.slices)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """`model` with its base W_Q/W_K for the block (e.g. to featurise with the base model), then as before."""
        if self.lora:
            with adapters_disabled(model):
                yield model
            return
        current = trained_tensors(model, self.slices)
        self.restore(model)
        try:
            yield model
        finally:
            assign_qk(model, current, self.slices)
