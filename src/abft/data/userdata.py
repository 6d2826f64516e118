"""A user's own labelled data: CSV / TSV / JSONL / JSON file, or a JSON / YAML spec pointing at one.

    ds = load_user_dataset("reviews.csv", label_words=["negative", "positive"])
    ds = load_user_dataset("reviews.yaml")      # spec: {path, text_column, label_column, label_words, ...}

Files: `.csv` (header row), `.tsv`, `.jsonl` (one JSON object per line), `.json` (a list of objects),
UTF-8 (a BOM is fine). Labels may be label words or label indices (0-based); without `label_words`
the labels must be words and the label words are their sorted distinct values.

Spec file (`.yaml`/`.yml`, or a `.json` object with a "path" key): keys path (relative to the spec
file), text_column, label_column, label_words, input_prefix, label_prefix, split_sizes, seed. Values
in a spec take precedence over keyword arguments.

Splits: a seeded (`random.Random(seed)`, default 42) sample of the rows, cut into calibration first,
then demonstration, then test. Sizes default to StaICC's 1024 / 4096 / 512 when the file has at least
5632 rows (extra rows are unused, as in StaICC); a smaller file is split in the same proportions
(calibration and test N*1024/5632 and N*512/5632 rounded down but at least 1, demonstration the rest).
`split_sizes` overrides this; UserError if it asks for more rows than the file has.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import yaml

from abft.errors import UserError

from .staicc import Dataset, DatasetInfo

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".yaml", ".yml")  # what load_user_dataset reads
_STD = (1024, 4096, 512)
_SPEC_KEYS = {"path", "text_column", "label_column", "label_words", "input_prefix", "label_prefix",
              "split_sizes", "seed"}  # fmt: skip


def default_split_sizes(n_rows: int) -> tuple[int, int, int]:
    if n_rows >= sum(_STD):
        return _STD
    if n_rows < 3:
        raise UserError(f"the file has {n_rows} rows; it needs at least 3 (one per split)")
    cal = max(1, n_rows * _STD[0] // sum(_STD))
    test = max(1, n_rows * _STD[2] // sum(_STD))
    return cal, n_rows - cal - test, test


def _read_text(path: Path) -> str:
    try:
        if path.exists() and not path.is_file():  # a FIFO or device would block the read forever
            raise UserError(f"{path} is not a regular file; pass a data file")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) else "invalid path"
        raise UserError(f"cannot read {path} ({reason}); check the path") from None


def _check_header(path: Path, header: list[str]) -> None:
    """DictReader keeps the last of two same-named columns, so `text,label,text` would read the wrong one."""
    names = [name.strip() for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{path} has the column(s) {repeated} more than once; rename or drop the duplicates")


def _parse_structured(path: Path, text: str):
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        raise UserError(f"{path} is not valid {path.suffix[1:].upper()} ({str(e).splitlines()[0]})") from None


def _read_data(path: Path) -> tuple[list, list[str] | None] | dict:
    """(records, CSV header columns or None) for a data file, or the mapping of a spec file."""
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix in (".csv", ".tsv"):
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            records = list(reader)
        except csv.Error as e:
            raise UserError(f"{path} is not valid CSV ({e}); fix the file") from None
        header = list(reader.fieldnames or [])
        _check_header(path, header)
        return records, header
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a string
            if line.strip():
                try:
                    records.append(json.loads(line))
                except (ValueError, RecursionError):
                    raise UserError(f"{path} line {n} is not valid JSON; fix that line") from None
        return records, None
    if suffix in (".json", ".yaml", ".yml"):
        data = _parse_structured(path, text)
        if isinstance(data, dict):
            return data
        if suffix == ".json" and isinstance(data, list):
            return data, None
        raise UserError(f"{path} must hold a list of objects or a spec mapping with a 'path' key")
    raise UserError(f"{path} has an unsupported type {suffix!r}; use {', '.join(SUFFIXES)}")


def _label_index(value, words: tuple[str, ...], where: str) -> int:
    if isinstance(value, str):
        s = value.strip()
        if s in words:
            return words.index(s)
        if s.lstrip("-").isdigit():
            value = int(s)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(words):
        return value
    raise UserError(
        f"{where}: label {value!r} is not one of the label words {list(words)}"
        f" nor an index 0..{len(words) - 1}; fix the label or the label words"
    )


def _check_words(words, source: str) -> tuple[str, ...]:
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise UserError(f"label words from {source} must be a list of strings")
    words = tuple(words)
    if len(words) < 2 or any(not w or w != w.strip() for w in words) or len(set(words)) != len(words):
        raise UserError(
            f"label words {list(words)} from {source}: give at least 2 distinct non-empty words without outer spaces"
        )
    return words


def _check_spec(spec, base: Path | None) -> dict:
    if not isinstance(spec, dict):
        raise UserError("a dataset spec must be a mapping with at least a 'path' key")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise UserError(f"unknown spec keys {sorted(map(str, unknown))}; allowed: {sorted(_SPEC_KEYS)}")
    spec = dict(spec)
    if "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"]:
            raise UserError("spec 'path' must be a string naming the data file")
        if any(ord(c) < 32 for c in spec["path"]):
            raise UserError(f"spec 'path' {spec['path']!r} contains a control character; name the data file plainly")
        p = Path(spec["path"])
        spec["path"] = p if p.is_absolute() or base is None else base / p
    for key in ("text_column", "label_column", "input_prefix", "label_prefix"):
        if key in spec and not isinstance(spec[key], str):
            raise UserError(f"spec '{key}' must be a string")
    if "seed" in spec and (not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool)):
        raise UserError("spec 'seed' must be an integer")
    return spec


def _columns(records: list, header, tcol: str, lcol: str, data_path: Path) -> tuple[list[str], list]:
    """(texts, raw labels) of the rows; UserError naming the first row or column that is not usable."""
    if header is not None:
        for col in (tcol, lcol):
            if col not in header:
                raise UserError(f"{data_path} has no column '{col}' (columns: {header}); name the right column")
    texts, raw = [], []
    for n, rec in enumerate(records, 1):
        where = f"{data_path} row {n}"
        if not isinstance(rec, dict):
            raise UserError(f"{where} is not an object with '{tcol}' and '{lcol}' fields")
        t, y = rec.get(tcol), rec.get(lcol)
        if t is None or y is None:
            col = tcol if t is None else lcol
            raise UserError(f"{where} has no value for '{col}'; fill it in or drop the row")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = str(t)
        if not isinstance(t, str):
            raise UserError(f"{where}: '{tcol}' must be text, got {type(t).__name__}")
        if isinstance(y, (bool, list, dict)):
            raise UserError(f"{where}: '{lcol}' must be a label word or index, got {y!r}")
        texts.append(t)
        raw.append(y)
    return texts, raw


def load_user_dataset(
    path: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_words: list[str] | tuple[str, ...] | None = None,
    input_prefix: str = "input: ",
    label_prefix: str = "label: ",
    spec: dict | str | Path | None = None,
    split_sizes: tuple[int, int, int] | None = None,
    seed: int = 42,
) -> Dataset:
    """A Dataset from a user's file (see the module docstring); UserError on any problem in the file."""
    opts = {
        "path": path,
        "text_column": text_column,
        "label_column": label_column,
        "label_words": label_words,
        "input_prefix": input_prefix,
        "label_prefix": label_prefix,
        "split_sizes": split_sizes,
        "seed": seed,
    }
    if spec is not None:
        if isinstance(spec, (str, Path)):
            loaded = _read_data(Path(spec))
            if not isinstance(loaded, dict):
                raise UserError(f"{spec} is a data file, not a spec; pass it as the path")
            opts.update(_check_spec(loaded, Path(spec).parent))
        else:
            opts.update(_check_spec(spec, None))
    if opts["path"] is None:
        raise UserError("no data file given; pass a path or a spec with a 'path' key")
    data_path = Path(opts["path"])
    loaded = _read_data(data_path)
    if isinstance(loaded, dict):  # the path is itself a spec file
        spec_opts = _check_spec(loaded, data_path.parent)
        if "path" not in spec_opts:
            raise UserError(f"spec {data_path} has no 'path' key; add the data file's path")
        opts.update(spec_opts)
        data_path = Path(opts["path"])
        loaded = _read_data(data_path)
        if isinstance(loaded, dict):
            raise UserError(f"{data_path} is a spec too; a spec's 'path' must name a data file")
    records, header = loaded
    if not records:
        raise UserError(f"{data_path} has no data rows; add some")
    tcol, lcol = opts["text_column"], opts["label_column"]
    texts, raw = _columns(records, header, tcol, lcol, data_path)
    if opts["label_words"] is None:
        if any(not isinstance(y, str) or y.strip().lstrip("-").isdigit() for y in raw):
            raise UserError(f"{data_path}: labels look like indices; give the label words (one per index)")
        words = _check_words(sorted({y.strip() for y in raw}), str(data_path))
    else:
        words = _check_words(opts["label_words"], "the label words option")
    empty = sum(1 for t in texts if not t.strip())
    if empty:  # legal (a content-free query), but usually a wrong column or a broken export
        print(f"abft: warning: {data_path}: {empty} of {len(texts)} texts in '{tcol}' are empty", file=sys.stderr)
    rows = [
        (t, _label_index(y, words, f"{data_path} row {n}")) for n, (t, y) in enumerate(zip(texts, raw, strict=True), 1)
    ]
    sizes = _split_sizes(opts["split_sizes"], len(rows))
    order = random.Random(opts["seed"]).sample(range(len(rows)), sum(sizes))
    cal, demo = sizes[0], sizes[0] + sizes[1]
    info = DatasetInfo(-1, data_path.stem, "", opts["input_prefix"], opts["label_prefix"], words, sizes)
    return Dataset(info, rows, order[:cal], order[cal:demo], order[demo:])


def _split_sizes(sizes, n_rows: int) -> tuple[int, int, int]:
    if sizes is None:
        return default_split_sizes(n_rows)
    if (
        not isinstance(sizes, (list, tuple))
        or len(sizes) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)
    ):
        raise UserError(f"split sizes {sizes!r} must be three non-negative integers (calibration, demo, test)")
    if sum(sizes) > n_rows:
        raise UserError(f"split sizes {list(sizes)} need {sum(sizes)} rows but the file has {n_rows}; lower them")
    return tuple(sizes)


def load_any(spec: str) -> Dataset:
    """A StaICC dataset by name or index, or a user file (one of SUFFIXES) by path: `--dataset`'s value."""
    if Path(spec).suffix.lower() in SUFFIXES:
        return load_user_dataset(spec)
    from .staicc import load_dataset

    return load_dataset(spec)
