"""Upper bounds on sizes: a typo like `--test-samples 1000000000` is refused at once, not hours into drawing
prompts (the samplers build every prompt list up front) or a grid no machine finishes.

    check_at_most([("--test-samples", n, MAX_PROMPTS)])
"""

from __future__ import annotations

from .errors import UserError

MAX_PROMPTS = 1 << 20  # 1024x StaICC's 1024 test prompts
MAX_EXAMPLES = 1 << 24  # training prompts x epochs: 16M forward/backward passes
MAX_GRID = 101  # interpolate: grid^2 evaluations of the test prompts
SEEDS = 2**63  # torch.manual_seed takes |seed| below this (larger ones overflow its int64)


def check_at_most(checks) -> None:
    """(flag, value, highest allowed) triples -> UserError for the first value above its bound."""
    for flag, value, high in checks:
        if value > high:
            raise UserError(f"{flag} {value} is more than abft allows ({high} at most); lower it")


def check_seed(seed: int) -> None:
    if not -SEEDS < seed < SEEDS:
        raise UserError(f"--seed must be between -2^63 and 2^63 (exclusive), got {seed}")


def check_run(cfg, train: bool) -> None:
    """The upper bounds of `abft run` / `abft evaluate` (runner._validate checks the lower ones)."""
    check_seed(cfg.seed)
    checks = [
        ("--test-samples", cfg.data.test_samples, MAX_PROMPTS),
        ("--eval-batch-size", cfg.eval.eval_batch_size, MAX_PROMPTS),
    ]
    if cfg.eval.mauve_test or cfg.eval.mauve_prefix:
        checks.append(("--mauve-samples", cfg.eval.mauve_samples, MAX_PROMPTS))
    if train:
        checks.append(("--train-samples", cfg.data.train_samples, MAX_PROMPTS))
        checks.append(("--epochs x --train-samples", cfg.train.epochs * cfg.data.train_samples, MAX_EXAMPLES))
    check_at_most(checks)
