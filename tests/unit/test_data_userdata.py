"""User datasets: CSV / TSV / JSONL / JSON files and JSON / YAML specs, their splits and their errors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abft import data as D
from abft.data.userdata import SUFFIXES, default_split_sizes
from abft.errors import UserError

ROWS = [("great fun", "positive"), ("boring", "negative"), ("a mess", "negative"), ("lovely", "positive")] * 5


def _csv(path: Path, rows=ROWS, header="text,label"):
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows), encoding="utf-8")
    return path


def _check_dataset(ds: D.Dataset):
    c, d, t = ds.calibration, ds.demonstration, ds.test
    assert (len(c), len(d), len(t)) == ds.info.split_sizes
    assert len(set(c + d + t)) == len(c + d + t) and all(0 <= i < len(ds.rows) for i in c + d + t)
    assert all(isinstance(x, str) and 0 <= y < len(ds.info.label_words) for x, y in ds.rows)


def test_csv_with_label_words_inferred(tmp_path):
    ds = D.load_user_dataset(_csv(tmp_path / "reviews.csv"))
    assert ds.info.label_words == ("negative", "positive")  # sorted distinct labels
    assert ds.info.name == "reviews" and ds.info.index == -1
    assert (ds.info.input_prefix, ds.info.label_prefix) == ("input: ", "label: ")
    assert ds.rows[:2] == [("great fun", 1), ("boring", 0)]
    assert ds.info.split_sizes == (3, 16, 1)  # 20 rows in StaICC's 1024 : 4096 : 512 proportions
    _check_dataset(ds)
    again = D.load_user_dataset(tmp_path / "reviews.csv")
    assert (again.calibration, again.test) == (ds.calibration, ds.test)
    other = D.load_user_dataset(tmp_path / "reviews.csv", seed=1)
    assert other.calibration + other.demonstration != ds.calibration + ds.demonstration


def test_jsonl_with_indices_and_words(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"sentence": f"s{i}", "y": i % 3}) for i in range(30)] + ["", "  "]
    path.write_text("\n".join(lines), encoding="utf-8")
    ds = D.load_user_dataset(path, text_column="sentence", label_column="y", label_words=["a", "b", "c"])
    assert ds.rows[4] == ("s4", 1) and len(ds.rows) == 30
    _check_dataset(ds)
    # labels may mix words and indices when the words are given
    path.write_text('{"text": "x", "label": "b"}\n{"text": 5, "label": "2"}\n{"text": "z", "label": 0}\n')
    assert D.load_user_dataset(path, label_words=("a", "b", "c")).rows == [("x", 1), ("5", 2), ("z", 0)]


def test_tsv_json_and_bom(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes("\ufefftext\tlabel\nhello, world\tpos\nbye\tneg\nok\tpos\n".encode())
    assert D.load_user_dataset(tsv).rows == [("hello, world", 1), ("bye", 0), ("ok", 1)]
    js = tmp_path / "d.json"
    js.write_text(json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": "x"}]))
    assert D.load_user_dataset(js).info.label_words == ("x", "y")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_dataset_option_reads_every_user_file_type(tmp_path, suffix):
    """--dataset (data.load_any) takes any file load_user_dataset reads, and StaICC names otherwise."""
    rows = [{"text": t, "label": y} for t, y in (("a", "x"), ("b", "y"), ("c", "x"))]
    path = tmp_path / f"d{suffix}"
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text("\n".join(["text" + sep + "label", *(r["text"] + sep + r["label"] for r in rows)]) + "\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        path.write_text("path: rows.jsonl\n")
    assert D.load_any(str(path)).rows == [("a", 0), ("b", 1), ("c", 0)]
    assert D.load_any("sst2").info.name == "sst2"


def test_specs(tmp_path):
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data" / "r.csv", header="review,sentiment")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "path: data/r.csv\ntext_column: review\nlabel_column: sentiment\n"
        "label_words: [negative, positive]\ninput_prefix: 'review: '\nlabel_prefix: 'sentiment: '\n"
        "split_sizes: [4, 10, 6]\n"
    )
    ds = D.load_user_dataset(spec)
    assert ds.info.input_prefix == "review: " and ds.info.split_sizes == (4, 10, 6)
    _check_dataset(ds)
    js = tmp_path / "spec.json"
    js.write_text(json.dumps({"path": "data/r.csv", "text_column": "review", "label_column": "sentiment"}))
    assert D.load_user_dataset(js).rows == ds.rows
    assert D.load_user_dataset(spec=js).rows == ds.rows
    as_dict = {"path": str(tmp_path / "data" / "r.csv"), "text_column": "review", "label_column": "sentiment"}
    assert D.load_user_dataset(spec=as_dict).rows == ds.rows


def test_large_file_gets_staicc_sizes(tmp_path):
    rows = [(f"row {i}", "ab"[i % 2]) for i in range(6000)]
    ds = D.load_user_dataset(_csv(tmp_path / "big.csv", rows))
    assert ds.info.split_sizes == (1024, 4096, 512)
    _check_dataset(ds)


def test_default_split_sizes():
    assert default_split_sizes(5632) == (1024, 4096, 512)
    assert default_split_sizes(100000) == (1024, 4096, 512)
    assert default_split_sizes(3) == (1, 1, 1)
    assert default_split_sizes(2816) == (512, 2048, 256)
    with pytest.raises(UserError, match="at least 3"):
        default_split_sizes(2)


@pytest.mark.parametrize(
    "content, kwargs, match",
    [
        ("", {}, "no data rows"),
        ("text,label\n", {}, "no data rows"),
        ("txt,label\na,b\n", {}, "no column 'text'"),
        ("text,label\na,x\nb,y\nc,z\n", {"label_words": ["x", "y"]}, "label 'z' is not one of"),
        ("text,label\na,0\nb,1\nc,1\n", {}, "look like indices"),
        ("text,label\na,x\nb,x\n", {}, "at least 2 distinct"),
        ("text,label\na,x\nb\nc,y\n", {}, "row 2 has no value for 'label'"),
        ("text,label\na,x\nb,y\nc,x\n", {"label_words": ["x", "x"]}, "at least 2 distinct"),
        ("text,label\na,x\nb,y\nc,x\n", {"split_sizes": (2, 2, 2)}, "need 6 rows"),
        ("text,label\na,x\nb,y\nc,x\n", {"split_sizes": (1, 1)}, "three non-negative"),
        ("text,label\na,x\nb,y\n", {}, "at least 3"),
    ],
)
def test_csv_errors(tmp_path, content, kwargs, match):
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        D.load_user_dataset(path, **kwargs)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("d.csv", b"text,label\n\xff\xfe,x\n", "not UTF-8"),
        ("d.jsonl", b'{"text": "a", "label": "x"}\n{oops}\n', "line 2 is not valid JSON"),
        ("d.jsonl", b"[1, 2]\n", "row 1 is not an object"),
        ("d.jsonl", b'{"text": null, "label": "x"}\n', "no value for 'text'"),
        ("d.jsonl", b'{"text": ["a"], "label": "x"}\n', "must be text"),
        ("d.jsonl", b'{"text": "a", "label": true}\n', "label word or index"),
        ("d.json", b'"just a string"', "list of objects"),
        ("d.json", b"{not json", "not valid JSON"),
        ("d.yaml", b"path: [unclosed", "not valid YAML"),
        ("d.yaml", b"path: x.csv\ncolour: red\n", "unknown spec keys"),
        ("d.yaml", b"text_column: t\n", "no 'path'"),
        ("d.yaml", b"path: 5\n", "'path' must be a string"),
        ("d.txt", b"text,label\n", "unsupported type"),
    ],
)
def test_file_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        D.load_user_dataset(path)


def test_missing_file_and_nothing_given(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        D.load_user_dataset(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="no data file"):
        D.load_user_dataset()


_SUFFIXES = st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".yaml", ".yml"])


def _load_or_user_error(suffix: str, content: bytes, **kwargs):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(content)
        try:
            ds = D.load_user_dataset(path, **kwargs)
        except UserError as e:
            assert str(e) and "\n" not in str(e)  # one line, for the CLI
            return None
        _check_dataset(ds)
        return ds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=_SUFFIXES, content=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(suffix, content):
    _load_or_user_error(suffix, content)


_cell = st.one_of(
    st.text(max_size=8), st.integers(-3, 5), st.floats(allow_nan=True), st.none(), st.booleans(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)  # fmt: skip
_record = st.dictionaries(st.sampled_from(["text", "label", "other", ""]), _cell, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.one_of(_record, _cell), max_size=8),
    words=st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=3)),
    as_csv=st.booleans(),
)
def test_fuzz_malformed_rows(records, words, as_csv):
    if as_csv:
        lines = ["text,label"] + [
            ",".join(str(v) for v in (r.values() if isinstance(r, dict) else [r])) for r in records
        ]
        content, suffix = "\n".join(lines).encode("utf-8", "surrogatepass"), ".csv"
    else:
        content = "\n".join(json.dumps(r) for r in records).encode("utf-8", "surrogatepass")
        suffix = ".jsonl"
    _load_or_user_error(suffix, content, label_words=words)


_CSV_PIECES = ["text", "label", "negative", "positive", "w1", "0", "1", "-1", ",", "\t", '"', "'", " ", "\n", "\r\n",
               "\r", "\ufeff", "\x00", "\u2028", "\u00e9", "\\", "#"]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(["text,label\n", "text\tlabel\n", "label,text\n", ""]),
    body=st.lists(st.sampled_from(_CSV_PIECES), max_size=60).map("".join),
    suffix=st.sampled_from([".csv", ".tsv"]),
    words=st.sampled_from([None, ["negative", "positive"], ["0", "1"]]),
)
def test_fuzz_csv_structure(header, body, suffix, words):
    """Quotes, delimiters, line ends, BOMs and NULs in every order: a dataset or one UserError line."""
    _load_or_user_error(suffix, (header + body).encode("utf-8"), label_words=words)


_spec_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 30), st.floats(), st.text(max_size=6),
    st.lists(st.one_of(st.integers(-1, 12), st.text(max_size=8)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
_spec_keys = st.sampled_from(["text_column", "label_column", "label_words", "input_prefix", "label_prefix",
                              "split_sizes", "seed", "path", "colour"])  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.dictionaries(_spec_keys, _spec_value, max_size=5),
    path=st.sampled_from(["d.csv", "missing.csv", "spec.yaml", "", None]),
    as_yaml=st.booleans(),
)
def test_fuzz_spec_files(spec, path, as_yaml):
    """Spec files with values of every type (and paths to a good file, no file, or the spec itself)."""
    import yaml

    if path is not None:
        spec["path"] = path
    with tempfile.TemporaryDirectory() as d:
        _csv(Path(d) / "d.csv")
        spec_path = Path(d) / ("spec.yaml" if as_yaml else "spec.json")
        spec_path.write_text(yaml.safe_dump(spec) if as_yaml else json.dumps(spec, allow_nan=True))
        try:
            ds = D.load_user_dataset(spec_path)
        except UserError as e:
            assert str(e) and "\n" not in str(e)
            return
        _check_dataset(ds)
