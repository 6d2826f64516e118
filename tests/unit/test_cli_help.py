"""What `abft run --help` says about defaults: as a user would type them, and switches that read as switches."""

from __future__ import annotations

import re

import pytest

from abft.cli import build_parser
from abft.cli.flags import config_from_args


def _help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())  # one line: argparse wraps at the terminal width


def test_tuple_defaults_read_as_flags_would_be_typed():
    text = _help("run")
    assert "(default: 0.03 0.005 0.005)" in text  # --pid
    assert "(default: 32 128 256 512 1024)" in _help("sweep") and "(default: abft e2e)" in _help("sweep")
    for command in ("run", "evaluate", "sweep", "heads", "ceiling", "interpolate"):
        assert not re.search(r"default: [(\[]", _help(command)), command


def test_negated_switches_say_what_they_turn_off():
    text = _help("run")
    assert "turn off:" not in text
    assert "--no-save save the trained W_Q/W_K tensors (default: on; this flag turns it off)" in text


TRAINING_FLAGS = ("--lr", "--epochs", "--method", "--pseudo-batch-size", "--micro-batch-size", "--checkpoint-every")


def test_heads_lists_only_the_flags_it_uses_and_accepts_them(capsys):
    text = _help("heads")
    for flag in (*TRAINING_FLAGS, "--train-samples", "--test-samples", "--no-save", "--fsdp", "--batch-size "):
        assert flag not in text
    assert "--eval-batch-size EVAL_BATCH_SIZE prompts per forward pass" in text
    assert "--checkpoint-every" not in _help("evaluate")  # nothing trains there either
    parser = build_parser()
    given = ["--model", "m", "--dataset", "d.csv", "--k", "2", "--label-token-mode", "staicc", "--seed", "3"]
    given += ["--samples", "5", "--min-rate", "0.25", "--log-base", "2", "--eval-batch-size", "4", "--output", "o"]
    args = parser.parse_args(["heads", *given])
    cfg = config_from_args(args)
    assert (cfg.model.model, cfg.data.dataset, cfg.data.k, cfg.data.label_token_mode) == ("m", "d.csv", 2, "staicc")
    assert (cfg.seed, cfg.output, args.samples, args.min_rate, args.log_base) == (3, "o", 5, 0.25, "2")
    assert args.batch_size == 4
    assert parser.parse_args(["heads", "--batch-size", "2"]).batch_size == 2  # the old spelling, unlisted
    assert parser.parse_args(["ceiling", "--batch-size", "2"]).batch_size == 2
    for command in ("heads", "ceiling", "interpolate"):
        assert "--eval-batch-size" in _help(command) and "--batch-size " not in _help(command)
    with pytest.raises(SystemExit):
        parser.parse_args(["heads", "--lr", "1e-3"])
    assert "unrecognized arguments: --lr" in capsys.readouterr().err


def test_a_run_says_where_it_writes_and_what_it_loads_first(
    capsys, tiny_word_model_dir, data_csv, tmp_path, monkeypatch
):
    from abft.cli import main

    monkeypatch.setattr("abft.report.html.write_report", lambda path: path)
    out = tmp_path / "run"
    argv = [
        "evaluate",
        "--model",
        str(tiny_word_model_dir),
        "--dataset",
        str(data_csv),
        "--k",
        "2",
        "--test-samples",
        "4",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"run directory {out}; loading {tiny_word_model_dir}"


def test_log_lines_name_parameters_and_the_cli_words_them_as_flags(capsys):
    """A library log line (errors.Text) reads as parameters; the CLI's log prints the same line with flags."""
    from abft.cli.flags import say
    from abft.config import TrainConfig
    from abft.recipe import describe

    line = describe({"recipe": "auto"}, TrainConfig(lr=1e-3, val_samples=6, val_every=2, keep="best"))
    assert line.endswith("; the same with explicit settings: lr=0.001 val_samples=6 val_every=2 keep=best")
    say()(line)
    say()("a line without parameters")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == line.replace(
        "lr=0.001 val_samples=6 val_every=2 keep=best", "--lr 0.001 --val-samples 6 --val-every 2 --keep best"
    )
    assert printed[1] == "a line without parameters"
