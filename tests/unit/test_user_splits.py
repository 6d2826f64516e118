"""User data, honestly: split sizes and distinct test queries described, thin test sets warned about, and
users' own splits (a split column, or separate train / test files) with the loader's hostile-input guarantees."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abft import data as D
from abft.cli.flags import worded
from abft.data import userdata
from abft.data.splits import describe_splits, splits_summary, splits_warning
from abft.errors import UserError


def _csv(path: Path, rows, header="text,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int, start: int = 0, split: str | None = None):
    return [(f"t{i}", "ab"[i % 2], *([split] if split else [])) for i in range(start, start + n)]


def _texts(ds, split: str) -> list[str]:
    return [ds.rows[i][0] for i in getattr(ds, split)]


# ----------------------------------------------------------------------------------- describing splits
def test_forty_rows_are_described_and_warned_about(tmp_path):
    """The issue's case: 40 rows -> 7 / 30 / 3, and 16 test prompts are 3 queries asked again and again."""
    ds = D.load_user_dataset(_csv(tmp_path / "reviews.csv", _rows(40)))
    desc = describe_splits(ds, test_samples=16)
    assert desc == {
        "dataset": "reviews",
        "made_by": "seeded",
        "calibration": 7,
        "demonstration": 30,
        "test": 3,
        "test_distinct_queries": 3,
        "test_queries_in_other_splits": 0,
        "test_prompts": 16,
        "test_prompt_queries": 3,
        "prompts_per_query": 5.33,
    }
    assert json.loads(json.dumps(desc)) == desc  # for config.json / metrics.json
    line = splits_summary(desc)
    assert line == (
        "data reviews (seeded split of the file): 7 calibration / 30 demonstration / 3 test rows, "
        "3 distinct test queries; 16 test prompts ask 3 of them (5.33 per query)"
    )
    warning = splits_warning(desc)
    assert "\n" not in warning and warning.startswith("reviews: only 3 distinct test queries (fewer than 50)")
    assert "reuse 3 queries (5.33 each" in warning and "lower test_samples toward 6" in warning
    assert "lower --test-samples toward 6" in worded(warning)  # as the CLI prints it


def test_duplicate_texts_count_once_and_leaks_are_named(tmp_path):
    rows = [("same", "a", "test"), ("same", "b", "test"), ("other", "a", "test"), ("other", "b", "calibration")]
    rows += [(f"d{i}", "ab"[i % 2], "demonstration") for i in range(3)]
    ds = D.load_user_dataset(_csv(tmp_path / "d.csv", rows, "text,label,split"))
    desc = describe_splits(ds, test_samples=3)
    assert (desc["test"], desc["test_distinct_queries"], desc["test_prompt_queries"]) == (3, 2, 2)
    assert desc["test_queries_in_other_splits"] == 1  # "other" is a calibration row too
    assert "1 test queries also appear in the calibration or demonstration split" in splits_warning(desc)


def test_enough_distinct_queries_asked_at_most_twice_is_not_warned_about(tmp_path):
    ds = D.load_user_dataset(
        _csv(tmp_path / "d.csv", _rows(100, split="test") + _rows(20, 100, "train"), "text,label,split")
    )
    assert splits_warning(describe_splits(ds, test_samples=200)) is None  # StaICC's own reuse: 2 each
    assert "reuse 100 queries (2.01 each" in splits_warning(describe_splits(ds, test_samples=201))
    assert "only 40 distinct test queries" in splits_warning(describe_splits(ds, test_samples=40))
    assert splits_warning(describe_splits(ds)) is None  # no prompts given: the split alone


def test_staicc_dataset_is_described_without_noise():
    desc = describe_splits(D.load_dataset("trec"), test_samples=1024)
    assert (desc["made_by"], desc["calibration"], desc["demonstration"], desc["test"]) == ("staicc", 1024, 4096, 512)
    assert desc["test_distinct_queries"] == 512 and desc["prompts_per_query"] == 2.0
    assert desc["test_queries_in_other_splits"] > 0  # StaICC's TREC split has a few: recorded ...
    assert splits_warning(desc) is None  # ... not warned about (a fixed benchmark split)


# ------------------------------------------------------------------------------------ a split column
def test_split_column_gives_the_splits_in_file_order(tmp_path):
    rows = _rows(3, 0, "calibration") + _rows(4, 3, "Demonstration ") + _rows(2, 7, "TEST") + _rows(1, 9, "demo")
    ds = D.load_user_dataset(_csv(tmp_path / "d.csv", rows, "text,label,split"))
    assert ds.made_by == "column" and ds.info.split_sizes == (3, 5, 2)
    assert _texts(ds, "calibration") == ["t0", "t1", "t2"]
    assert _texts(ds, "demonstration") == ["t3", "t4", "t5", "t6", "t9"]
    assert _texts(ds, "test") == ["t7", "t8"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y, "part": s}) + "\n" for t, y, s in rows))
    again = D.load_user_dataset(jsonl, split_column="part")
    assert (again.rows, again.calibration, again.demonstration, again.test) == (
        ds.rows,
        ds.calibration,
        ds.demonstration,
        ds.test,
    )


def test_train_and_test_values_cut_train_in_staicc_proportions(tmp_path):
    ds = D.load_user_dataset(
        _csv(tmp_path / "d.csv", _rows(50, 0, "train") + _rows(60, 50, "test"), "text,label,split")
    )
    assert ds.info.split_sizes == (10, 40, 60)  # 50 train rows at 1024 : 4096
    assert set(_texts(ds, "calibration") + _texts(ds, "demonstration")) == {f"t{i}" for i in range(50)}
    assert _texts(ds, "test") == [f"t{i}" for i in range(50, 110)]
    other = D.load_user_dataset(tmp_path / "d.csv", seed=1)
    assert other.calibration != ds.calibration and other.test == ds.test
    assert userdata.train_cut(2) == 1 and userdata.train_cut(3) == 1 and userdata.train_cut(5120) == 1024


@pytest.mark.parametrize(
    "rows, kwargs, match",
    [
        (_rows(3, 0, "train") + _rows(2, 3, "validation"), {}, "row 4: 'split' is 'validation'; use calibration"),
        (_rows(3, 0, "train") + [("x", "a", "")], {}, "row 4: 'split' is ''"),
        (_rows(3, 0, "train") + _rows(2, 3, "calibration") + _rows(2, 5, "test"), {}, "mixes 'train' with"),
        (_rows(5, 0, "train"), {}, "no test rows"),
        (_rows(2, 0, "calibration") + _rows(2, 2, "test"), {}, "no demonstration rows"),
        (_rows(1, 0, "train") + _rows(2, 1, "test"), {}, "1 train row(s); train needs at least 2"),
        (_rows(4, 0, "train") + _rows(2, 4, "test"), {"split_sizes": (1, 1, 1)}, "split sizes were given"),
    ],
)
def test_split_column_errors(tmp_path, rows, kwargs, match):
    with pytest.raises(UserError, match=re.escape(match)) as e:
        D.load_user_dataset(_csv(tmp_path / "d.csv", rows, "text,label,split"), **kwargs)
    assert "\n" not in str(e.value)


def test_split_column_in_a_short_csv_row_and_jsonl_without_it(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,split\na,x,train\nb,y\n")
    with pytest.raises(UserError, match="row 2: 'split' is None"):
        D.load_user_dataset(path)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "x", "split": "test"}\n{"text": "b", "label": "y"}\n')
    with pytest.raises(UserError, match="row 2: 'split' is None"):
        D.load_user_dataset(jsonl)


# --------------------------------------------------------------------------------- separate files
def test_train_and_test_files_as_a_string_a_mapping_and_a_spec(tmp_path, monkeypatch):
    _csv(tmp_path / "train.csv", _rows(20))
    jsonl = tmp_path / "held out.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"q{i}", "label": "ab"[i % 2]}) + "\n" for i in range(6)))
    monkeypatch.chdir(tmp_path)
    ds = D.load_any("train=train.csv,test=held out.jsonl")
    assert ds.made_by == "files" and ds.info.name == "train" and ds.info.split_sizes == (4, 16, 6)
    assert _texts(ds, "test") == [f"q{i}" for i in range(6)]
    assert sorted(_texts(ds, "calibration") + _texts(ds, "demonstration")) == sorted(f"t{i}" for i in range(20))
    assert ds.info.label_words == ("a", "b")
    same = [D.load_any({"test": "held out.jsonl", "train": "train.csv"})]
    same.append(D.load_any("test=held out.jsonl,train=train.csv"))
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "s.yaml"
    spec.write_text("train: ../train.csv\ntest: '../held out.jsonl'\n")  # relative to the spec file
    same += [D.load_any(str(spec)), D.load_user_dataset(spec=spec)]
    for other in same:
        assert (other.rows, other.calibration, other.demonstration, other.test) == (
            ds.rows,
            ds.calibration,
            ds.demonstration,
            ds.test,
        )
    assert D.parse_file_spec(D.format_file_spec({"test": "b,c.csv", "train": "a.csv"})) == {
        "train": "a.csv",
        "test": "b,c.csv",
    }
    assert D.parse_file_spec("sst2") is None and D.parse_file_spec("data/train=x.csv") is None
    assert D.dataset_stem("test=held out.jsonl,train=data/train.csv") == "train"  # not "train.csv,test=held out"
    assert D.dataset_stem("calibration=c.csv,demonstration=d.csv,test=t.csv") == "c"
    assert D.dataset_stem("data/reviews.csv") == "reviews" and D.dataset_stem("sst2") == "sst2"


def test_calibration_demonstration_and_test_files(tmp_path):
    for name, n in (("cal", 3), ("demo", 5), ("test", 4)):
        _csv(tmp_path / f"{name}.csv", [(f"{name}{i}", "ab"[i % 2]) for i in range(n)])
    ds = D.load_user_dataset(
        spec={
            "calibration": str(tmp_path / "cal.csv"),
            "demonstration": str(tmp_path / "demo.csv"),
            "test": str(tmp_path / "test.csv"),
        }
    )
    assert ds.info.name == "cal" and ds.info.split_sizes == (3, 5, 4)
    assert _texts(ds, "demonstration") == [f"demo{i}" for i in range(5)]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("train=tr.csv", "need a test file"),
        ("test=te.csv", "lack ['calibration', 'demonstration']"),
        ("calibration=tr.csv,test=te.csv", "lack ['demonstration']"),
        ("train=tr.csv,calibration=tr.csv,test=te.csv", "not both"),
        ("train=tr.csv,test=te.csv,test=te.csv", "names 'test' twice"),
        ("train=,test=te.csv", "'train' must be a string naming a data file"),
        ("train=missing.csv,test=te.csv", "cannot read missing.csv"),
        ("train=split.csv,test=te.csv", "is a split file but has a 'split' column"),
        ("train=tr.csv,test=bad.jsonl", "bad.jsonl line 2 is not valid JSON"),
        ("train=tr.csv,test=dup.csv", "has the column(s) ['text'] more than once"),
        ("train=tr.csv,test=words.csv", "words.csv row 1: label 'c' is not one of the label words ['a', 'b']"),
        ("train=s.yaml,test=te.csv", "is a spec; a split file must be a data file"),
        ("train=tr.txt,test=te.csv", "unsupported type"),
    ],
)
def test_split_file_errors(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "tr.csv", _rows(10))
    _csv(tmp_path / "te.csv", _rows(3, 10))
    _csv(tmp_path / "split.csv", _rows(4, 0, "train"), "text,label,split")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "a"}\n{oops\n')
    _csv(tmp_path / "dup.csv", [("a", "a", "b")], "text,label,text")
    (tmp_path / "s.yaml").write_text("path: tr.csv\n")
    (tmp_path / "tr.txt").write_text("text,label\n")
    _csv(tmp_path / "words.csv", [("x", "c")])
    kwargs = {"label_words": ["a", "b"]} if "words" in spec else {}
    with pytest.raises(UserError, match=re.escape(match)) as e:
        D.load_user_dataset(spec=D.parse_file_spec(spec), **kwargs) if kwargs else D.load_any(spec)
    assert "\n" not in str(e.value)


def test_spec_errors_for_split_files(tmp_path):
    _csv(tmp_path / "tr.csv", _rows(10))
    both = tmp_path / "both.yaml"
    both.write_text("path: tr.csv\ntest: tr.csv\n")
    with pytest.raises(UserError, match="both 'path' and split files"):
        D.load_user_dataset(both)
    with pytest.raises(UserError, match="either 'path' or split files"):
        D.load_user_dataset(spec={"path": str(tmp_path / "tr.csv"), "test": str(tmp_path / "tr.csv")})
    with pytest.raises(UserError, match="cannot be combined with separate split files"):
        D.load_user_dataset(
            spec={"train": str(tmp_path / "tr.csv"), "test": str(tmp_path / "tr.csv"), "split_sizes": [1, 1, 1]}
        )
    with pytest.raises(UserError, match="'test' must be a string"):
        D.load_user_dataset(spec={"train": str(tmp_path / "tr.csv"), "test": 5})


def test_fifo_and_huge_split_files_are_refused_without_reading(tmp_path, monkeypatch):
    _csv(tmp_path / "tr.csv", _rows(10))
    fifo = tmp_path / "te.csv"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is not a regular file"):
        D.load_any(f"train={tmp_path / 'tr.csv'},test={fifo}")
    monkeypatch.setattr(userdata, "MAX_FILE_BYTES", 50)
    with pytest.raises(UserError, match=r"tr.csv has \d+ bytes, more than abft reads \(50\); use a sample"):
        D.load_any(f"train={tmp_path / 'tr.csv'},test={tmp_path / 'tr.csv'}")
    with pytest.raises(UserError, match="more than abft reads"):
        D.load_user_dataset(tmp_path / "tr.csv")


def test_a_file_whose_name_looks_like_a_file_spec_is_read_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "test=odd.csv", _rows(10))
    assert D.load_any("test=odd.csv").made_by == "seeded"


_SPLIT_CELLS = ["train", "test", "calibration", "demonstration", "demo", " TEST", "", "dev", "0", '"', ","]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.lists(st.sampled_from(_SPLIT_CELLS), max_size=12), seed=st.integers(0, 3))
def test_fuzz_split_column(cells, seed):
    """Any mix of split values: a dataset whose three non-empty splits partition the rows, or one UserError line."""
    with tempfile.TemporaryDirectory() as d:
        path = _csv(Path(d) / "d.csv", [(f"t{i}", "ab"[i % 2], c) for i, c in enumerate(cells)], "text,label,split")
        try:
            ds = D.load_user_dataset(path, seed=seed)
        except UserError as e:
            assert str(e) and "\n" not in str(e)
            return
    c, d, t = ds.calibration, ds.demonstration, ds.test
    assert c and d and t and sorted(c + d + t) == list(range(len(ds.rows)))
    assert (len(c), len(d), len(t)) == ds.info.split_sizes


def test_a_run_prints_and_records_its_splits_and_what_it_ran_on(capsys, tmp_path, tiny_word_model_dir, monkeypatch):
    """`abft evaluate` on split files: the split line and the warning in the log, data_splits in metrics.json,
    the device, dtype and versions in config.json, and the run named after the train file."""
    import abft.report.html
    from abft.cli import main

    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    monkeypatch.setattr(abft.report.html, "write_report", lambda path: Path(path) / "report.html")
    monkeypatch.chdir(tmp_path)
    words = ("negative", "positive")  # the tiny tokenizer's words
    train = _csv(tmp_path / "mytrain.csv", [(f"w{i % 20} w{i * 7 % 20}", words[i % 2]) for i in range(30)])
    test = _csv(tmp_path / "mytest.csv", [(f"w{i} w{i + 3}", words[i % 2]) for i in range(3)])
    argv = ["evaluate", "--model", str(tiny_word_model_dir), "--dataset", f"train={train},test={test}"]
    assert main([*argv, "--k", "2", "--test-samples", "6"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"data .*: \d+ calibration / \d+ demonstration / 3 test rows, 3 distinct test queries", out)
    assert re.search(r"warning: mytrain: only 3 distinct test queries", out)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("mytrain-eval-")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_splits"]["test"] == 3 and metrics["data_splits"]["test_prompts"] == 6
    runtime = json.loads((run / "config.json").read_text())["runtime"]
    assert runtime["device"] == "cpu" and runtime["dtype"] == "fp32"
    assert {"abft", "torch", "transformers"} <= set(runtime)
