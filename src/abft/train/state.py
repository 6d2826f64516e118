"""The training state a checkpoint holds (trainable tensors, Adam, PID, RNG, records, validation), as whole
CPU tensors so that any process count can resume it, and its FSDP shares when it is put back."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import check_state, load_checkpoint, save_checkpoint
from .records import StepRecord


def save_state(directory: Path, masters, optimizer, controller, records: list[StepRecord], monitor) -> None:
    """Write the state after the last of `records` (every process calls this: FSDP shares are gathered)."""
    state = {
        "params": [distributed.full(m.detach()).cpu() for m in masters.tensors],
        "optimizer": _whole(optimizer.state_dict()),
        "controller": controller.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "records": [dict(r.__dict__) for r in records],
        "monitor": monitor.state_dict() if monitor is not None else None,
    }
    if distributed.is_main():
        save_checkpoint(directory, state)


def restore_state(directory: Path | None, masters, optimizer, controller, monitor, steps: int, lr: float):
    """The records of a checkpoint in `directory` after putting its state back (read by the main process);
    [] when there is none. `lr`: the run's, which --resume --lr may have lowered after a divergence."""
    state = load_checkpoint(directory) if directory and distributed.is_main() else None
    state = distributed.broadcast_object(state)
    if state is None:
        return []
    check_state(state, masters.tensors, steps, directory, StepRecord.__dataclass_fields__)
    with torch.no_grad():
        for m, value in zip(masters.tensors, state["params"], strict=True):
            distributed.local(m).copy_(distributed.local(distributed.like(value.to(m.dtype), m)))
    masters.weights_out()
    optimizer.load_state_dict(_optimizer_shares(state["optimizer"], masters.tensors))
    optimizer.param_groups[0]["lr"] = lr
    controller.load_state_dict(state["controller"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():  # dropout on GPU (LoRA) draws from these
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if monitor is not None and state.get("monitor"):
        monitor.load_state_dict(state["monitor"])
    return [StepRecord(**r) for r in state["records"]]


def _whole(value):
    """An optimiser state dict with every FSDP share gathered into a whole CPU tensor (every process calls
    this, in the same order)."""
    if isinstance(value, dict):
        return {key: _whole(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return distributed.full(value).cpu() if isinstance(value, torch.Tensor) else value


def _optimizer_shares(state: dict, params) -> dict:
    """A whole optimiser state dict (_whole's) laid out like `params`: each parameter-shaped tensor becomes
    this process's FSDP share of it (a no-op without sharding)."""
    out = {**state, "state": {}}
    for index, entry in state["state"].items():
        p = params[int(index)]
        out["state"][index] = {
            key: distributed.like(v.to(p.device), p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
            for key, v in entry.items()
        }
    return out
