"""The one exception type for mistakes a user can make (bad setting, missing file, unknown dataset...).

    raise UserError(f"{param('lora_r')} must be at least 1, got {r}")

A message names settings by their parameter (`param`): str(error) reads "lora_r must be at least 1, got 0";
the CLI words the same error with its flags ("--lora-r must be at least 1, got 0", abft.cli.flags), prints it
on one line and exits with status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MARK = "\x1f"  # a control character no message holds: brackets a parameter inside the message
_PARAM = re.compile(f"{_MARK}([^{_MARK}=]+)(?:=([^{_MARK}]*))?{_MARK}")


def param(name: str, value=None) -> str:
    """A parameter named inside a UserError message (with the value it was given, when that matters)."""
    return f"{_MARK}{name}{_MARK}" if value is None else f"{_MARK}{name}={value}{_MARK}"


def named(name: str) -> str:
    """`name` as a parameter unless it already holds one (a phrase such as "epochs x train_samples")."""
    return name if _MARK in name else param(name)


def _plain(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix. args[0] keeps the parameter
    marks (pass it on to re-raise elsewhere); str() reads them as plain names."""

    def __str__(self) -> str:
        return self.worded(_plain)

    def worded(self, word: Callable[[str, str | None], str]) -> str:
        """The message with every parameter written by `word(name, value or None)`."""
        text = str(self.args[0]) if self.args else ""
        return _PARAM.sub(lambda m: word(m[1], m[2]), text)
