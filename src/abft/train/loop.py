"""The optimiser steps: pseudo-batches of micro-batches through the objective, Adam, one record per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..attention import capture_last_row
from ..batching import collate
from ..config import TrainConfig
from ..control import PenaltyController
from ..errors import UserError, param
from ..objectives import ObjectiveInputs, build_objective
from ..precision import MasterWeights
from ..progress import progress_bar
from ..validation import ValidationMonitor
from . import setup, state
from .records import StepRecord, TrainingDiverged, schedule


def train(
    model,
    prompts: Sequence,
    cfg: TrainConfig,
    pad_id: int,
    label_token_ids: Sequence[int],
    prefix_tokens: int = 0,
    seed: int = 0,
    on_step: Callable[[StepRecord], None] | None = None,
    on_resume: Callable[[list[StepRecord]], None] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 1,
    monitor: ValidationMonitor | None = None,
) -> list[StepRecord]:
    """Train `model` in place on `prompts`; returns one record per optimiser step. Only the trained weights
    change: the model comes back with its attention implementation, requires_grad flags and train/eval mode.

    With `checkpoint_dir`, state is saved every `checkpoint_every` steps and a saved state found there is
    resumed from (the records before it are returned too, passed once to `on_resume`, and `on_step` is not
    called for them again). `prefix_tokens`: special tokens the tokenizer puts first (PromptBuilder.prefix_ids),
    left out of n_t with --no-count-bos.
    With several processes only the main one reads and writes checkpoints.
    `monitor` scores validation prompts at step 0 and every `monitor.every` steps; with keep='best' the
    best step's weights are put back at the end. Settings left None (cfg.lr, ...) come from cfg.recipe.
    """
    if not prompts:
        raise UserError(f"no training prompts: {param('train_samples')} must be at least 1")
    before = setup.ModelState.of(model)  # put back by setup.finish: the caller's model as it came in
    try:
        trainable = setup.prepare(model, cfg)
    except BaseException:
        before.restore(model)
        raise
    masters = MasterWeights(trainable.params)  # fp32 copies of bf16/fp16 tensors for Adam (fp32 ones: themselves)
    loop = _Loop(
        model,
        prompts,
        cfg,
        pad_id,
        trainable,
        masters,
        torch.optim.Adam(masters.tensors, lr=cfg.lr),
        PenaltyController(
            cfg.adaptive_penalty, cfg.penalty, cfg.reward, cfg.p_factor, tuple(cfg.pid), cfg.clamp_penalty
        ),
        build_objective(cfg, prefix_tokens, torch.tensor(list(label_token_ids), device=trainable.device)),
        schedule(len(prompts), cfg.epochs, cfg.pseudo_batch_size, seed),
        monitor,
    )
    records = state.restore_state(
        checkpoint_dir, masters, loop.optimizer, loop.controller, monitor, len(loop.plan), cfg.lr
    )
    if on_resume:
        on_resume(list(records))
    if monitor is not None and not monitor.curve and not records:
        monitor.observe(model, 0, trainable.params)  # the unchanged model: the baseline, and a candidate to keep
    try:
        with progress_bar(f"training ({cfg.method})", total=len(loop.plan)) as advance:
            advance(len(records))
            for step, (epoch, chunk) in enumerate(loop.plan, start=1):
                if step <= len(records):
                    continue
                records.append(loop.step(step, epoch, chunk))
                if checkpoint_dir and (step % checkpoint_every == 0 or step == len(loop.plan)):
                    # whole tensors (FSDP shares gathered by every process), so any process count can resume
                    state.save_state(checkpoint_dir, masters, loop.optimizer, loop.controller, records, monitor)
                if on_step:
                    on_step(records[-1])
                advance(1, loss=records[-1].loss, heads=records[-1].heads, A=loop.controller.penalty)
        if monitor is not None:
            monitor.restore(trainable.params)
    finally:
        setup.finish(model, cfg, before)
    return records


@dataclass
class _Loop:
    model: object
    prompts: Sequence
    cfg: TrainConfig
    pad_id: int
    trainable: setup.Trainable
    masters: MasterWeights
    optimizer: torch.optim.Optimizer
    controller: PenaltyController
    objective: Callable
    plan: list
    monitor: ValidationMonitor | None

    def step(self, step: int, epoch: int, chunk: list[int]) -> StepRecord:
        """One optimiser step on the pseudo-batch `chunk` (prompt indices); its record."""
        start, penalty, n = time.perf_counter(), self.controller.penalty, len(chunk)
        loss, heads, counts = self._accumulate(sorted(chunk, key=lambda i: len(self.prompts[i].input_ids)), penalty)
        grad_norm = self._update(step, loss)
        cfg = self.cfg
        record = StepRecord(
            step, epoch, loss / n, heads / n, penalty, cfg.reward, cfg.lr, n, time.perf_counter() - start
        )
        record.extra["grad_norm"] = grad_norm
        record.extra.update({key: value / n for key, value in counts.items()})
        self.controller.update(record.heads)
        if self.monitor is not None and self.monitor.due(step, len(self.plan)):
            scores = self.monitor.observe(self.model, step, self.trainable.params)
            record.extra["val_accuracy"], record.extra["val_macro_f1"] = scores["accuracy"], scores["macro_f1"]
        return record

    def _accumulate(self, chunk: list[int], penalty: float) -> tuple[float, float, dict[str, float]]:
        """Gradients of the pseudo-batch's mean loss, summed over processes; (loss, heads, counts) sums."""
        cfg, t = self.cfg, self.trainable
        micro = 1 if cfg.restricted_gradient else cfg.micro_batch_size
        mine = distributed.shard(chunk)  # all of it on one process
        total_loss, total_heads, counts = 0.0, 0.0, {}
        for m in range(distributed.batch_count(len(chunk), micro)):
            part = mine[m * micro : (m + 1) * micro]
            # A sharded model needs every process in every forward: one short of prompts runs a dummy
            # micro-batch (the chunk's first prompt) with weight 0.
            weight = 1.0 if part else 0.0
            batch = collate([self.prompts[i] for i in (part or chunk[:1])], self.pad_id).to(t.device)
            with capture_last_row(self.model) as cap:
                # logits at the last position only: ABFT needs none, E2E one row
                logits = self.model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]
            out = self.objective(ObjectiveInputs(cap.probs, logits, batch, penalty, cfg.reward))
            scaled = out.loss.sum() * weight / len(chunk)  # the global pseudo-batch: summed gradients = the mean
            if cfg.restricted_gradient:
                setup.masked_backward(scaled, t.named, t.slices, out.heads[0])
            elif scaled.requires_grad:
                scaled.backward()
            total_loss += float(out.loss.detach().sum()) * weight
            total_heads += float(out.heads.sum()) * weight
            for key, value in out.counts.items():
                counts[key] = counts.get(key, 0.0) + float(value) * weight
        total_loss, total_heads, *sums = distributed.sum_floats(total_loss, total_heads, *counts.values())
        distributed.sync_gradients(t.params)
        t.params.mask_gradients()  # the V part of a fused Q|K|V tensor stays untrained
        return total_loss, total_heads, dict(zip(counts, sums, strict=True))

    def _update(self, step: int, total_loss: float) -> float:
        """The Adam step after checking the loss and gradients are finite; the gradient norm."""
        if not math.isfinite(total_loss):
            raise TrainingDiverged(
                f"loss became {total_loss} at step {step}; the last good checkpoint is kept; lower {param('lr')}"
            )
        grad_norm = distributed.grad_norm(self.trainable.params)
        if not math.isfinite(grad_norm):  # a finite loss can still have NaN/inf gradients
            raise TrainingDiverged(
                f"gradients became {grad_norm} at step {step}; the last good checkpoint is kept; lower {param('lr')}"
            )
        self.masters.grads_in()
        self.optimizer.step()
        self.masters.weights_out()
        self.masters.zero_grad()
        return grad_norm
