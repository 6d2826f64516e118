"""Flags generated from abft.config's field metadata, the RunConfig they give, and errors worded with them.

add_fields(parser, TrainConfig, "train.")       # --lr, --epochs, ... with their --help text
cfg = config_from_args(args)                    # the RunConfig of a parsed `abft run`
print(worded(error, parser))                    # "lora_r must be ..." -> "--lora-r must be ..."
run(cfg, log=say(parser))                       # a run's log lines (errors.Text) with flags too
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from ..config import SECTIONS, RunConfig
from ..errors import Text, UserError

RESUME_FLAGS = {"train.lr": "--lr"}  # what --resume may change: a lower lr after "loss became nan ... lower --lr"


def field_flag(f: dataclasses.Field) -> str:
    """The flag of a config field: its metadata's, else --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_fields(parser: argparse.ArgumentParser, cls, prefix: str, skip=()) -> None:
    """One flag per field of config class `cls` (dest `prefix + name`), in a group named after the class."""
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower() or "run")
    defaults = cls() if cls is not RunConfig else None
    for f in dataclasses.fields(cls):
        if f.name in skip or (cls is RunConfig and f.name in SECTIONS):
            continue
        dest = f"{prefix}{f.name}"
        default = getattr(defaults, f.name) if defaults else f.default
        meta = f.metadata
        if meta.get("negate"):
            group.add_argument(
                meta["negate"],
                dest=dest,
                action="store_false",
                default=default,
                help=f"{meta['help']} (default: on; this flag turns it off)",
            )
        elif f.type in ("bool", bool):
            group.add_argument(field_flag(f), dest=dest, action="store_true", default=default, help=meta["help"])
        else:
            group.add_argument(field_flag(f), dest=dest, default=default, **_value_options(f, default))


def _value_options(f: dataclasses.Field, default) -> dict:
    """add_argument's type, choices, nargs, metavar and help of a valued field. A tuple field's element type
    is its default's (str for an empty default); nargs "*" with a `const`: the bare flag gives const."""
    meta = f.metadata
    nargs, choices = meta.get("nargs"), meta.get("choices")
    kind = (type(default[0]) if default else str) if nargs else _scalar_type(f)
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default  # as typed on the command line
    shown = shown if shown != "" else "off"
    out = {
        "type": kind,
        "choices": choices,
        "nargs": nargs,
        "metavar": None if choices else f.name.upper(),
        "help": meta["help"] if default is None else f"{meta['help']} (default: {shown})",
    }
    if nargs == "*" and meta.get("const") is not None:
        out["action"] = _BareConst
        out["const"] = meta["const"]
        if choices:
            out["metavar"] = "{" + ",".join(choices) + "}"
    return out


class _BareConst(argparse.Action):
    """nargs "*": the given values, or `const` when the flag comes bare (--calibration -> every method)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(values) if values else tuple(self.const))


def _scalar_type(f: dataclasses.Field):
    """float / int / str from the field's annotation ("float | None" -> float); a None default has no type."""
    name = str(f.type).split("|")[0].strip()
    return {"float": float, "int": int, "bool": bool}.get(name, str)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of parsed flags: "section.name" dests set that section's field, plain ones RunConfig's."""
    cfg = RunConfig()
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            setattr(getattr(cfg, section), name, tuple(value) if isinstance(value, list) else value)
        elif key in {f.name for f in dataclasses.fields(RunConfig)}:
            setattr(cfg, key, value)
    return cfg


def config_flag(dest: str) -> str:
    """The flag of a config dest or field name ("train.reward" or "reward" -> "--correct-label-reward";
    a switched-off default names its --no-... switch)."""
    section, _, name = dest.rpartition(".")
    classes = [SECTIONS[section]] if section in SECTIONS else [RunConfig, *SECTIONS.values()]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == name and not (cls is RunConfig and name in SECTIONS):
                return f.metadata.get("negate") or field_flag(f)
    return "--" + name.replace("_", "-")


def worded(error: UserError | Text, parser: argparse.ArgumentParser | None = None) -> str:
    """The message of `error` (or a log line) with each parameter written as the flag that sets it: the option
    of `parser` (the parsed subcommand) whose dest ends in that name, else the config field's flag."""
    actions = {}
    for action in getattr(parser, "_actions", []):  # argparse lists its actions nowhere public
        if action.option_strings:
            actions.setdefault(action.dest.rpartition(".")[2], action)

    def word(name: str, value: str | None) -> str:
        action = actions.get(name)
        option = action.option_strings[-1] if action else config_flag(name)
        switch = action is None or action.nargs == 0  # store_true / store_false: the option says the value
        if value is None or (switch and value in ("True", "False")):
            return option
        return f"{option} {value}"

    return error.worded(word)


def say(parser: argparse.ArgumentParser | None = None) -> Callable[[str], None]:
    """The `log` the library is given: print each line, a Text's parameters worded as `parser`'s flags."""
    return lambda line: print(worded(line, parser) if isinstance(line, Text) else line)


def resume_changes(args, defaults: dict) -> dict:
    """{field: value} of the flags given with `--resume` (values differing from the parser's `defaults`):
    RESUME_FLAGS only; UserError naming any other flag (the run's own config.json decides everything else)."""
    ignored = {"resume", "func", "parser", "command", "debug"}
    given = [key for key, value in vars(args).items() if key not in ignored and value != defaults.get(key)]
    refused = [key for key in given if key not in RESUME_FLAGS]
    if refused:
        flags = ", ".join(config_flag(key) for key in refused)
        raise UserError(
            f"{flags} cannot be given with --resume (the run continues with its own config.json); only "
            f"{', '.join(RESUME_FLAGS.values())} may change, or start a new run"
        )
    return {key.split(".")[-1]: getattr(args, key) for key in given}
