"""Resumable training state: trainable tensors, optimiser, penalty controller, RNG, step records.

Written atomically (temp file + rename) so a kill at any moment leaves either the previous or the new
checkpoint, never a torn one. The data order is a pure function of the seed (train.schedule), so the
step number is all that is needed to continue where the run stopped. Tensors are whole (an FSDP-sharded
run gathers them, train._whole), so a run may resume with another number of processes, sharded or not.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import UserError

FILE = "state.pt"


def save_checkpoint(directory: Path, state: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{FILE}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / FILE)
    except BaseException:  # disk full...: keep the previous checkpoint, not a half-written one
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(directory: Path) -> dict | None:
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data: no code runs
    except Exception as exc:  # a checkpoint we wrote atomically should never be torn; say so if it is
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it to start over") from exc


def check_state(state, params, steps: int, directory: Path, record_fields) -> None:
    """UserError unless `state` (load_checkpoint's) fits this run: one floating tensor of each trainable
    parameter's shape, in order, Adam moments of the same shapes, the RNG state, and consecutive step records
    1..n with n <= `steps` (the plan's length) and `record_fields` (StepRecord's). Nothing of it is used before
    it passes. Dtypes may differ in precision only: a run may resume sharded (bf16) or not (fp32)."""
    problem = _state_problem(state, list(params), steps, set(record_fields))
    if problem:
        raise UserError(
            f"checkpoint {Path(directory) / FILE} does not belong to this run ({problem}); delete "
            f"{directory} to restart training from the beginning"
        )


def _state_problem(state, params: list, steps: int, fields: set) -> str | None:
    if not isinstance(state, dict) or not {"params", "optimizer", "controller", "rng", "records"} <= set(state):
        return "not a training state"
    tensors = state["params"]
    if not isinstance(tensors, list) or len(tensors) != len(params):
        return f"{len(tensors) if isinstance(tensors, list) else 'no'} tensors for {len(params)} trainable parameters"
    for i, (value, p) in enumerate(zip(tensors, params, strict=True)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != p.shape:
            got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            return f"tensor {i} is {got}, the parameter {tuple(p.shape)} {p.dtype}"
        if not bool(value.isfinite().all()):
            return f"tensor {i} is not finite"
    problem = _optimizer_problem(state["optimizer"], params)
    if problem:
        return problem
    controller = state["controller"]
    if not isinstance(controller, dict) or not isinstance(controller.get("history"), list):
        return "no penalty controller state"
    rng = state["rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        return "no CPU random-number state"
    return _records_problem(state["records"], steps, fields) or _monitor_problem(state.get("monitor"), params, steps)


def _monitor_problem(monitor, params: list, steps: int) -> str | None:
    """The validation monitor's state (validation.ValidationMonitor.state_dict), when the run has one."""
    if monitor is None:
        return None
    if not isinstance(monitor, dict) or not {"curve", "best_step", "best_params"} <= set(monitor):
        return "a malformed validation state"
    curve, best_params = monitor["curve"], monitor["best_params"]
    if not isinstance(curve, list) or not all(  # [step, accuracy, likelihood, macro-F1] (an older abft: no F1)
        isinstance(row, list) and len(row) == 4 and all(_finite(v) for v in row) and 0 <= row[0] <= steps
        for row in curve
    ):
        return "a malformed validation curve (or one from an older abft, without macro-F1)"
    if not isinstance(best_params, list) or len(best_params) != (len(params) if curve else 0):
        return "best-step weights for other parameters"
    for value, p in zip(best_params, params, strict=False):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != p.shape:
            return "best-step weights of the wrong shape"
    steps_seen = {int(row[0]) for row in curve}
    if curve and monitor["best_step"] not in steps_seen:
        return "a best step that was never scored"
    return None


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optimizer_problem(optimizer, params: list) -> str | None:
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    moments = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(groups, list) or not isinstance(moments, dict):
        return "no optimiser state"
    if sum(len(g.get("params", ())) for g in groups if isinstance(g, dict)) != len(params):
        return "the optimiser state is for other parameters"
    for index, entry in moments.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            return f"optimiser state {index!r} is for no parameter"
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                return f"optimiser state {key} of tensor {index} is {tuple(value.shape)}"
    return None


def _records_problem(records, steps: int, fields: set) -> str | None:
    if not isinstance(records, list):
        return "no step records"
    if len(records) > steps:
        return f"{len(records)} step records for a plan of {steps} steps"
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict) or set(record) != fields or record["step"] != n:
            return f"step record {n} is malformed"
    return None
