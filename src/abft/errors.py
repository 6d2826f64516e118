"""The one exception type for mistakes a user can make (bad setting, missing file, unknown dataset...), and
how library text names settings.

    raise UserError(f"{param('lora_r')} must be at least 1, got {r}")
    log(Text(f"note: {param('fsdp')} shards the model ..."))    # a log line that names a setting

A message names settings by their parameter (`param`): str(error) reads "lora_r must be at least 1, got 0";
the CLI words the same error with its flags ("--lora-r must be at least 1, got 0", abft.cli.flags), prints it
on one line and exits with status 2. Everything else is a bug and keeps its traceback. A log line that names
settings is a Text: printed as it is it names parameters, and the CLI's `log` words them as flags too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MARK = "\x1f"  # a control character no message holds: brackets a parameter inside the message
_PARAM = re.compile(f"{_MARK}([^{_MARK}=]+)(?:=([^{_MARK}]*))?{_MARK}")


def param(name: str, value=None) -> str:
    """A parameter named inside a UserError message or a Text (with its value, when that matters)."""
    return f"{_MARK}{name}{_MARK}" if value is None else f"{_MARK}{name}={value}{_MARK}"


def named(name: str) -> str:
    """`name` as a parameter unless it already holds one (a phrase such as "epochs x train_samples")."""
    return name if _MARK in name else param(name)


def _plain(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


def _reword(text: str, word: Callable[[str, str | None], str]) -> str:
    return _PARAM.sub(lambda m: word(m[1], m[2]), text)


class Text(str):
    """A line for the user that names parameters (`param`): the str it is reads them by name ("lr=0.001");
    `marked` keeps the marks, and `worded(word)` writes them otherwise (abft.cli: as flags, "--lr 0.001")."""

    marked: str

    def __new__(cls, marked: str) -> Text:
        text = super().__new__(cls, _reword(marked, _plain))
        text.marked = marked
        return text

    def worded(self, word: Callable[[str, str | None], str]) -> str:
        """The line with every parameter written by `word(name, value or None)`."""
        return _reword(self.marked, word)


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix. args[0] keeps the parameter
    marks (pass it on to re-raise elsewhere); str() reads them as plain names."""

    def __str__(self) -> str:
        return self.worded(_plain)

    def worded(self, word: Callable[[str, str | None], str]) -> str:
        """The message with every parameter written by `word(name, value or None)`."""
        return _reword(str(self.args[0]) if self.args else "", word)
