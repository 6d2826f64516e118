"""The base-model fingerprint that saved trained weights carry, so they are only ever loaded onto their base.

    fp = base_fingerprint(model, replaced=slices)   # {"base_fingerprint": "<64 hex>", "base_dtype": "bfloat16"}
    same = base_fingerprint(other, replaced=slices, dtype=fp["base_dtype"]) == fp

Definition: sha256 over every weight of the model that the saved result does NOT overwrite, in sorted name
order: for each parameter its name, dtype, shape and the sha256 of its bytes (a small Merkle tree, so the
tensors are hashed in parallel). Which weights are left out:
- delta.safetensors stores the trained W_Q/W_K (and q/k biases) as *values*, so the base's own W_Q/W_K do not
  matter to the result: those slices are left out (`replaced`), the V columns of a fused c_attn stay in. The
  fingerprint is then the same before and after training, and save_delta computes it from the trained model.
- a LoRA adapter is a *difference* (W + BA), so nothing is left out (`replaced=()`): base W_Q/W_K count too.
Names are the plain model's (peft's `.base_layer` removed, lora_A / lora_B skipped); tied weights count once;
buffers (rotary tables, masks) are computed, not weights, and are not hashed.

Precision: the weights are hashed in `dtype`, the dtype of the model the weights were trained on (recorded
next to the fingerprint). A model in another dtype is cast to it tensor by tensor for hashing, so a delta
trained in bf16 on a GPU matches the same base loaded in fp32 on a CPU (fp32 -> bf16 rounds as loading in bf16
did), and a delta trained in fp32 does not match a base loaded in bf16 (that base lost the bits it was trained
with). A 4-bit (bitsandbytes) model has no fingerprint: its stored bytes are not the base's weights.

Cost: one copy + sha256 pass over the weights, about as much as reading them once; measured on the embedded
SmolLM2-135M (fp32, 485 MB hashed) 1.2-4.7 s on a shared 2-core machine at load 5 (sha256 with SHA-NI reaches
1.5-2 GB/s on an idle core: ~0.3 s), spread over torch.get_num_threads() threads.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from .. import distributed

FORMAT = "abft-base-sha256-v1"
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def canonical_name(name: str) -> str | None:
    """A parameter's name in the plain model; None for a LoRA adapter's own tensors (lora_A, lora_B, ...)."""
    if re.search(r"\.lora_[A-Za-z_]+\.", name):
        return None
    return name.replace(".base_layer.", ".")


def is_quantized(model: torch.nn.Module) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or any(
        getattr(p, "quant_state", None) is not None for p in model.parameters()
    )


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point base weights (LoRA adapters, which peft may keep in fp32, aside)."""
    for name, p in model.named_parameters():
        if canonical_name(name) is not None and p.is_floating_point():
            return p.dtype
    return torch.float32


def _replaced_ranges(replaced: Iterable) -> dict[str, list[tuple[int, int, int]]]:
    """{parameter name: [(axis, start, stop), ...]} of the slices (params.QKSlice) the saved tensors overwrite."""
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    for s in replaced:
        ranges.setdefault(s.param, []).append((s.out_dim, s.start, s.stop))
        if s.bias:
            ranges.setdefault(s.bias, []).append((0, s.start, s.stop))
    return ranges


def _kept_bytes(tensor: torch.Tensor, dtype: torch.dtype, ranges: list[tuple[int, int, int]]) -> memoryview | None:
    """The bytes of `tensor` in `dtype` with the replaced ranges zeroed; None when the ranges cover all of it."""
    # always a copy: a numpy view of a live parameter's storage would pin it (FSDP frees unsharded storages)
    t = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else None, copy=True)
    if ranges:
        covered = torch.zeros(t.shape, dtype=torch.bool)
        for axis, start, stop in ranges:
            covered.narrow(axis, start, stop - start).fill_(True)
        if bool(covered.all()):
            return None
        t.masked_fill_(covered, 0)
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _digest(data: memoryview | None) -> str:
    return "replaced" if data is None else hashlib.sha256(data).hexdigest()


def base_fingerprint(model: torch.nn.Module, replaced: Iterable = (), dtype: str | None = None) -> dict | None:
    """{"base_fingerprint": sha256 hex, "base_dtype": name} of `model`'s weights outside `replaced` (see the
    module docstring), hashed in `dtype` (default: the model's own); None for a 4-bit model.

    Every process of a sharded (FSDP) model must call it: each weight is gathered whole, in name order."""
    if is_quantized(model):
        return None
    target = DTYPE_NAMES[dtype] if dtype else model_dtype(model)
    ranges = _replaced_ranges(replaced)
    params = {}
    for name, p in model.named_parameters():  # tied weights once (remove_duplicate)
        plain = canonical_name(name)
        if plain is not None:
            params[plain] = p
    lines = [FORMAT, str(target).removeprefix("torch.")]
    workers = max(1, torch.get_num_threads())
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib releases the GIL on large buffers
        for name in sorted(params):
            p = params[name]
            full = distributed.full(p.detach())  # every process, same order: a collective under FSDP
            data = _kept_bytes(full, target, ranges.get(name, []))
            kind = target if p.is_floating_point() else p.dtype  # as hashed
            header = f"{name}\t{str(kind).removeprefix('torch.')}\t{tuple(p.shape)}"
            pending.append((header, pool.submit(_digest, data)))
            while len(pending) > 2 * workers:  # bound the CPU copies waiting to be hashed
                head, future = pending.popleft()
                lines.append(f"{head}\t{future.result()}")
        lines += [f"{head}\t{future.result()}" for head, future in pending]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"base_fingerprint": digest, "base_dtype": str(target).removeprefix("torch.")}
