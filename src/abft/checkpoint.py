"""Resumable training state: trainable tensors, optimiser, penalty controller, RNG, step records.

Written atomically (temp file + rename) so a kill at any moment leaves either the previous or the new
checkpoint, never a torn one. The data order is a pure function of the seed (train.schedule), so the
step number is all that is needed to continue where the run stopped. Tensors are whole (an FSDP-sharded
run gathers them, train._whole), so a run may resume with another number of processes, sharded or not.
"""

from __future__ import annotations

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
