"""config.json read back as user input: the types and choices the CLI's parser would enforce.

cfg = checked_config(json.loads(text))      # UserError naming the first bad key; ranges: RunConfig.validate
"""

from __future__ import annotations

import dataclasses
import math

from .config import SECTIONS, RunConfig, legacy_value
from .errors import UserError

_COMMANDS = ("run", "evaluate")
_RECORDS = ("recipe_choices", "runtime")  # what --recipe chose; the device, dtype and versions used


def checked_config(config, where: str = "config.json") -> RunConfig:
    """The RunConfig of a run's config.json; UserError for an unknown or missing key or a value of the wrong
    type or outside its choices. abft writes every setting, so a missing one is an edit: filled with today's
    default it would describe another run (an emptied "model" would name the default model)."""
    if not isinstance(config, dict):
        raise UserError(f"{where} must hold a JSON object; start a new run")
    top = {f.name for f in dataclasses.fields(RunConfig)} | {"command", *_RECORDS}
    _no_unknown(config, top, where)
    for key in _RECORDS:  # records of what the run chose or ran on, not settings
        if not isinstance(config.get(key, {}), dict):
            raise UserError(f"{where}: '{key}' must be an object; start a new run")
    if config.get("command", "run") not in _COMMANDS:
        raise UserError(f"{where}: 'command' must be one of {list(_COMMANDS)}, got {config['command']!r}")
    for name, cls in SECTIONS.items():
        section = config.get(name, {})
        if not isinstance(section, dict):
            raise UserError(f"{where}: '{name}' must be an object, got {type(section).__name__}")
        _no_unknown(section, {f.name for f in dataclasses.fields(cls)}, f"{where} '{name}'")
        for f in dataclasses.fields(cls):
            _check_value(f, _required(section, f.name, f"{where}: '{name}.{f.name}'"), f"{where}: '{name}.{f.name}'")
    for f in dataclasses.fields(RunConfig):
        if f.name not in SECTIONS:
            _check_value(f, _required(config, f.name, f"{where}: '{f.name}'"), f"{where}: '{f.name}'")
    return RunConfig.from_dict(config)


def _required(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise UserError(f"{where} is missing (abft writes every setting: the file was edited); start a new run")
    return mapping[key]


def _no_unknown(mapping: dict, known: set, where: str) -> None:
    unknown = sorted(set(map(str, mapping)) - known)
    if unknown:
        raise UserError(f"{where} has unknown keys {unknown}; it was not written by this abft")


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _check_value(f: dataclasses.Field, value, where: str) -> None:
    """`value` as the CLI would have parsed it for field `f` (its annotation, choices and nargs)."""
    choices, nargs = f.metadata.get("choices"), f.metadata.get("nargs")
    optional = "None" in f.type
    value = legacy_value(f, value)  # e.g. an older version's "calibration": true
    if nargs:  # a tuple field: the element type is its default's (str for an empty default)
        element = type(f.default_factory()[0]) if f.default_factory() else str
        ok = isinstance(value, list | tuple) and _count_ok(len(value), nargs)
        ok = ok and all(_is_kind(v, element) and (not choices or v in choices) for v in value)
        count = {"+": "one or more", "*": "zero or more"}.get(nargs, nargs)
        want = f"{count} {element.__name__} values" + (f" from {list(choices)}" if choices else "")
    else:
        kind = _KINDS.get(f.type.split("|")[0].strip())
        ok = (value is None and optional) or kind is None or _is_kind(value, kind)
        ok = ok and (not choices or value in choices or (value is None and optional))
        want = f"one of {list(choices)}" if choices else (kind.__name__ if kind else f.type)
    if not ok:
        raise UserError(f"{where} must be {want}, got {value!r}; start a new run")


def _count_ok(n: int, nargs) -> bool:
    return n == nargs if isinstance(nargs, int) else n >= (1 if nargs == "+" else 0)


def _is_kind(value, kind) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)
