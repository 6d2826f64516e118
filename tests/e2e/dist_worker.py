"""One process of the multi-process tests (tests/e2e/test_distributed.py), started by torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_worker.py MODEL_DIR OUT [ABFT FLAGS...]

1. `abft run` through the real CLI on MODEL_DIR with the given flags, output OUT/run (with --fsdp: only this);
2. train() on synthetic prompts: E2E through LoRA, the PID controller active (TRAIN_CFG below); the main
   process saves the effective W_Q/W_K and the step records to OUT/train.pt;
3. MAUVE's sampled continuations and text features on a tiny model (generate_sharded), also in OUT/train.pt.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "support"))  # started as a script: no conftest

import torch  # noqa: E402
from fake_prompts import LABEL_TOKENS, fake_prompts  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

from abft import distributed  # noqa: E402
from abft.cli import main  # noqa: E402
from abft.config import TrainConfig  # noqa: E402
from abft.models.arch import find_qk_slices  # noqa: E402
from abft.models.weights import trained_tensors  # noqa: E402
from abft.train import train  # noqa: E402

# E2E through LoRA adapters: every example has a gradient, so a process that skipped the gradient sum
# would step differently. 10 prompts in pseudo-batches of 4 (the last has 2: uneven shares); the head
# filter stays on, so the head count varies by example and the PID's A moves with the global count.
# Micro-batches of 1 prompt: no padding differences between the two sides.
TRAIN_CFG = dict(
    method="e2e",
    lr=1e-3,
    pseudo_batch_size=4,
    micro_batch_size=1,
    epochs=2,
    pid=(1.0, 0.5, 0.5),
    lora_r=4,
    lora_alpha=8.0,
)


def train_synthetic(seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_llama("sdpa")
    records = train(model, fake_prompts(10, k=4), TrainConfig(**TRAIN_CFG), pad_id=0, label_token_ids=LABEL_TOKENS)
    return {"tensors": trained_tensors(model, find_qk_slices(model)), "records": [r.as_dict() for r in records]}


def generate_sharded() -> dict:
    """MAUVE's generation and features of 7 prefixes in batches of 2 (4 batches: uneven shares)."""
    from tiny_tokenizer import word_tokenizer

    from abft.evaluation.generation import generate_continuations, text_features

    tok, model = word_tokenizer(), tiny_llama("sdpa", max_position_embeddings=512)
    prefixes = [f"sentence : w{i} w{i + 1}" for i in range(7)]
    texts, counts = generate_continuations(
        model, tok, prefixes, 6, "sample", seed=3, batch_size=2, limits=[6, 2] * 3 + [1]
    )
    return {
        "texts": texts,
        "counts": counts,
        "features": torch.from_numpy(text_features(model, tok, prefixes, batch_size=2)),
    }


def fused_v_change() -> str:
    """A sharded GPT-2 (fused Q|K|V c_attn) after ABFT: 'V <max change of the V columns> QK <of Q|K>'."""
    from tiny_models import tiny_gpt2

    model = tiny_gpt2("sdpa")
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    distributed.shard_model(model)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, epochs=1, head_filter=False)
    train(model, fake_prompts(4, k=2), cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    change = (distributed.full(model.transformer.h[0].attn.c_attn.weight.detach()) - before).abs()
    width = before.shape[1] // 3
    return f"V {float(change[:, 2 * width :].max())} QK {float(change[:, : 2 * width].max()):.3g}"


def sharded_resume_difference(checkpoint: Path) -> float:
    """Sharded training stopped after 2 of 6 steps and resumed from its checkpoint on a fresh sharded model,
    vs uninterrupted: the largest difference of the trained W_Q/W_K."""
    prompts = fake_prompts(12, k=3)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=2, head_filter=False)

    def sharded_model():
        model = tiny_llama("sdpa")
        distributed.shard_model(model)
        return model

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.step == 2:
            raise Stop

    full = sharded_model()
    train(full, prompts, cfg, 0, LABEL_TOKENS)
    try:
        train(sharded_model(), prompts, cfg, 0, LABEL_TOKENS, on_step=stop_after_two, checkpoint_dir=checkpoint)
    except Stop:
        pass
    resumed = sharded_model()
    train(resumed, prompts, cfg, 0, LABEL_TOKENS, checkpoint_dir=checkpoint)
    a, b = trained_tensors(full, find_qk_slices(full)), trained_tensors(resumed, find_qk_slices(resumed))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def no_report(path):
    return Path(path) / "report.html"


if __name__ == "__main__":
    import abft.report.html

    abft.report.html.write_report = no_report  # figures cost seconds and are tested elsewhere
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    sharded_models = []  # --fsdp: the run's model, kept to look at its shares afterwards
    shard_model = distributed.shard_model
    loaded_meta = []  # whether the run's model came without weights (all but the main process should)

    def keep(model):
        loaded_meta.append(any(p.is_meta for p in model.parameters()))
        shard_model(model)
        sharded_models.append(model)

    distributed.shard_model = keep
    status = main(["run", "--model", model_dir, *sys.argv[3:], "--output", str(out / "run")])
    if "--fsdp" in sys.argv:  # the sharded launch checks the run only, and that the model was sharded
        (model,) = sharded_models
        q = model.model.layers[0].self_attn.q_proj.weight
        moved, resumed = fused_v_change(), sharded_resume_difference(out / "checkpoint")
        shares = f"{type(q).__name__} {list(q.to_local().shape)} {moved} resume {resumed} meta {loaded_meta[0]}"
        (out / f"shard{distributed.rank()}.txt").write_text(shares)
        sys.exit(status)
    result = {**train_synthetic(), "generation": generate_sharded()}
    try:  # a failure on the main process reaches the other one instead of leaving it waiting
        distributed.on_main(lambda: 1 / 0)
    except (ZeroDivisionError, RuntimeError) as exc:
        result["on_main_error"] = f"{type(exc).__name__}: {exc}"
    if distributed.is_main():
        torch.save(result, out / "train.pt")
    else:
        (out / "other_rank_error.txt").write_text(result["on_main_error"])
    sys.exit(status)
