"""Bounds on sizes, in one place. Lower bounds: a size no run can use (0 epochs). Upper bounds: a typo like
`--test-samples 1000000000` is refused at once, not hours into drawing prompts (the samplers build every
prompt list up front) or a grid no machine finishes.

    check_at_least([("epochs", n, 1)])              # UserError "epochs must be at least 1, got 0"
    check_at_most([("test_samples", n, MAX_PROMPTS)])
"""

from __future__ import annotations

from .errors import UserError, named, param

MAX_PROMPTS = 1 << 20  # 1024x StaICC's 1024 test prompts
MAX_EXAMPLES = 1 << 24  # training prompts x epochs: 16M forward/backward passes
MAX_GRID = 101  # interpolate: grid^2 evaluations of the test prompts
SEEDS = 2**63  # torch.manual_seed takes |seed| below this (larger ones overflow its int64)


def check_at_least(checks) -> None:
    """(parameter, value, lowest allowed) triples -> UserError for the first value below its bound."""
    for name, value, low in checks:
        if value < low:
            raise UserError(f"{named(name)} must be at least {low}, got {value}")


def check_at_most(checks) -> None:
    """(parameter, value, highest allowed) triples -> UserError for the first value above its bound."""
    for name, value, high in checks:
        if value > high:
            raise UserError(f"{named(name)} {value} is more than abft allows ({high} at most); lower it")


def check_seed(seed: int) -> None:
    if not -SEEDS < seed < SEEDS:
        raise UserError(f"{param('seed')} must be between -2^63 and 2^63 (exclusive), got {seed}")


def check_run(cfg, train: bool) -> None:
    """The upper bounds of `abft run` / `abft evaluate` (RunConfig.validate checks the lower ones)."""
    check_seed(cfg.seed)
    checks = [("test_samples", cfg.data.test_samples, MAX_PROMPTS)]
    checks.append(("eval_batch_size", cfg.eval.eval_batch_size, MAX_PROMPTS))
    if cfg.eval.mauve_test or cfg.eval.mauve_prefix:
        checks.append(("mauve_samples", cfg.eval.mauve_samples, MAX_PROMPTS))
    if train:
        checks.append(("train_samples", cfg.data.train_samples, MAX_PROMPTS))
        product = f"{param('epochs')} x {param('train_samples')}"
        checks.append((product, cfg.train.epochs * cfg.data.train_samples, MAX_EXAMPLES))
    check_at_most(checks)
