"""A user's own labelled data: CSV / TSV / JSONL / JSON file, or a JSON / YAML spec pointing at one or more.

    ds = load_user_dataset("reviews.csv", label_words=["negative", "positive"])
    ds = load_user_dataset("reviews.yaml")      # spec: {path, text_column, label_column, label_words, ...}
    ds = load_any("train=train.csv,test=test.csv")   # separate files (also a spec with train / test keys)

Files: `.csv` (header row), `.tsv`, `.jsonl` (one JSON object per line), `.json` (a list of objects),
UTF-8 (a BOM is fine), at most MAX_FILE_BYTES (1 GiB) each. Labels may be label words or label indices
(0-based); without `label_words` the labels must be words and the label words are their sorted distinct
values (over every file of the dataset).

Spec file (`.yaml`/`.yml`, or a `.json` object with a "path" key or split-file keys): keys path (relative
to the spec file), text_column, label_column, split_column, label_words, input_prefix, label_prefix,
split_sizes, seed, and the split files train, calibration, demonstration, test (relative to the spec
file; instead of path). Values in a spec take precedence over keyword arguments.

Splits (the three of every Dataset, as StaICC names them): calibration (ABFT's training queries and
their demonstrations), demonstration (the test prompts' demonstrations and the validation prompts) and
test (the test queries). They come from, in this order:
- separate files (`made_by` "files"): `train=A,test=B` (the string form, for --dataset; a path may not
  contain `,<key>=`) or a spec / mapping with those keys. `test` is the test split; `train` is every row
  abft may learn from or show as a demonstration, cut (seeded) into calibration and demonstration in
  StaICC's proportions 1024 : 4096 (at least one row each); or give `calibration` and `demonstration`
  files instead of `train`. Such a file may not have a split column.
- a split column (`made_by` "column"; default column name "split", `split_column` to rename it) whose
  values (case and outer spaces ignored) are calibration, demonstration (or demo) and test, or train and
  test with train cut as above. Every row names its split; train cannot be mixed with calibration or
  demonstration. `split_sizes` cannot be combined with it.
- otherwise (`made_by` "seeded") a seeded (`random.Random(seed)`, default 42) sample of the rows, cut into
  calibration first, then demonstration, then test. Sizes default to StaICC's 1024 / 4096 / 512 when the
  file has at least 5632 rows (extra rows are unused, as in StaICC); a smaller file is split in the same
  proportions (calibration and test N*1024/5632 and N*512/5632 rounded down but at least 1,
  demonstration the rest). `split_sizes` overrides this; UserError if it asks for more rows than the file has.
Rows a user assigns keep their file order within their split; every split needs at least one row.
data.splits.describe_splits says what came out (sizes, distinct test queries) and warns when it is thin.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from abft.errors import UserError

from .staicc import Dataset, DatasetInfo

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".yaml", ".yml")  # what load_user_dataset reads
MAX_FILE_BYTES = 1 << 30  # a data or spec file larger than this is refused before it is read
SPLITS = ("calibration", "demonstration", "test")  # Dataset's splits
FILE_KEYS = ("train", "calibration", "demonstration", "test")  # split files of a spec
_SPLIT_VALUES = {"calibration": "calibration", "demonstration": "demonstration", "demo": "demonstration",
                 "test": "test", "train": "train"}  # fmt: skip
_STD = (1024, 4096, 512)
_SPEC_KEYS = {"path", "text_column", "label_column", "split_column", "label_words", "input_prefix",
              "label_prefix", "split_sizes", "seed", *FILE_KEYS}  # fmt: skip
_FILE_SPEC = re.compile(r"(?:^|,)(" + "|".join(FILE_KEYS) + r")=")


def default_split_sizes(n_rows: int) -> tuple[int, int, int]:
    if n_rows >= sum(_STD):
        return _STD
    if n_rows < 3:
        raise UserError(f"the file has {n_rows} rows; it needs at least 3 (one per split)")
    cal = max(1, n_rows * _STD[0] // sum(_STD))
    test = max(1, n_rows * _STD[2] // sum(_STD))
    return cal, n_rows - cal - test, test


def train_cut(n_rows: int) -> int:
    """How many of `n_rows` train rows become calibration rows (StaICC's 1024 : 4096, at least 1 each)."""
    if n_rows < 2:
        raise UserError(f"{n_rows} train row(s); train needs at least 2 (a calibration and a demonstration row)")
    return min(n_rows - 1, max(1, n_rows * _STD[0] // (_STD[0] + _STD[1])))


def _read_text(path: Path) -> str:
    try:
        if path.exists() and not path.is_file():  # a FIFO or device would block the read forever
            raise UserError(f"{path} is not a regular file; pass a data file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"{path} has {size} bytes, more than abft reads ({MAX_FILE_BYTES}); use a sample of it")
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
    if suffix not in SUFFIXES:
        raise UserError(f"{path} has an unsupported type {suffix!r}; use {', '.join(SUFFIXES)}")
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
    data = _parse_structured(path, text)
    if isinstance(data, dict):
        return data
    if suffix == ".json" and isinstance(data, list):
        return data, None
    raise UserError(f"{path} must hold a list of objects or a spec mapping with a 'path' key")


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


def rows_from_examples(
    examples, label_words, text_key: str = "text", label_key: str = "label", source: str = "examples"
) -> list[tuple[str, int]]:
    """(text, label index) rows of in-memory examples: (text, label) pairs or mappings with `text_key` and
    `label_key` (a row of a Hugging Face datasets.Dataset is one); a label is a label word or its index."""
    words = _check_words(list(label_words) if isinstance(label_words, tuple) else label_words, "label_words")
    rows = []
    for i, example in enumerate(examples):
        where = f"{source}[{i}]"
        if isinstance(example, Mapping):
            missing = [key for key in (text_key, label_key) if key not in example]
            if missing:
                raise UserError(f"{where} has no {missing[0]!r} key; its keys are {sorted(example)}")
            text, label = example[text_key], example[label_key]
        elif isinstance(example, (tuple, list)) and len(example) == 2:
            text, label = example
        else:
            raise UserError(f"{where} is {type(example).__name__}; give (text, label) pairs or mappings")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: the text must be a non-empty string, got {text!r}")
        rows.append((text, _label_index(label, words, where)))
    return rows


def _check_words(words, source: str) -> tuple[str, ...]:
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise UserError(f"label words from {source} must be a list of strings")
    words = tuple(words)
    if len(words) < 2 or any(not w or w != w.strip() for w in words) or len(set(words)) != len(words):
        raise UserError(
            f"label words {list(words)} from {source}: give at least 2 distinct non-empty words without outer spaces"
        )
    return words


def _check_path(value, key: str, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"spec '{key}' must be a string naming a data file")
    if any(ord(c) < 32 for c in value):
        raise UserError(f"spec '{key}' {value!r} contains a control character; name the data file plainly")
    p = Path(value)
    return p if p.is_absolute() or base is None else base / p


def _check_spec(spec, base: Path | None) -> dict:
    if not isinstance(spec, Mapping):
        raise UserError("a dataset spec must be a mapping with a 'path' key or train / test file keys")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise UserError(f"unknown spec keys {sorted(map(str, unknown))}; allowed: {sorted(_SPEC_KEYS)}")
    spec = dict(spec)
    for key in ("path", *FILE_KEYS):
        if key in spec:
            spec[key] = _check_path(spec[key], key, base)
    for key in ("text_column", "label_column", "split_column", "input_prefix", "label_prefix"):
        if key in spec and not isinstance(spec[key], str):
            raise UserError(f"spec '{key}' must be a string")
    if "seed" in spec and (not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool)):
        raise UserError("spec 'seed' must be an integer")
    return spec


def parse_file_spec(text: str) -> dict[str, str] | None:
    """`train=A.csv,test=B.csv` -> {"train": "A.csv", "test": "B.csv"}; None for anything else (a name or path).

    Keys: train, calibration, demonstration, test, each at most once; a value runs to the next `,<key>=`,
    so a path may hold commas but not `,test=` etc. (use a spec file for such a path).
    """
    starts = list(_FILE_SPEC.finditer(text))
    if not starts or starts[0].start() != 0:
        return None
    out: dict[str, str] = {}
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        key, value = m.group(1), text[m.end() : nxt.start() if nxt else len(text)]
        if key in out:
            raise UserError(f"dataset spec {text!r} names '{key}' twice; give each split file once")
        out[key] = value
    return out


def format_file_spec(files: Mapping[str, str | Path]) -> str:
    """The string form parse_file_spec reads, e.g. for a CLI that has --train-file / --test-file flags."""
    return ",".join(f"{key}={files[key]}" for key in FILE_KEYS if files.get(key) is not None)


def dataset_stem(spec: str) -> str:
    """A short name for `--dataset`'s value without loading it (run directory names): the train (or
    calibration) file's stem for split files, else the file's stem, or the StaICC name as given."""
    files = None if Path(spec).is_file() else parse_file_spec(spec)
    if files:
        return Path(files.get("train") or files.get("calibration") or files.get("test") or "data").stem
    return Path(spec).stem


def load_user_dataset(
    path: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_words: list[str] | tuple[str, ...] | None = None,
    input_prefix: str = "input: ",
    label_prefix: str = "label: ",
    spec: Mapping | str | Path | None = None,
    split_sizes: tuple[int, int, int] | None = None,
    seed: int = 42,
    split_column: str = "split",
) -> Dataset:
    """A Dataset from a user's file(s) (see the module docstring); UserError on any problem in them."""
    opts = {
        "path": path,
        "text_column": text_column,
        "label_column": label_column,
        "split_column": split_column,
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
    files = {key: Path(opts[key]) for key in FILE_KEYS if opts.get(key) is not None}
    if files:
        if opts["path"] is not None:
            raise UserError("a dataset spec gives either 'path' or split files (train / test ...), not both")
        return _from_files(files, opts)
    if opts["path"] is None:
        raise UserError("no data file given; pass a path or a spec with a 'path' key")
    data_path = Path(opts["path"])
    loaded = _read_data(data_path)
    if isinstance(loaded, dict):  # the path is itself a spec file
        spec_opts = _check_spec(loaded, data_path.parent)
        files = {key: spec_opts[key] for key in FILE_KEYS if key in spec_opts}
        if files and "path" in spec_opts:
            raise UserError(f"spec {data_path} gives both 'path' and split files; keep one")
        if not files and "path" not in spec_opts:
            raise UserError(f"spec {data_path} has no 'path' key; add the data file's path")
        opts.update(spec_opts)
        if files:
            return _from_files(files, opts)
        data_path = Path(opts["path"])
        loaded = _read_data(data_path)
        if isinstance(loaded, dict):
            raise UserError(f"{data_path} is a spec too; a spec's 'path' must name a data file")
    texts, raw, splits = _rows(data_path, loaded, opts, allow_split=True)
    words = _label_words(opts["label_words"], raw, str(data_path))
    rows = _indexed(texts, raw, words, [data_path] * len(texts), list(range(1, len(texts) + 1)))
    if splits is not None:
        if opts["split_sizes"] is not None:
            raise UserError(
                f"{data_path} has a '{opts['split_column']}' column and split sizes were given; use one of them"
            )
        cal, demo, test = _assigned(splits, opts["seed"], str(data_path))
        made_by = "column"
    else:
        sizes = _split_sizes(opts["split_sizes"], len(rows))
        order = random.Random(opts["seed"]).sample(range(len(rows)), sum(sizes))
        cal, demo, test = order[: sizes[0]], order[sizes[0] : sizes[0] + sizes[1]], order[sizes[0] + sizes[1] :]
        made_by = "seeded"
    return _dataset(data_path.stem, opts, words, rows, (cal, demo, test), made_by)


def _dataset(name: str, opts: dict, words, rows, splits: tuple[list[int], list[int], list[int]], made_by: str):
    sizes = tuple(len(s) for s in splits)
    info = DatasetInfo(-1, name, "", opts["input_prefix"], opts["label_prefix"], words, sizes)
    return Dataset(info, rows, *splits, made_by=made_by)


def _rows(path: Path, loaded, opts: dict, allow_split: bool) -> tuple[list[str], list, list[str] | None]:
    """(texts, raw labels, split values or None without a split column) of one data file's records."""
    if isinstance(loaded, dict):
        raise UserError(f"{path} is a spec; a split file must be a data file")
    records, header = loaded
    if not records:
        raise UserError(f"{path} has no data rows; add some")
    tcol, lcol, scol = opts["text_column"], opts["label_column"], opts["split_column"]
    if header is not None:
        for col in (tcol, lcol):
            if col not in header:
                raise UserError(f"{path} has no column '{col}' (columns: {header}); name the right column")
        has_split = scol in header
    else:
        has_split = any(isinstance(rec, dict) and scol in rec for rec in records)
    if has_split and not allow_split:
        raise UserError(f"{path} is a split file but has a '{scol}' column; drop the column or pass the file alone")
    texts, raw, splits = [], [], []
    for n, rec in enumerate(records, 1):
        where = f"{path} row {n}"
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
        if has_split:
            splits.append(_split_value(rec.get(scol), scol, where))
        texts.append(t)
        raw.append(y)
    empty = sum(1 for t in texts if not t.strip())
    if empty:  # legal (a content-free query), but usually a wrong column or a broken export
        print(f"abft: warning: {path}: {empty} of {len(texts)} texts in '{tcol}' are empty", file=sys.stderr)
    return texts, raw, splits if has_split else None


def _split_value(value, column: str, where: str) -> str:
    name = value.strip().lower() if isinstance(value, str) else None
    if name not in _SPLIT_VALUES:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"{where}: '{column}' is {shown}; use calibration, demonstration or test (or train and test)")
    return _SPLIT_VALUES[name]


def _label_words(given, raw: list, source: str) -> tuple[str, ...]:
    if given is not None:
        return _check_words(given, "the label words option")
    if any(not isinstance(y, str) or y.strip().lstrip("-").isdigit() for y in raw):
        raise UserError(f"{source}: labels look like indices; give the label words (one per index)")
    return _check_words(sorted({y.strip() for y in raw}), source)


def _indexed(texts, raw, words, paths, numbers) -> list[tuple[str, int]]:
    return [(t, _label_index(y, words, f"{p} row {n}")) for t, y, p, n in zip(texts, raw, paths, numbers, strict=True)]


def _assigned(splits: list[str], seed: int, source: str) -> tuple[list[int], list[int], list[int]]:
    """Row indices of calibration, demonstration, test from each row's split name (`train` cut, seeded)."""
    by = {name: [i for i, s in enumerate(splits) if s == name] for name in (*SPLITS, "train")}
    if by["train"] and (by["calibration"] or by["demonstration"]):
        raise UserError(
            f"{source} mixes 'train' with 'calibration' / 'demonstration'; "
            "use train and test, or calibration, demonstration and test"
        )
    if by["train"]:
        pool = random.Random(seed).sample(by["train"], len(by["train"]))
        cut = train_cut(len(pool))
        by["calibration"], by["demonstration"] = pool[:cut], pool[cut:]
    for name in SPLITS:
        if not by[name]:
            hint = "train and test" if name != "test" else "test"
            raise UserError(f"{source} has no {name} rows; every split needs at least one (give {hint} rows)")
    return by["calibration"], by["demonstration"], by["test"]


def _from_files(files: dict[str, Path], opts: dict) -> Dataset:
    """A Dataset from separate split files: test + (train, or calibration + demonstration)."""
    keys = set(files)
    if "test" not in keys:
        raise UserError("separate split files need a test file (test=...); or give one file with a split column")
    if "train" in keys and keys & {"calibration", "demonstration"}:
        raise UserError("give a train file, or calibration and demonstration files, not both")
    if "train" not in keys and keys != {"calibration", "demonstration", "test"}:
        missing = sorted({"calibration", "demonstration"} - keys)
        raise UserError(f"split files lack {missing}; give train=... (cut into both) or both files")
    if opts["split_sizes"] is not None:
        raise UserError("split sizes cannot be combined with separate split files; drop split_sizes")
    texts, raw, splits, paths, numbers = [], [], [], [], []
    for key in FILE_KEYS:  # a fixed order: rows are the same whatever order the spec named the files in
        if key in files:
            t, y, _ = _rows(files[key], _read_data(files[key]), opts, allow_split=False)
            texts += t
            raw += y
            splits += [key] * len(t)
            paths += [files[key]] * len(t)
            numbers += range(1, len(t) + 1)
    source = " + ".join(str(files[key]) for key in FILE_KEYS if key in files)
    words = _label_words(opts["label_words"], raw, source)
    rows = _indexed(texts, raw, words, paths, numbers)
    name = files.get("train", files.get("calibration")).stem
    return _dataset(name, opts, words, rows, _assigned(splits, opts["seed"], source), "files")


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


def load_any(spec: str | Path | Mapping) -> Dataset:
    """`--dataset`'s value: a StaICC dataset by name or index, a user file (one of SUFFIXES) by path,
    separate split files as `train=A,test=B` (parse_file_spec), or a spec mapping (load_user_dataset)."""
    if isinstance(spec, Mapping):
        return load_user_dataset(spec=spec)
    text = str(spec)
    files = None if Path(text).is_file() else parse_file_spec(text)  # a file of that odd name wins
    if files is not None:
        return load_user_dataset(spec=files)
    if Path(text).suffix.lower() in SUFFIXES:
        return load_user_dataset(text)
    from .staicc import load_dataset

    return load_dataset(text)
