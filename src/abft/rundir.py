"""A run directory: config, metrics, logs and weights of one run, written atomically.

status.json records running / finished / failed; a finished run is never overwritten unless asked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import UserError

_UMASK = os.umask(0)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `path` whole or not at all; the temporary file's name is unique, so writers of the same path in
    parallel (a cache shared by several runs) never mix their bytes."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, killed...: leave the previous file, not a half-written one
        tmp.unlink(missing_ok=True)
        raise


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def check_available(cls, path: str | Path, overwrite: bool = False) -> None:
        """Fail early (before any expensive work) when `create` would refuse `path`."""
        run = cls(Path(path))
        state = run.state()
        if state is not None and not overwrite:
            raise UserError(f"{run.path} already holds a {state} run; pick another --output or pass --overwrite")
        if run.path.exists() and state is None and (not run.path.is_dir() or any(run.path.iterdir())):
            raise UserError(f"{run.path} exists and is not an abft run directory; pick another --output")
        parent = next((p for p in (run.path, *run.path.parents) if p.exists()), None)  # the nearest that exists
        if parent is not None and not parent.is_dir():
            raise UserError(f"cannot create {run.path}: {parent} is a file, not a directory; pick another --output")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot create {run.path}: {parent} is not writable; pick another --output")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        cls.check_available(path, overwrite)
        run = cls(Path(path))
        existed = run.path.exists()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            for old in run.path.iterdir():  # --overwrite: an abft run directory (check_available), all of it ours
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            run.set_state("running")
        except OSError as exc:
            if not existed:  # leave nothing behind
                shutil.rmtree(run.path, ignore_errors=True)
            raise UserError(
                f"cannot write to {run.path}: {exc.strerror}; free disk space or pick another --output"
            ) from exc
        return run

    @classmethod
    def reopen(cls, path: str | Path) -> RunDir:
        """An interrupted (running or failed) run, to resume; its files are kept."""
        run = cls(Path(path))
        state = run.state()
        if state is None:
            raise UserError(f"{run.path} is not an abft run directory; nothing to resume")
        if state == "finished":
            raise UserError(f"{run.path} already finished; start a new run with another --output")
        run.set_state("running")
        return run

    def read_json(self, name: str, default=None):
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return default

    def state(self) -> str | None:
        try:
            return json.loads((self.path / "status.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            return None

    def set_state(self, state: str, **info) -> None:
        self.write_json("status.json", {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})

    def write_json(self, name: str, obj) -> None:
        atomic_write(self.path / name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def append_jsonl(self, name: str, record: dict) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def remove_temporaries(self) -> None:
        """Delete the temporary files of interrupted atomic writes (.<name>.tmp), e.g. after a full disk."""
        for tmp in self.path.rglob(".*.tmp"):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def file(self, name: str) -> Path:
        return self.path / name
