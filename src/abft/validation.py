"""Validation during training: score held-out prompts every few steps and keep the best step's weights.

    monitor = ValidationMonitor(score, every=4, keep="best")   # score(model) -> {"accuracy", ...}
    train(model, prompts, cfg, ..., monitor=monitor)            # step 0 (unchanged model) is a candidate too
    monitor.summary()   # {"kept_step", "best_step", "curve": [{"step", "accuracy", ...}, ...], ...}

keep="best" keeps the step of highest validation accuracy, keep="best-f1" the one of highest macro-F1 (on an
imbalanced task accuracy can rise while the model leans onto the majority label; macro-F1 falls there), ties
broken by accuracy, then by the mean probability of the gold label, then by the earlier step. The best weights
live on the CPU (one copy of the trainable tensors) and travel in the checkpoint, so a resumed run keeps the
best step it had seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import distributed
from .config import KEEP


class ValidationMonitor:
    def __init__(
        self,
        score: Callable[[torch.nn.Module], dict],
        every: int,
        keep: str = "best",
        prompts: int = 0,
        log: Callable[[str], None] | None = None,
    ):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
        self.score, self.every, self.keep, self.prompts, self.log = score, every, keep, prompts, log
        self.curve: list[list[float]] = []  # [step, accuracy, true-label likelihood, macro-F1]
        self.best: tuple[float, ...] | None = None  # the best step's key (_key)
        self.best_step = -1
        self.best_params: list[torch.Tensor] = []  # whole tensors on the CPU

    def due(self, step: int, last: int) -> bool:
        return step == 0 or step == last or step % self.every == 0

    def observe(self, model, step: int, params: Sequence[torch.Tensor]) -> dict:
        """Score the model as it is after `step`; remember its weights if it is the best so far."""
        was_training = model.training
        model.eval()
        try:
            metrics = self.score(model)
        finally:
            model.train(was_training)
        row = [step, *(float(metrics[name]) for name in ("accuracy", "true_label_likelihood", "macro_f1"))]
        self.curve.append(row)
        key = self._key(row)
        if self.best is None or key > self.best:  # strictly better: on a tie the earlier step stays
            self.best, self.best_step = key, step
            # every process gathers (FSDP), so this stays collective
            self.best_params = [distributed.full(p.detach()).to("cpu", copy=True) for p in params]
        if self.log:
            metric, name = (3, "macro-F1") if self.keep == "best-f1" else (1, "accuracy")
            best = self._row(self.best_step)[metric]
            self.log(f"validation step {step}: {name} {row[metric]:.4f} (best {best:.4f} at step {self.best_step})")
        return metrics

    def _key(self, row: list[float]) -> tuple[float, ...]:
        """What "best" maximises, from a curve row."""
        _, accuracy, likelihood, f1 = row
        return (f1, accuracy, likelihood) if self.keep == "best-f1" else (accuracy, likelihood)

    def _row(self, step: int) -> list[float]:
        return next(r for r in self.curve if r[0] == step)

    @property
    def kept_step(self) -> int | None:
        return None if self.keep == "last" else self.best_step

    @torch.no_grad()
    def restore(self, params: Sequence[torch.Tensor]) -> None:
        """Put the best step's weights back into `params`; no-op for keep='last'."""
        if self.keep == "last" or not self.best_params:
            return
        for p, value in zip(params, self.best_params, strict=True):
            distributed.local(p).copy_(distributed.local(distributed.like(value.to(p.device, p.dtype), p)))

    def state_dict(self) -> dict:
        return {
            "curve": self.curve,
            "best_step": self.best_step,
            "best_params": self.best_params,
        }

    def load_state_dict(self, state: dict) -> None:
        self.curve = [list(row) for row in state["curve"]]
        self.best_step = int(state["best_step"])
        self.best = self._key(self._row(self.best_step)) if self.curve else None  # resume keeps the run's own keep
        self.best_params = list(state["best_params"])

    def summary(self) -> dict:
        """What metrics.json records: the curve, the best step and the one whose weights were kept."""
        base = self.curve[0] if self.curve and self.curve[0][0] == 0 else None
        last_step = self.curve[-1][0] if self.curve else None
        best = self._row(self.best_step) if self.curve else None
        return {
            "prompts": self.prompts,
            "every": self.every,
            "keep": self.keep,
            "kept_step": last_step if self.keep == "last" else self.best_step,
            "best_step": self.best_step,
            "best_accuracy": best[1] if best else None,
            "best_macro_f1": best[3] if best else None,
            "base_accuracy": base[1] if base else None,
            "curve": [
                {"step": int(s), "accuracy": a, "true_label_likelihood": lik, "macro_f1": f1}
                for s, a, lik, f1 in self.curve
            ],
        }
