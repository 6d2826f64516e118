"""A run directory: config, metrics, logs and weights of one run, written atomically.

status.json records running / finished / failed / interrupted; a finished run is never overwritten unless
asked, and only a directory abft created (it holds MARKER, a random id written at creation) is ever deleted.
A live run holds an exclusive flock on MARKER; the OS releases it when the process ends, however it ends
(SIGKILL included), so a second writer (--overwrite, --resume, another run) is refused and no lock goes stale.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from . import distributed
from .configcheck import checked_config
from .errors import UserError, param

_UMASK = os.umask(0)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK  # what open() / mkdir() create under this umask
MARKER = ".abft-run"  # created by abft with the directory: ownership, and the live run's lock
# The files of a run directory (the trained weights' names: models.weights)
CONFIG_FILE, STATUS_FILE, METRICS_FILE, TIMINGS_FILE = "config.json", "status.json", "metrics.json", "timings.json"
HEADS_FILE, LOG_FILE, CHECKPOINT_DIR = "heads.json", "train_log.jsonl", "checkpoint"
PREDICTIONS_FILE = "predictions_{stage}.jsonl"  # the normal test's per-prompt outputs, stage before / after
EXAMPLE_FILE, SHIFT_FILE = "example_attention.json", "qk_shift.json"  # abft.analysis.snapshot's


def default_output(*parts: str) -> Path:
    """runs/<part>-...-<time>, the default output of every command; a path part gives its stem (a dataset file,
    a model directory)."""
    name = "-".join(Path(part).stem for part in parts)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_output_dir(out: Path) -> Path:
    """Create the output directory `out` of an analysis (a UserError naming it when that fails)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror}") from exc
    return out


def read_config_json(run: str | Path) -> dict:
    """config.json of a run directory as written (not checked); a UserError when it is missing or unreadable."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run} is not an abft run directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def read_run_config(run: str | Path):
    """The RunConfig a run directory was started with: UserError when config.json is missing, invalid, or not
    the one its status.json fingerprint binds to the run (edited or replaced: its weights may not match it)."""
    return checked_config(RunDir(Path(run)).read_config(), str(Path(run) / CONFIG_FILE))


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `path` whole or not at all; the temporary file's name is unique, so writers of the same path in
    parallel (a cache shared by several runs) never mix their bytes."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, FILE_MODE)  # as open() would create it (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, killed...: leave the previous file, not a half-written one
        tmp.unlink(missing_ok=True)
        raise


def config_fingerprint(config: dict) -> str:
    """sha256 of a config's canonical JSON, without `output` (a moved run directory is still the same run)."""
    canonical = json.loads(json.dumps(config))  # tuples as lists, as read back
    canonical.pop("output", None)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: int | None = None  # the descriptor holding MARKER's flock while this process writes here
        self._config_sha: str | None = None  # fingerprint of config.json, kept in status.json

    @classmethod
    def check_available(cls, path: str | Path, overwrite: bool = False) -> None:
        """Fail early (before any expensive work) when `create` would refuse `path`."""
        run = cls(Path(path))
        state = run.state()
        if state is not None and not overwrite:
            raise UserError(
                f"{run.path} already holds a {state} run; pick another {param('output')} or pass {param('overwrite')}"
            )
        if state is not None or run.is_owned():
            run.check_ours()
            run.check_unlocked()
        elif run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise UserError(f"{run.path} exists and is not an abft run directory; pick another {param('output')}")
        parent = next((p for p in (run.path, *run.path.parents) if p.exists()), None)  # the nearest that exists
        if parent is not None and not parent.is_dir():
            raise UserError(
                f"cannot create {run.path}: {parent} is a file, not a directory; pick another {param('output')}"
            )
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot create {run.path}: {parent} is not writable; pick another {param('output')}")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        cls.check_available(path, overwrite)
        run = cls(Path(path))
        existed = run.path.exists()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            run.lock()  # before anything is deleted: a run that started meanwhile keeps its files
            for old in run.path.iterdir():  # --overwrite: a directory abft created (check_available), all ours
                if old.name != MARKER:
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            os.ftruncate(run._lock, 0)  # in place: replacing the file would drop the lock
            os.write(run._lock, secrets.token_hex(16).encode() + b"\n")
            run.set_state("running")
        except OSError as exc:
            run.release()
            if not existed:  # leave nothing behind
                shutil.rmtree(run.path, ignore_errors=True)
            raise UserError(
                f"cannot write to {run.path}: {exc.strerror}; free disk space or pick another {param('output')}"
            ) from exc
        return run

    @classmethod
    def check_resumable(cls, path: str | Path) -> None:
        """Fail early when `reopen` would refuse `path`: not a run, finished, or another process's live run."""
        run = cls(Path(path))
        state = run.state()
        if state is None:
            raise UserError(f"{run.path} is not an abft run directory; nothing to resume")
        if state == "finished":
            raise UserError(f"{run.path} already finished; start a new run with another {param('output')}")
        run.check_unlocked()

    @classmethod
    def resumable_config(cls, path: str | Path) -> dict:
        """config.json of a run `reopen` would accept (check_resumable, then read_config)."""
        cls.check_resumable(path)
        return cls(Path(path)).read_config()

    @classmethod
    def reopen(cls, path: str | Path) -> RunDir:
        """An interrupted (running, failed or interrupted) run, to resume; its files are kept."""
        cls.check_resumable(path)
        run = cls(Path(path))
        try:
            run.lock()
        except OSError as exc:
            raise UserError(f"cannot write to {run.path}: {exc.strerror}; fix the permissions or free space") from exc
        run.remove_temporaries()  # of the interrupted run: a kill can leave one mid-write
        run._config_sha = run.read_json("status.json", {}).get("config_sha256")
        run.set_state("running")
        return run

    def is_owned(self) -> bool:
        return (self.path / MARKER).is_file() and not (self.path / MARKER).is_symlink()

    def check_ours(self) -> None:
        """UserError unless abft created this directory: --overwrite deletes nothing else."""
        if not self.is_owned():
            raise UserError(
                f"{self.path} has a status.json but no {MARKER} marker: abft did not create it (or an abft before "
                f"0.2 did), so {param('overwrite')} will not delete it; delete it yourself or pick another "
                f"{param('output')}"
            )

    def check_unlocked(self) -> None:
        """UserError when another process holds this run's lock (it is running now)."""
        if not self.is_owned():
            return  # no marker: no abft that locks has written here
        try:
            fd = os.open(self.path / MARKER, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use() from None
        finally:
            os.close(fd)  # closing releases a probe's lock

    def lock(self) -> None:
        """Hold MARKER's exclusive lock until `release` or the end of this process."""
        fd = os.open(self.path / MARKER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use() from None
        self._lock = fd

    def _in_use(self) -> UserError:
        return UserError(f"{self.path} is in use by a running abft process; wait for it to end or pick another output")

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def read_json(self, name: str, default=None):
        """A JSON object file of the run, or `default` when it is missing, unreadable or not an object."""
        try:
            value = json.loads((self.path / name).read_text())
        except (OSError, ValueError, RecursionError):
            return default
        return value if isinstance(value, dict) else default

    def state(self) -> str | None:
        state = self.read_json("status.json", {}).get("state")
        return state if isinstance(state, str) else None

    def set_state(self, state: str, **info) -> None:
        status = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        if self._config_sha:
            status["config_sha256"] = self._config_sha
        self.write_json("status.json", status)

    def record_stop(self, error: BaseException) -> None:
        """status.json of a run stopped by `error`: interrupted (Ctrl-C, SIGTERM) or failed; best effort, as on a
        full disk even status.json may not be writable."""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        try:
            self.set_state("interrupted" if isinstance(error, KeyboardInterrupt) else "failed", error=message)
        except OSError:
            pass
        self.remove_temporaries()
        self.release()

    def write_config(self, config: dict) -> None:
        """config.json, bound to this run by its fingerprint in status.json (`read_config` checks it)."""
        self._config_sha = config_fingerprint(config)
        self.write_json("config.json", config)
        self.set_state(self.state() or "running")

    def read_config(self) -> dict:
        """config.json as written by `write_config`: UserError when it is missing, unreadable or edited since."""
        config = self.read_json("config.json")
        if config is None:
            raise UserError(f"{self.path} is not an abft run directory (no readable config.json object)")
        recorded = self.read_json("status.json", {}).get("config_sha256")
        if recorded != config_fingerprint(config):
            raise UserError(
                f"{self.path / 'config.json'} is not the configuration this run was started with (edited, replaced, "
                "or written by an abft without config fingerprints); rerun it"
            )
        return config

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


def open_run_dir(create) -> RunDir:
    """The main process's run directory (`create()`); the others get a scratch RunDir (deleted at exit)."""
    out = distributed.on_main(create)
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix=f"abft-rank{distributed.rank()}-"))
        atexit.register(shutil.rmtree, scratch, True)
        out = RunDir(scratch)
        out.set_state("running")
    return out
