"""The training loop shared by ABFT and the E2E baseline.

    log = train(model, prompts, TrainConfig(), pad_id=tok.pad_token_id, label_token_ids=ids, on_step=print)

One optimiser step per pseudo-batch (gradient accumulation over micro-batches of similar length), Adam
with a constant learning rate, prompts reshuffled every epoch by `seed`. Only W_Q / W_K are trained
(see models.params), directly or through LoRA adapters (`cfg.lora_r`, models.lora). After each step the
penalty controller sees the mean induction-head count.

Several processes (torchrun / accelerate launch, see abft.distributed): every process follows the same
schedule and takes its share of each pseudo-batch; gradients, losses and head counts are summed over
processes before the step, so the step, the records and the penalty are those of one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed
from .attention import capture_last_row, use_last_row_attention
from .batching import collate
from .checkpoint import check_state, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .control import PenaltyController
from .errors import UserError
from .models.lora import add_lora, has_lora
from .models.params import find_qk_slices, mark_trainable, zero_inactive_heads
from .objectives import ABFTObjective, e2e_loss
from .precision import MasterWeights
from .progress import progress_bar
from .recipe import resolve as resolve_recipe
from .validation import ValidationMonitor


@dataclass
class StepRecord:
    step: int
    epoch: int
    loss: float
    heads: float  # mean induction heads per example
    penalty: float  # A used for this step
    reward: float
    lr: float
    examples: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(d.pop("extra"))
        return d


class TrainingDiverged(UserError):
    pass


def schedule(n: int, epochs: int, pseudo_batch_size: int, seed: int) -> list[tuple[int, list[int]]]:
    """(epoch, prompt indices) of every optimiser step: a fresh permutation per epoch, from `seed` only."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        steps += [(epoch, order[i : i + pseudo_batch_size]) for i in range(0, n, pseudo_batch_size)]
    return steps


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
    """Train `model` in place on `prompts`; returns one record per optimiser step.

    With `checkpoint_dir`, state is saved every `checkpoint_every` steps and a saved state found there is
    resumed from (the records before it are returned too, passed once to `on_resume`, and `on_step` is not
    called for them again). `prefix_tokens`: special tokens the tokenizer puts first (PromptBuilder.prefix_ids),
    left out of n_t with --no-count-bos.
    With several processes only the main one reads and writes checkpoints.
    `monitor` scores validation prompts at step 0 and every `monitor.every` steps; with keep='best' the
    best step's weights are put back at the end. Settings left None (cfg.lr, ...) come from cfg.recipe.
    """
    if not prompts:
        raise UserError("no training prompts: --train-samples must be at least 1")
    cfg.validate()
    if cfg.lora_r and not has_lora(model):
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    resolve_recipe(cfg, model)  # a no-op for settings given (the runner resolves and records them first)
    if cfg.restricted_gradient and has_lora(model):
        raise UserError("--restricted-gradient cannot be combined with LoRA: lora_A is shared by all heads")
    if cfg.restricted_gradient and distributed.sharded():
        raise UserError("--restricted-gradient cannot be combined with --fsdp: a head's rows span the shards")
    device = next(model.parameters()).device
    slices = find_qk_slices(model)
    params = mark_trainable(model, slices, cfg.train_bias)
    names = {id(p): n for n, p in model.named_parameters()}
    named = [(names[id(p)], p) for p in params]
    distributed.broadcast_params(params)  # the same start everywhere (LoRA's A is random)
    use_last_row_attention(model)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    model.train()
    masters = MasterWeights(params)  # fp32 copies of bf16/fp16 tensors for Adam (the tensors themselves in fp32)
    optimizer = torch.optim.Adam(masters.tensors, lr=cfg.lr)
    controller = PenaltyController(
        cfg.adaptive_penalty, cfg.penalty, cfg.reward, cfg.p_factor, tuple(cfg.pid), cfg.clamp_penalty
    )
    objective = ABFTObjective.from_config(cfg, prefix_tokens)
    label_ids = torch.tensor(list(label_token_ids), device=device)
    micro = 1 if cfg.restricted_gradient else cfg.micro_batch_size
    plan = schedule(len(prompts), cfg.epochs, cfg.pseudo_batch_size, seed)
    records: list[StepRecord] = []
    state = load_checkpoint(checkpoint_dir) if checkpoint_dir and distributed.is_main() else None
    state = distributed.broadcast_object(state)
    if state is not None:
        check_state(state, masters.tensors, len(plan), checkpoint_dir, StepRecord.__dataclass_fields__)
        with torch.no_grad():
            for m, value in zip(masters.tensors, state["params"], strict=True):
                distributed.local(m).copy_(distributed.local(distributed.like(value.to(m.dtype), m)))
        masters.weights_out()
        optimizer.load_state_dict(_optimizer_shares(state["optimizer"], masters.tensors))
        optimizer.param_groups[0]["lr"] = cfg.lr  # the run's lr, changed with --resume --lr after a divergence
        controller.load_state_dict(state["controller"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():  # dropout on GPU (LoRA) draws from these
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        records = [StepRecord(**r) for r in state["records"]]
        if monitor is not None and state.get("monitor"):
            monitor.load_state_dict(state["monitor"])
    if on_resume:
        on_resume(list(records))
    if monitor is not None and not monitor.curve and not records:
        monitor.observe(model, 0, params)  # the unchanged model: the baseline, and a candidate to keep
    try:
        with progress_bar(f"training ({cfg.method})", total=len(plan)) as advance:
            advance(len(records))
            for step, (epoch, chunk) in enumerate(plan, start=1):
                if step <= len(records):
                    continue
                start = time.perf_counter()
                penalty = controller.penalty
                chunk = sorted(chunk, key=lambda i: len(prompts[i].input_ids))
                mine = distributed.shard(chunk)  # all of it on one process
                total_loss, total_heads, total_correct = 0.0, 0.0, 0
                for m in range(distributed.batch_count(len(chunk), micro)):
                    part = mine[m * micro : (m + 1) * micro]
                    # A sharded model needs every process in every forward: one short of prompts runs a dummy
                    # micro-batch (the chunk's first prompt) with weight 0.
                    weight = 1.0 if part else 0.0
                    batch = collate([prompts[i] for i in (part or chunk[:1])], pad_id).to(device)
                    with capture_last_row(model) as cap:
                        # logits at the last position only: ABFT needs none, E2E one row
                        logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]
                    abft_loss, heads = objective(
                        cap.probs,
                        batch.label_positions,
                        batch.demo_labels,
                        batch.gold,
                        batch.lengths,
                        penalty,
                        cfg.reward,
                    )
                    if cfg.method == "e2e":
                        loss = e2e_loss(logits, batch.gold, label_ids, cfg.e2e_over)
                        total_correct += int((logits[:, label_ids].argmax(-1) == batch.gold).sum()) * int(weight)
                    else:
                        loss = abft_loss
                    scaled = loss.sum() * weight / len(chunk)  # the global pseudo-batch: summed gradients = the mean
                    if cfg.restricted_gradient:
                        _masked_backward(scaled, named, slices, heads[0])
                    elif scaled.requires_grad:
                        scaled.backward()
                    total_loss += float(loss.detach().sum()) * weight
                    total_heads += float(heads.sum()) * weight
                total_loss, total_heads, total_correct = distributed.sum_floats(total_loss, total_heads, total_correct)
                distributed.sync_gradients(params)
                params.mask_gradients()  # the V part of a fused Q|K|V tensor stays untrained
                if not math.isfinite(total_loss):
                    raise TrainingDiverged(
                        f"loss became {total_loss} at step {step}; the last good checkpoint is kept; lower --lr"
                    )
                grad_norm = distributed.grad_norm(params)
                if not math.isfinite(grad_norm):  # a finite loss can still have NaN/inf gradients
                    raise TrainingDiverged(
                        f"gradients became {grad_norm} at step {step}; the last good checkpoint is kept; lower --lr"
                    )
                masters.grads_in()
                optimizer.step()
                masters.weights_out()
                masters.zero_grad()
                record = StepRecord(
                    step,
                    epoch,
                    total_loss / len(chunk),
                    total_heads / len(chunk),
                    penalty,
                    cfg.reward,
                    cfg.lr,
                    len(chunk),
                    time.perf_counter() - start,
                )
                record.extra["grad_norm"] = grad_norm
                if cfg.method == "e2e":
                    record.extra["train_accuracy"] = total_correct / len(chunk)
                controller.update(record.heads)
                records.append(record)
                if monitor is not None and monitor.due(step, len(plan)):
                    record.extra["val_accuracy"] = monitor.observe(model, step, params)["accuracy"]
                if checkpoint_dir and (step % checkpoint_every == 0 or step == len(plan)):
                    # whole tensors (FSDP shares gathered by every process), so any process count can resume
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
                        save_checkpoint(checkpoint_dir, state)
                if on_step:
                    on_step(record)
                advance(1, loss=record.loss, heads=record.heads, A=controller.penalty)
        if monitor is not None:
            monitor.restore(params)
    finally:
        if cfg.gradient_checkpointing:
            _disable_checkpointing(model)
        model.eval()
        model.requires_grad_(False)
    return records


def _enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (transformers applies it in train mode only)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(model).__name__} does not support --gradient-checkpointing")
    kwargs = {"use_reentrant": False}  # reentrant checkpointing would cut the captured rows' gradients
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _disable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


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


def _masked_backward(loss, named: list[tuple[str, torch.Tensor]], slices, active: torch.Tensor) -> None:
    """Accumulate this example's gradient only into the rows of its induction heads (`active`: (L, Hq))."""
    if not loss.requires_grad:
        return
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    by_name = {name: g for (name, _), g in zip(named, grads, strict=True) if g is not None}
    zero_inactive_heads(by_name, slices, active)
    for name, p in named:
        if name in by_name:
            p.grad = by_name[name] if p.grad is None else p.grad + by_name[name]
