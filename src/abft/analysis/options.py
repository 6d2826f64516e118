"""Settings of the analysis commands (`abft heads`, `abft ceiling`), apart from their modules so that building
the CLI's parser imports neither torch's stack nor transformers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError, param
from ..limits import MAX_PROMPTS, check_at_least, check_at_most, check_seed

if TYPE_CHECKING:
    from ..config import RunConfig

CIRCUIT_FACTOR = 5.0  # c of the circuit threshold c / n_t
EDITS = ("none", "knockout", "drop", "move", "target", "swap")  # abft ceiling's edits of the last attention row
HEAD_SETS = ("filter", "all")  # the heads ceiling edits: ABFT's filtered induction heads, or every head


@dataclass
class HeadsOptions:
    """`abft heads`' settings (its flags: abft.cli.analysis)."""

    samples: int = 64
    min_rate: float = 0.5
    circuit_factor: float = CIRCUIT_FACTOR
    induction_length: int = 32
    induction_sequences: int = 8
    induction_threshold: float = 0.4
    log_base: str = "e"
    batch_size: int = 8

    def validate(self, cfg: RunConfig) -> None:
        """UserError for settings `abft heads` cannot use with `cfg`'s data."""
        checks = [("samples", self.samples, 1), ("induction_length", self.induction_length, 2)]
        checks += [("induction_sequences", self.induction_sequences, 1), ("batch_size", self.batch_size, 1)]
        check_at_least([*checks, ("k", cfg.data.k, 1)])
        check_at_most(
            [("samples", self.samples, MAX_PROMPTS), ("induction_sequences", self.induction_sequences, MAX_PROMPTS)]
        )
        check_seed(cfg.seed)
        for name, value in (("circuit_factor", self.circuit_factor), ("induction_threshold", self.induction_threshold)):
            if not math.isfinite(value):
                raise UserError(f"{param(name)} must be a finite number, got {value}")
        if not 0 < self.min_rate <= 1:
            raise UserError(f"{param('min_rate')} must lie in (0, 1], got {self.min_rate}")
