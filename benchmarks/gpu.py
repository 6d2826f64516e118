"""`make bench-gpu`: abft verified and measured on one GPU, in one command (issue 17).

Each section runs in its own subprocess under its own time cap, so one slow or crashing section cannot eat
the budget; a section at its cap stops starting new measurements and keeps what it measured.

    tests      pytest -m cuda (tests/parity/test_cuda.py): capture vs eager in bf16/fp16/fp32, LoRA, restricted
               gradient, a bf16 step, --quantized on a tiny model
    steps-8b   random bf16 weights in the Llama-3-8B shape (benchmarks/configs/llama3-8b.json): our ABFT step,
               our E2E step and the reference (eager attention, output_attentions=True, full logits) at k = 4
               (100 tokens) and k = 16 (1000 tokens), several micro-batch sizes: examples/s, peak
               torch.cuda.max_memory_allocated, fraction of the bf16 matmul peak measured in the same process
    steps-1b   the same in the Llama-3.2-1B shape
    scoring    score_prompts on the 8B shape: prompts/s and fraction of the matmul peak
    protocol   the whole `abft run` with paper defaults (512 training prompts x 2 epochs = 1024 examples,
               2 x 1024 test prompts, heads, report) on the 8B shape with the SmolLM2 tokenizer (the random
               model's vocabulary sized to it) and StaICC's SST-2, accuracy ignored; but --checkpoint-every 32
               (one ~4 GB write instead of 32, each write timed, so the default's cost is known)
    quantized  --quantized (4-bit NF4 base + LoRA r 16) on the 8B shape, when bitsandbytes imports
Step and scoring prompts are synthetic (random tokens, label tokens at the demonstration ends): with random
weights only the shapes matter. Writes benchmarks/gpu/<date>-<device>.json (a copy into $OUT when set) and
prints a table with the issue's targets.

A GPU session (one H200; 15 minutes of device time, the machine's start included):
    here:    make bench-gpu-carry
             # .gpu/ (git-ignored, ~50 MB): the SmolLM2 tokenizer, StaICC's SST-2 file, the bitsandbytes wheel
    device:  run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py", carry=[".gpu"], timeout_s=600)
             # (`make bench-gpu` there does the same where make exists; the device has no venv and no network)
    here:    cp <files_at>/*.json benchmarks/gpu/, then the table into benchmarks/RESULTS.md
On an H200 the caps add up to 520 s (8.7 minutes; CAPS below) and the machine's start takes 1-2 minutes, so
the first call leaves ~4 minutes: rerun only a failed section (`--sections NAME`), at once, then give the
machine back. The table is printed last, inside the tool's 12,000-character output tail.

    python benchmarks/gpu.py --tiny     # the same code on CPU in a tiny shape (tests/e2e/test_gpu_script.py)
    python benchmarks/gpu.py --sections steps-8b scoring
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CARRY = REPO / ".gpu"  # what `make bench-gpu-carry` prepares here and the device run carries
SITE = Path(tempfile.gettempdir()) / "abft-gpu-site"  # carried wheels are installed here on the device
CAPS = {"tests": 75, "steps-8b": 140, "steps-1b": 50, "scoring": 35, "protocol": 140, "quantized": 80}  # seconds
RESERVE_S = 10  # a section stops starting measurements this long before its cap
GIB = 2**30
BITSANDBYTES = "bitsandbytes==0.50.2"  # carried as a wheel (pure Python + CUDA libraries, 43 MB)


@dataclass(frozen=True)
class Plan:
    """Shapes and sizes: the GPU plan, or the tiny CPU one that exercises the same code."""

    big: str  # benchmarks/configs/<name>.json
    small: str
    tokens: dict  # k -> prompt length
    examples: dict  # k -> examples per optimiser step
    micros: dict  # k -> micro-batch sizes
    steps: int  # optimiser steps per measurement; the first is a warm-up
    score_prompts: int
    score_batches: tuple
    train_samples: int  # the protocol's (x 2 epochs)
    test_samples: int
    checkpoint_every: int  # the protocol's; a checkpoint of the 8B shape's W_Q/W_K + Adam is ~4 GB
    lora_r: int = 16
    cap_factor: float = 1.0  # of CAPS: a tiny run on a slow shared CPU gets more


FULL = Plan(
    big="llama3-8b",
    small="llama3.2-1b",
    tokens={4: 100, 16: 1000},
    examples={4: 32, 16: 16},
    micros={4: (1, 8, 32), 16: (1, 4, 16)},
    steps=3,
    score_prompts=512,
    score_batches=(16, 64),
    train_samples=512,
    test_samples=1024,
    checkpoint_every=32,
)
TINY = Plan(
    big="tiny",
    small="tiny",
    tokens={4: 40, 16: 120},
    examples={4: 2, 16: 1},
    micros={4: (1, 2), 16: (1,)},
    steps=2,
    score_prompts=8,
    score_batches=(4,),
    train_samples=4,
    test_samples=4,
    checkpoint_every=1,
    lora_r=4,
    cap_factor=4.0,
)


# ---------------------------------------------------------------------------------------------------- helpers
def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(name: str, vocab: int | None = None):
    """Random weights in the shape of benchmarks/configs/<name>.json, bf16 on the GPU (fp32 on CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads((HERE / "configs" / f"{name}.json").read_text())
    if vocab is not None:  # sized to a real tokenizer
        fields["vocab_size"] = vocab
    config = AutoConfig.for_model(**fields)
    device, dtype = ("cuda", torch.bfloat16) if cuda() else ("cpu", torch.float32)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def synthetic_prompts(n: int, tokens: int, k: int, vocab: int, seed: int = 0):
    """`n` prompts of `tokens` random tokens; k demonstrations each ending with one of two label tokens."""
    import torch

    from abft.data.prompts import Prompt

    labels = (vocab // 3, 2 * vocab // 3)
    demo = (tokens - 8) // k  # the query: the last 8 tokens or more
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (tokens,), generator=generator)
        demo_labels = torch.randint(0, 2, (k,), generator=generator).tolist()
        positions = [(i + 1) * demo - 1 for i in range(k)]
        for position, label in zip(positions, demo_labels, strict=True):
            ids[position] = labels[label]
        gold = int(torch.randint(0, 2, (1,), generator=generator))
        out.append(Prompt(ids.tolist(), positions, demo_labels, gold, ""))
    return out, labels


def matmul_peak() -> float:
    """Measured TFLOP/s of a large bf16 matmul (fp32 on CPU): median of 5 timings of 10 products."""
    import torch

    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda() else (512, torch.float32, "cpu")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    times = []
    for _ in range(6):
        sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        times.append((time.perf_counter() - start) / 10)
    return 2 * n**3 / statistics.median(times[1:]) / 1e12


class Memory:
    """Peak device memory of one measurement: total, and above what was allocated before it (None on CPU)."""

    def start(self) -> None:
        import torch

        gc.collect()
        if cuda():
            sync()
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        import torch

        if not cuda():
            return {"peak_gib": None, "extra_gib": None}
        peak = torch.cuda.max_memory_allocated()
        return {"peak_gib": peak / GIB, "extra_gib": (peak - self.base) / GIB}


def step_times(stamps: list[float]) -> dict:
    """Seconds per optimiser step from the synchronised end times of steps 1..n (step 1 is the warm-up)."""
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"step_s": statistics.median(times), "step_s_all": times}


class Section:
    """One section's results, rewritten to its file after every measurement (a killed section keeps them)."""

    def __init__(self, path: Path, cap: float):
        self.path, self.deadline = path, time.monotonic() + cap - RESERVE_S
        self.data: dict = {"rows": []}

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def add(self, **row) -> None:
        self.data["rows"].append(row)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


# ---------------------------------------------------------------------------------------------------- steps
def ours_step(model, prompts, labels, plan: Plan, method: str, micro: int, lora_r: int = 0) -> dict:
    """abft.train.train on `prompts` (plan.steps optimiser steps), timed per step after the first."""
    from abft.config import TrainConfig
    from abft.train import train

    stamps = []

    def on_step(_record) -> None:
        sync()
        stamps.append(time.perf_counter())

    per_step = len(prompts) // plan.steps
    lr = 1e-4 if lora_r else 1e-5
    cfg = TrainConfig(method=method, pseudo_batch_size=per_step, micro_batch_size=micro, epochs=1, lr=lr, lora_r=lora_r)
    train(model, prompts, cfg, pad_id=0, label_token_ids=labels, on_step=on_step)
    return {**step_times(stamps), "examples_per_step": per_step}


def reference_step(model, prompts, labels, plan: Plan, micro: int) -> dict:
    """The obvious ABFT step: eager attention, output_attentions=True, logits at every position, Adam."""
    import torch

    from abft.batching import collate
    from abft.models.arch import find_qk_slices
    from abft.models.trainable import mark_trainable
    from abft.objectives import ABFTObjective

    device = next(model.parameters()).device
    params = mark_trainable(model, find_qk_slices(model))
    model.set_attn_implementation("eager")
    optimizer = torch.optim.Adam(params, lr=1e-5)
    objective = ABFTObjective()
    per_step = len(prompts) // plan.steps
    stamps = []
    try:
        for step in range(plan.steps):
            chunk = prompts[step * per_step : (step + 1) * per_step]
            for m in range(0, per_step, micro):
                batch = collate(chunk[m : m + micro], 0).to(device)
                out = model(**batch.model_inputs(), output_attentions=True)
                probs = torch.stack([a[:, :, -1, :] for a in out.attentions], dim=1).float()  # (B, L, H, T)
                loss, _ = objective(
                    probs, batch.label_positions, batch.demo_labels, batch.gold, batch.lengths, 0.5, 1.0
                )
                (loss.sum() / per_step).backward()
                del out, probs, loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            stamps.append(time.perf_counter())
    finally:
        model.requires_grad_(False)
        for p in params:
            p.grad = None
    return {**step_times(stamps), "examples_per_step": per_step}


def flops_per_example(model, prompt, method: str) -> float:
    """FLOPs of one example's forward and backward as train() runs them (counted by torch's FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from abft.attention import capture_last_row, use_last_row_attention
    from abft.batching import collate
    from abft.models.arch import find_qk_slices
    from abft.models.trainable import mark_trainable
    from abft.objectives import ABFTObjective, e2e_loss

    device = next(model.parameters()).device
    params = mark_trainable(model, find_qk_slices(model))
    use_last_row_attention(model)
    batch = collate([prompt], 0).to(device)
    try:
        with FlopCounterMode(display=False) as counter:
            with capture_last_row(model) as cap:
                logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]
            if method == "e2e":
                loss = e2e_loss(logits, batch.gold, torch.tensor([0, 1], device=device))
            else:
                loss, _ = ABFTObjective()(
                    cap.probs, batch.label_positions, batch.demo_labels, batch.gold, batch.lengths, 0.5, 1.0
                )
            loss.sum().backward()
    finally:
        model.requires_grad_(False)
        for p in params:
            p.grad = None
    return float(counter.get_total_flops())


def measure_steps(section: Section, shape: str, plan: Plan, peak: float, lora_r: int = 0, model=None) -> None:
    """ABFT, E2E and the reference at each k and micro-batch size, most important first."""
    import torch

    model = model if model is not None else build_model(shape)
    vocab = model.get_input_embeddings().weight.shape[0]
    memory = Memory()
    impls = [("ours", "abft"), ("reference", "abft"), ("ours", "e2e")]
    if lora_r:  # the quantized base: the reference cannot train a 4-bit W_Q/W_K
        impls = [("ours", "abft"), ("ours", "e2e")]
    for k, tokens in plan.tokens.items():
        n = plan.examples[k] * plan.steps
        prompts, labels = synthetic_prompts(n, tokens, k, vocab)
        flops = {} if lora_r else {m: flops_per_example(model, prompts[0], m) for m in ("abft", "e2e")}
        for impl, method in impls:
            for micro in sorted(plan.micros[k], reverse=True):
                row = dict(shape=shape, impl=impl, method=method, k=k, tokens=tokens, micro=micro, lora_r=lora_r)
                if not section.time_left():
                    section.add(**row, status="skipped: time cap")
                    continue
                memory.start()
                try:
                    if impl == "ours":
                        got = ours_step(model, prompts, labels, plan, method, micro, lora_r)
                    else:
                        got = reference_step(model, prompts, labels, plan, micro)
                except torch.OutOfMemoryError:
                    for p in model.parameters():  # an interrupted step leaves its gradients behind
                        p.grad = None
                    section.add(**row, status="out of memory")
                    continue
                speed = got["examples_per_step"] / got["step_s"]
                fraction = None
                if impl == "ours" and method in flops and peak:
                    fraction = flops[method] * speed / 1e12 / peak
                section.add(**row, **got, **memory.result(), examples_per_s=speed, peak_fraction=fraction, status="ok")


def steps_section(section: Section, plan: Plan, shape: str) -> None:
    peak = matmul_peak()
    section.data["matmul_tflops"] = peak
    measure_steps(section, shape, plan, peak)


def scoring_section(section: Section, plan: Plan) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from abft.evaluation.scoring import score_prompts

    peak = matmul_peak()
    section.data["matmul_tflops"] = peak
    model = build_model(plan.big)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts, labels = synthetic_prompts(plan.score_prompts, plan.tokens[4], 4, vocab)
    with FlopCounterMode(display=False) as counter:
        score_prompts(model, prompts[:1], labels, 0, 1)
    flops = counter.get_total_flops()
    for batch in plan.score_batches:
        if not section.time_left():
            section.add(batch=batch, status="skipped: time cap")
            continue
        score_prompts(model, prompts[:batch], labels, 0, batch)  # warm-up
        sync()
        start = time.perf_counter()
        score_prompts(model, prompts, labels, 0, batch)
        seconds = time.perf_counter() - start
        rate = len(prompts) / seconds
        fraction = flops * rate / 1e12 / peak
        row = dict(shape=plan.big, k=4, tokens=plan.tokens[4], batch=batch, seconds=seconds)
        section.add(**row, prompts_per_s=rate, peak_fraction=fraction, status="ok")


# ---------------------------------------------------------------------------------------------------- protocol
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def protocol_section(section: Section, plan: Plan, tokenizer_dir: str) -> None:
    """`abft run --dataset sst2` (paper defaults but --checkpoint-every) with load_model answering the random
    model. Each checkpoint write is timed: the default (every step) costs ~31 more of them on the 8B shape."""
    from abft import runner
    from abft.analysis import setup
    from abft.config import RunConfig
    from abft.train import state as train_state

    tokenizer = load_tokenizer(tokenizer_dir)
    start = time.perf_counter()
    model = build_model(plan.big, vocab=len(tokenizer))
    sync()
    section.data["build_s"] = time.perf_counter() - start
    setup.load_model = lambda *args, **kwargs: (model, tokenizer)  # the seam the unit tests patch too
    writes = []
    save = train_state.save_checkpoint

    def timed_save(*args) -> None:
        start = time.perf_counter()
        save(*args)
        writes.append(time.perf_counter() - start)

    train_state.save_checkpoint = timed_save
    cfg = RunConfig(checkpoint_every=plan.checkpoint_every)
    cfg.data.train_samples, cfg.data.test_samples = plan.train_samples, plan.test_samples
    with tempfile.TemporaryDirectory() as tmp:
        cfg.output = f"{tmp}/run"
        memory = Memory()
        memory.start()
        start = time.perf_counter()
        runner.run(cfg, log=lambda *a: None)
        seconds = time.perf_counter() - start
        timings = json.loads(Path(cfg.output, "timings.json").read_text())
        log = Path(cfg.output, "train_log.jsonl").read_text().splitlines()
    section.add(
        shape=plan.big,
        vocab=len(tokenizer),
        train_examples=plan.train_samples * cfg.train.epochs,
        test_prompts=2 * plan.test_samples,
        checkpoint_every=plan.checkpoint_every,
        seconds_after_loading=seconds,
        step_seconds_sum=sum(json.loads(line)["seconds"] for line in log),
        checkpoint_write_s=writes,
        timings=timings,
        **memory.result(),
        status="ok",
    )


def quantized_section(section: Section, plan: Plan, tokenizer_dir: str) -> None:
    """load_model(..., quantized=True) of a saved random 8B model, then LoRA steps as in measure_steps."""
    import importlib.util

    import torch

    from abft.models import load_model

    if importlib.util.find_spec("bitsandbytes") is None or not cuda():
        section.data["skipped"] = "bitsandbytes is not importable" if cuda() else "no CUDA GPU"
        section.save()
        return
    tokenizer = load_tokenizer(tokenizer_dir)
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and shutil.disk_usage(shm).free > 40 * GIB else None
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        start = time.perf_counter()
        model = build_model(plan.big, vocab=len(tokenizer))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        section.data["save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model, _ = load_model(tmp, device="cuda", dtype="bf16", quantized=True)
        section.data["load_s"] = time.perf_counter() - start
        section.data["weights_gib"] = torch.cuda.memory_allocated() / GIB
    section.save()
    measure_steps(section, plan.big, plan, 0.0, lora_r=plan.lora_r, model=model)


# ---------------------------------------------------------------------------------------------------- tests
def tests_section(section: Section, cap: float) -> None:
    """pytest -m cuda; counts from its JUnit XML."""
    xml = section.path.with_suffix(".xml")
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    out = subprocess.run(
        [*command, "tests/parity/test_cuda.py"], cwd=REPO, capture_output=True, text=True, timeout=cap - RESERVE_S
    )
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    section.data.update(returncode=out.returncode, **counts, failed=failed, tail=out.stdout[-3000:])
    section.save()


# ---------------------------------------------------------------------------------------------------- driver
def run_section(name: str, args) -> None:
    """In the section's subprocess."""
    plan = TINY if args.tiny else FULL
    if args.tiny:  # tiny models run fastest on one thread (tests/conftest.py)
        import torch

        torch.set_num_threads(1)
    section = Section(Path(args.result), CAPS[name] * plan.cap_factor)
    section.save()
    if name == "tests":
        tests_section(section, CAPS[name] * plan.cap_factor)
    elif name in ("steps-8b", "steps-1b"):
        steps_section(section, plan, plan.big if name == "steps-8b" else plan.small)
    elif name == "scoring":
        scoring_section(section, plan)
    elif name == "protocol":
        protocol_section(section, plan, args.tokenizer)
    else:
        quantized_section(section, plan, args.tokenizer)


def child_env(tiny: bool) -> dict:
    """PYTHONPATH for the sections: the repo's src; on the GPU machine also what .gpu/ carries (a trimmed StaICC,
    wheels installed from .gpu/wheels)."""
    paths = [str(REPO / "src")]
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    if not tiny:
        paths.append(str(CARRY / "site"))
    if wheels and not tiny:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*command, "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        paths.append(str(SITE))
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])), "ABFT_NO_PROGRESS": "1"}


def prepare_carry() -> None:
    """Here, before a GPU session (network needed): .gpu/ with what the device machine lacks, ~50 MB of the 64 MiB
    that travel: the SmolLM2 tokenizer, StaICC's SST-2 file (abft reads StaICC's data files without importing it)
    and the bitsandbytes wheel."""
    from transformers import AutoTokenizer

    from abft.data.staicc import dataset_info, staicc_data_dir
    from abft.models.loading import resolve

    AutoTokenizer.from_pretrained(resolve("smollm2-135m")[0]).save_pretrained(CARRY / "tokenizer")
    source = staicc_data_dir()
    target = CARRY / "site" / "StaICC" / source.name
    target.mkdir(parents=True, exist_ok=True)
    for path in (source.parent / "__init__.py", source / "__init__.py"):
        shutil.copy(path, target.parent if path.parent == source.parent else target)
    shutil.copy(source / f"{dataset_info('sst2').name}.dataset", target)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 28)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *platforms]
    command += ["--python-version=3.12", "--implementation=cp", "-d", str(CARRY / "wheels"), BITSANDBYTES]
    subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB; carry it: run(..., carry=['.gpu'])")


def run_all(args) -> dict:
    env = child_env(args.tiny)
    plan = TINY if args.tiny else FULL
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "tiny": args.tiny, "caps_s": CAPS, "sections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections:
            path = Path(tmp, f"{name}.json")
            command = [
                sys.executable,
                __file__,
                "--section",
                name,
                "--result",
                str(path),
                "--tokenizer",
                args.tokenizer,
            ]
            start = time.perf_counter()
            try:
                out = subprocess.run(
                    command + ["--tiny"] * args.tiny,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=CAPS[name] * plan.cap_factor,
                )
                status = "ok" if out.returncode == 0 else f"failed (exit {out.returncode})"
                tail = out.stderr[-2000:]
            except subprocess.TimeoutExpired as exc:
                status, tail = "killed at its time cap", (exc.stderr or b"")[-2000:].decode(errors="replace")
            data = json.loads(path.read_text()) if path.exists() else {}
            data.update(status=status, seconds=time.perf_counter() - start)
            if status != "ok":
                data["stderr_tail"] = tail
            results["sections"][name] = data
            print(f"{name}: {status} in {data['seconds']:.0f} s", flush=True)
    results.update(environment(), targets=targets(results["sections"]))
    return results


def environment() -> dict:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__}


def _rows(sections: dict, name: str, **match) -> list[dict]:
    rows = sections.get(name, {}).get("rows", [])
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _best(rows: list[dict], key: str) -> dict | None:
    return max(rows, key=lambda r: r[key]) if rows else None


def targets(sections: dict) -> list[dict]:
    """The issue's targets on the 8B shape, from what was measured (None where a part is missing)."""
    steps = "steps-8b"
    ours4 = _best(_rows(sections, steps, impl="ours", method="abft", k=4), "examples_per_s")
    ours16 = _best(_rows(sections, steps, impl="ours", method="abft", k=16), "examples_per_s")
    ref16 = _best(_rows(sections, steps, impl="reference", k=16), "examples_per_s")
    one = {r["impl"]: r for r in _rows(sections, steps, method="abft", k=16, micro=1)}  # the per-example peak
    scoring = _best(_rows(sections, "scoring"), "prompts_per_s")
    protocol = _rows(sections, "protocol")

    def ratio(a, b):
        return a / b if a is not None and b else None

    memory = ratio(one.get("ours", {}).get("extra_gib"), one.get("reference", {}).get("extra_gib"))
    speed16 = ratio(ours16 and ours16["examples_per_s"], ref16 and ref16["examples_per_s"])
    return [
        _target(
            "ABFT step, k=4, best micro-batch: fraction of bf16 matmul peak", ours4 and ours4["peak_fraction"], 0.40
        ),
        _target("k=16: ours / reference examples/s (best micro-batch each)", speed16, 3.0),
        _target("k=16: ours / reference memory above weights, 1 example per forward", memory, 0.25, lower=True),
        _target(
            "whole protocol after loading, seconds",
            protocol[0]["seconds_after_loading"] if protocol else None,
            60.0,
            lower=True,
        ),
        _target("scoring, best batch: fraction of bf16 matmul peak", scoring and scoring["peak_fraction"], 0.50),
    ]


def _target(what: str, value, goal: float, lower: bool = False) -> dict:
    met = None if value is None else (value <= goal if lower else value >= goal)
    return {"target": what, "value": value, "goal": f"{'<=' if lower else '>='} {goal}", "met": met}


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict) -> None:
    sections = results["sections"]
    print(f"\n{results['device']}, torch {results['torch']}, transformers {results['transformers']}")
    for name in ("steps-8b", "steps-1b"):
        if name in sections:
            print(f"matmul peak ({name}): {_fmt(sections[name].get('matmul_tflops'))} TFLOP/s")
    columns = ("section", 10), ("impl", 10), ("method", 7), ("k", -3), ("micro", -6), ("ex/s", -9), ("peak GiB", -9)
    print("\n" + "".join(f"{n:<{w}}" if w > 0 else f"{n:>{-w}}" for n, w in (*columns, ("extra", -8), ("of peak", -8))))
    for name in ("steps-8b", "steps-1b", "quantized"):
        for r in sections.get(name, {}).get("rows", []):
            head = f"{name:<10}{r['impl']:<10}{r['method']:<7}{r['k']:>3}{r['micro']:>6}"
            if r["status"] != "ok":
                print(f"{head}  {r['status']}")
                continue
            print(
                f"{head}{_fmt(r['examples_per_s'], '.2f'):>9}{_fmt(r['peak_gib'], '.1f'):>9}"
                f"{_fmt(r['extra_gib'], '.1f'):>8}{_fmt(r['peak_fraction'], '.2f'):>8}"
            )
    for r in _rows(sections, "scoring"):
        print(f"scoring batch {r['batch']}: {r['prompts_per_s']:.1f} prompts/s, {r['peak_fraction']:.2f} of peak")
    for r in _rows(sections, "protocol"):
        print(f"protocol: {r['seconds_after_loading']:.1f} s after loading (train steps {r['step_seconds_sum']:.1f} s)")
    if "tests" in sections:
        tests = sections["tests"]
        counts = ", ".join(f"{tests.get(key)} {key}" for key in ("tests", "failures", "errors", "skipped"))
        print(f"cuda tests: {counts}; failed: {tests.get('failed')}")
    print("\ntargets (8B shape):")
    for t in results["targets"]:
        met = {None: "not measured", True: "met", False: "NOT met"}[t["met"]]
        print(f"  {t['target']} {t['goal']}: {_fmt(t['value'])} ({met})")


def output_path(args, device: str) -> Path:
    if args.output:
        return Path(args.output)
    if args.tiny:
        return Path(tempfile.gettempdir()) / "abft-gpu-tiny.json"
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    return HERE / "gpu" / f"{time.strftime('%Y%m%d-%H%M')}-{slug}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: the same code in seconds")
    parser.add_argument("--sections", nargs="+", choices=list(CAPS), default=list(CAPS))
    parser.add_argument("--tokenizer", default=str(CARRY / "tokenizer"), help="tokenizer directory (protocol)")
    parser.add_argument("--output", help="results JSON (default: benchmarks/gpu/<date>-<device>.json)")
    parser.add_argument("--carry", action="store_true", help="here, before a GPU session: prepare .gpu/")
    parser.add_argument("--section", choices=list(CAPS), help=argparse.SUPPRESS)  # in a section's subprocess
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        run_section(args.section, args)
        return
    if args.carry:
        prepare_carry()
        return
    results = run_all(args)
    path = output_path(args, results["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if os.environ.get("OUT"):  # the device tool brings back what is under $OUT
        shutil.copy(path, Path(os.environ["OUT"], path.name))
    print_table(results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
