"""Progress bars (rich) that stay quiet when not attached to a terminal or on non-main processes."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_enabled = True


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


@contextmanager
def progress_bar(description: str, total: int):
    """Yield `advance(n, **fields)`; fields are shown after the bar (e.g. loss=0.12)."""
    show = _enabled and sys.stderr.isatty() and not os.environ.get("ABFT_NO_PROGRESS")
    if not show:
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
