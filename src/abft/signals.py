"""SIGTERM ends a run like Ctrl-C: status.json says "interrupted" and how to continue.

with sigterm_as_interrupt():      # cli.main: kill, `timeout`, a batch scheduler's stop
    ...
raise interrupted(exc, run_dir)   # runner: the KeyboardInterrupt, naming `abft run --resume RUN_DIR`
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; the message names the command that continues it."""


def _raise(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises KeyboardInterrupt, so the run's cleanup runs as for Ctrl-C (without it the
    process dies at once and status.json keeps saying "running")."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: BaseException, run_dir: Path) -> Interrupted | None:
    """`exc` as an Interrupted naming the resume command, if it is a KeyboardInterrupt."""
    if not isinstance(exc, KeyboardInterrupt) or isinstance(exc, Interrupted):
        return None
    return Interrupted(f"interrupted; continue with `abft run --resume {run_dir}`")
