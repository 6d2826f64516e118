"""What the report needs from the model itself, taken while `abft run` has the model at hand.

    snap = RunSnapshot(model, prompt, pad_id, tokenizer)   # before training: base W_Q/W_K, attention on `prompt`
    ...train...
    snap.write(model, run_dir)                            # example_attention.json and qk_shift.json

Cost: one forward of one prompt before and one after training; the base W_Q/W_K are the run's BaseWeights.
`abft report --with-model` recomputes both files from the base model and delta.safetensors instead
(recompute_snapshot).

example_attention.json: the last token's attention over the prompt's tokens (mean over heads per layer, and
the mean over the heads that pass ABFT's induction-head filter on this prompt before or after training),
before and after.
qk_shift.json: per layer ||W_Q - W_Q0||_F and ||W_K - W_K0||_F (weights only, not biases), absolute and
relative to ||W0||_F.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..batching import collate
from ..models.arch import QKSlice
from ..models.weights import BaseWeights, trained_tensors
from ..objectives import ABFTObjective
from ..rundir import EXAMPLE_FILE, SHIFT_FILE, RunDir, read_run_config
from .heads import label_forward
from .setup import load_setup


def _round(tensor: torch.Tensor, digits: int = 6) -> list:
    return torch.round(tensor.double(), decimals=digits).tolist()


@torch.no_grad()
def last_row(model, prompt, pad_id: int, objective: ABFTObjective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt's last-token attention (L, H, T), ABFT's induction-head mask (L, H), label mass (L, H)."""
    device = next(model.parameters()).device
    probs, parts = label_forward(model, collate([prompt], pad_id).to(device), objective)
    return probs[0].cpu(), parts["induction_rate"][0].bool().cpu(), parts["label_mass"][0].cpu()


def summarise(rows: torch.Tensor, heads: torch.Tensor, mass: torch.Tensor, mean_over: torch.Tensor) -> dict:
    """example_attention.json's entry of one side; induction_mean averages the heads in `mean_over` (L, H)."""
    induction = rows[mean_over].mean(0) if bool(mean_over.any()) else torch.zeros(rows.shape[-1])
    return {
        "layer_mean": _round(rows.mean(1)),  # (L, T)
        "induction_mean": _round(induction),  # (T,) zeros when no head passes
        "all_mean": _round(rows.mean((0, 1))),  # (T,) mean over every layer and head
        "induction_heads": int(heads.sum()),  # heads passing the filter on this prompt, this side
        "label_mass_per_layer": _round(mass.mean(-1)),  # (L,)
    }


def qk_shift(base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], slices: Sequence[QKSlice]) -> dict:
    """Per-layer Frobenius norms of the change of W_Q and W_K (keys as in models.weights.trained_tensors)."""
    layers = sorted({s.layer for s in slices})
    row = {layer: i for i, layer in enumerate(layers)}
    out = {key: [0.0] * len(layers) for key in ("q", "k", "q_relative", "k_relative")}
    for s in slices:
        key = f"{s.param}@{s.kind}"
        w0 = base[key].double()
        delta = float((trained[key].double() - w0).norm())
        norm = float(w0.norm())
        out[s.kind][row[s.layer]] = round(delta, 8)
        out[f"{s.kind}_relative"][row[s.layer]] = round(delta / norm, 8) if norm > 0 else 0.0
    return {"layers": layers, **out}


def _token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


class RunSnapshot:
    """Base W_Q/W_K values and the example's attention before training; `write` adds the after side.

    `base`: the run's BaseWeights (taken before training), made here when not given.
    """

    def __init__(
        self,
        model,
        prompt,
        pad_id: int,
        tokenizer=None,
        objective: ABFTObjective | None = None,
        base: BaseWeights | None = None,
    ):
        self.objective = objective or ABFTObjective()
        self.pad_id = pad_id
        self.prompt = prompt
        self.tokens = _token_strings(tokenizer, prompt.input_ids)
        self.base = base or BaseWeights(model)
        self.before = last_row(model, prompt, pad_id, self.objective)

    def write(self, model, run_dir: str | Path) -> None:
        out = RunDir(Path(run_dir))
        p = self.prompt
        after = last_row(model, p, self.pad_id, self.objective)
        union = self.before[1] | after[1]  # one head set for both sides: the mean then compares like with like
        out.write_json(
            EXAMPLE_FILE,
            {
                "prompt": {
                    "tokens": self.tokens,
                    "label_positions": list(p.label_positions),
                    "demo_labels": list(p.demo_labels),
                    "gold": int(p.gold),
                    "text": p.text,
                },
                "mean_over_heads": int(union.sum()),
                "before": summarise(*self.before, union),
                "after": summarise(*after, union),
            },
        )
        slices = self.base.slices
        out.write_json(SHIFT_FILE, qk_shift(self.base.tensors(model), trained_tensors(model, slices), slices))


def recompute_snapshot(run: Path, log=print) -> None:
    """example_attention.json and qk_shift.json from the base model and the run's trained weights."""
    from ..data import test_pairs
    from ..models.weights import check_trained, load_delta

    check_trained(run)  # before the config: "no trained weights" is the more useful refusal
    cfg = read_run_config(run)
    log(f"loading {cfg.model.model} and the first test prompt of {cfg.data.dataset}")
    model, tokenizer, builder, dataset = load_setup(cfg)
    prompt = builder.build_pairs(dataset, test_pairs(dataset, cfg.data.k, 1))[0]
    objective = ABFTObjective.from_config(cfg.train, len(builder.prefix_ids))
    snapshot = RunSnapshot(model, prompt, tokenizer.pad_token_id, tokenizer, objective)
    load_delta(model, run)
    snapshot.write(model, run)
