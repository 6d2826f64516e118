"""Progress bars (rich) that stay quiet when not attached to a terminal or on non-main processes."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_enabled = True


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


def enabled() -> bool:
    """Progress is shown: this process may print it, stderr is a terminal, and ABFT_NO_PROGRESS is unset."""
    return _enabled and sys.stderr.isatty() and not os.environ.get("ABFT_NO_PROGRESS")


@contextmanager
def quiet_unless_enabled():
    """Swallow what libraries write to stderr (their tqdm bars) while progress is off, so logs and the one-line
    errors stay clean; exceptions still propagate."""
    if enabled():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextmanager
def progress_bar(description: str, total: int):
    """Yield `advance(n, **fields)`; fields are shown after the bar (e.g. loss=0.12)."""
    if not enabled():
        yield lambda n=1, **fields: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance
