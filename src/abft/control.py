"""Schedules for the wrong-label penalty A (the paper's "self-adaption loss").

The reward B is fixed. After every optimiser step t (1-based) the controller sees n_t, the mean number
of induction heads per example in that pseudo-batch, and for t > 2 moves A:

    pid:  A_t = A_{t-1} + Cp (n_t - n_{t-1}) + Ci (n_t - n_1) + Cd (n_t - 2 n_{t-1} + n_{t-2})
    p:    A_t = A_{t-1} + Kp (n_t - n_{t-1})
    none: A stays A_0

The PID's integral term Ci * sum_{i=2..t}(n_i - n_{i-1}) telescopes to Ci (n_t - n_1): its set-point is
the head count of the first step. More heads -> larger penalty -> attention spreads -> fewer heads.
A is clamped at >= 0 by default (a negative penalty would reward attention to wrong labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AdaptiveMode = Literal["none", "p", "pid"]


@dataclass
class PenaltyController:
    mode: AdaptiveMode = "pid"
    penalty: float = 0.5  # A
    reward: float = 1.0  # B
    p_factor: float = 0.03
    pid: tuple[float, float, float] = (0.03, 0.005, 0.005)
    clamp: bool = True
    history: list[float] = field(default_factory=list)

    def update(self, heads: float) -> float:
        """Record n_t after an optimiser step and return the penalty A for the next step."""
        self.history.append(float(heads))
        n = self.history
        if self.mode == "none" or len(n) <= 2:
            return self.penalty
        if self.mode == "p":
            delta = self.p_factor * (n[-1] - n[-2])
        elif self.mode == "pid":
            cp, ci, cd = self.pid
            delta = cp * (n[-1] - n[-2]) + ci * (n[-1] - n[0]) + cd * (n[-1] - 2 * n[-2] + n[-3])
        else:
            raise ValueError(f"unknown adaptive penalty mode {self.mode!r}")
        self.penalty += delta
        if self.clamp:
            self.penalty = max(self.penalty, 0.0)
        return self.penalty

    def state_dict(self) -> dict:
        return {"penalty": self.penalty, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.penalty = float(state["penalty"])
        self.history = [float(x) for x in state["history"]]
