"""The ten StaICC classification datasets, read from the installed StaICC wheel without importing it.

    info = dataset_info("SST-2")           # aliases, StaICC names and indices all work
    ds = load_dataset("sst2")              # Dataset(info, rows, calibration, demonstration, test)
    text, label = ds.rows[ds.test[0]]

Each `StaICC/cached_dataset/<name>.dataset` is a pickle of `list[tuple[list[str], int]]`. We read it
with an unpickler that refuses every global, so a tampered file can neither import nor call anything:
the only objects it can build are lists, tuples, strings and numbers. Every StaICC row has one input
text; a row with several is joined with single spaces. The splits are StaICC's, bit-exact (LCG seed 42).
Loaded datasets are cached per process: treat them as read-only.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from abft.errors import UserError

from .sampling import staicc_split

_STD = (1024, 4096, 512)


@dataclass(frozen=True)
class DatasetInfo:
    index: int  # StaICC index 0..9 (-1 for a user dataset)
    name: str  # short CLI name = file stem
    staicc_name: str  # StaICC's dataset_name, e.g. "GLUE-SST2"
    input_prefix: str
    label_prefix: str
    label_words: tuple[str, ...]
    split_sizes: tuple[int, int, int]  # calibration, demonstration, test


_INFOS = (
    DatasetInfo(0, "sst2", "GLUE-SST2", "sentence: ", "sentiment: ", ("negative", "positive"), _STD),
    DatasetInfo(1, "rotten_tomatoes", "rotten_tomatoes", "review: ", "sentiment: ", ("negative", "positive"), _STD),
    DatasetInfo(
        2,
        "financial_phrasebank",
        "financial_phrasebank",
        "sentence: ",
        "sentiment: ",
        ("negative", "neutral", "positive"),
        (1024, 512, 512),
    ),
    DatasetInfo(3, "sst5", "SST5", "sentence: ", "sentiment: ", ("poor", "bad", "neutral", "good", "great"), _STD),
    DatasetInfo(
        4,
        "trec",
        "TREC",
        "question: ",
        "target: ",
        ("short", "entity", "description", "person", "location", "number"),
        _STD,
    ),
    DatasetInfo(5, "agnews", "AGNews", "news: ", "topic: ", ("world", "sports", "business", "science"), _STD),
    DatasetInfo(6, "subjective", "Subjective", "review: ", "subjectiveness: ", ("false", "true"), _STD),
    DatasetInfo(
        7,
        "tweet_eval_emotion",
        "tweet_eval_emotion",
        "tweet: ",
        "emotion: ",
        ("anger", "joy", "positive", "sad"),
        (1024, 3192, 512),
    ),
    DatasetInfo(8, "tweet_eval_hate", "tweet_eval_hate", "tweet: ", "hate speech: ", ("normal", "hate"), _STD),
    DatasetInfo(
        9,
        "hate_speech_18",
        "hate_speech_18",
        "tweet: ",
        "hate speech: ",
        ("normal", "hate", "skip", "relation"),
        _STD,
    ),
)

PAPER_DATASETS: tuple[str, ...] = tuple(_INFOS[i].name for i in (0, 1, 2, 3, 4, 6, 7, 8))

_EXTRA_ALIASES = {"mr": 1, "rt": 1, "fpb": 2, "phrasebank": 2, "subj": 6, "tee": 7, "teh": 8, "hs18": 9}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


_ALIASES: dict[str, int] = {}
for _info in _INFOS:
    _ALIASES[_norm(_info.name)] = _info.index
    _ALIASES[_norm(_info.staicc_name)] = _info.index
_ALIASES.update(_EXTRA_ALIASES)


def list_datasets() -> list[DatasetInfo]:
    return list(_INFOS)


def dataset_info(name_or_index: str | int | DatasetInfo) -> DatasetInfo:
    """Look a StaICC dataset up by CLI name, StaICC name, alias ("SST-2", "MR") or index (0, "0")."""
    if isinstance(name_or_index, DatasetInfo):
        return name_or_index
    key = name_or_index
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key.strip())
    if isinstance(key, int) and not isinstance(key, bool):
        if 0 <= key < len(_INFOS):
            return _INFOS[key]
    elif isinstance(key, str) and _norm(key) in _ALIASES:
        return _INFOS[_ALIASES[_norm(key)]]
    names = ", ".join(i.name for i in _INFOS)
    raise UserError(f"unknown dataset {name_or_index!r}; choose one of {names} (or an index 0-9)")


@dataclass
class Dataset:
    info: DatasetInfo
    rows: list[tuple[str, int]]  # (text, label index)
    calibration: list[int]  # indices into rows
    demonstration: list[int]
    test: list[int]
    made_by: str = "staicc"  # how the splits were made: staicc, seeded, column or files (data.userdata)


class _GlobalRefused(pickle.UnpicklingError):
    pass


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds only primitive objects: every GLOBAL / STACK_GLOBAL / INST / OBJ / EXT lookup fails."""

    def find_class(self, module, name):  # noqa: ARG002 - refuse, never import
        raise _GlobalRefused(_one_line(f"{module}.{name}"))


def _one_line(text: str, limit: int = 200) -> str:
    """A message fragment from untrusted bytes: whitespace collapsed to single spaces, at most `limit` chars."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restricted_loads(data: bytes, source: str = "pickle"):
    """Unpickle `data` refusing any global; UserError on a global or a malformed pickle."""
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except _GlobalRefused as e:
        raise UserError(
            f"{source} contains a global ({e}); refusing to load it. Reinstall StaICC==0.1.1 "
            "(pip install --force-reinstall --only-binary=:all: StaICC==0.1.1)"
        ) from None
    except Exception as e:  # any malformed stream: EOFError, UnpicklingError, ValueError, MemoryError...
        raise UserError(
            f"{source} is not a readable dataset pickle ({type(e).__name__}: {_one_line(str(e))}); "
            "reinstall StaICC==0.1.1"
        ) from None


def read_dataset_file(path: str | Path, n_labels: int | None = None) -> list[tuple[str, int]]:
    """Read one StaICC `.dataset` file safely into (text, label) rows, validating its shape."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); reinstall StaICC==0.1.1") from None
    obj = restricted_loads(data, str(path))
    bad = UserError(f"{path} is not a list of (texts, label) rows; reinstall StaICC==0.1.1")
    if not isinstance(obj, list):
        raise bad
    rows = []
    for row in obj:
        if not (isinstance(row, (tuple, list)) and len(row) == 2):
            raise bad
        texts, label = row
        if isinstance(texts, str):
            texts = [texts]
        if not (isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts)):
            raise bad
        if not isinstance(label, int) or isinstance(label, bool):
            raise bad
        if n_labels is not None and not 0 <= label < n_labels:
            raise UserError(f"{path} has label {label} outside 0..{n_labels - 1}; reinstall StaICC==0.1.1")
        rows.append((texts[0] if len(texts) == 1 else " ".join(texts), label))
    return rows


def staicc_data_dir() -> Path:
    spec = importlib.util.find_spec("StaICC")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("StaICC is not installed; run: pip install --only-binary=:all: StaICC==0.1.1")
    return Path(list(spec.submodule_search_locations)[0]) / "cached_dataset"


@cache
def _load(index: int) -> Dataset:
    info = _INFOS[index]
    rows = read_dataset_file(staicc_data_dir() / f"{info.name}.dataset", len(info.label_words))
    if len(rows) < sum(info.split_sizes):
        raise UserError(f"{info.name} has {len(rows)} rows, fewer than its split needs; reinstall StaICC")
    cal, demo, test = staicc_split(len(rows), info.split_sizes)
    return Dataset(info, rows, cal, demo, test)


def load_dataset(name_or_index: str | int | DatasetInfo) -> Dataset:
    """A StaICC dataset with StaICC's calibration / demonstration / test split (cached; read-only)."""
    info = dataset_info(name_or_index)
    if info.index < 0 or _INFOS[info.index] != info:
        raise UserError(f"'{info.name}' is not a StaICC dataset; load a user file with load_user_dataset")
    return _load(info.index)
