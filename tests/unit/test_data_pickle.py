"""The restricted unpickler: StaICC files load, anything with a global is refused without running it."""

from __future__ import annotations

import os
import pickle

import pytest

from abft import data as D
from abft.errors import UserError


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): creates the file
        return (open, (str(self.marker), "w"))


def test_global_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([(["text"], 0), _Payload(marker)], protocol=4)
    path = tmp_path / "evil.dataset"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=r"contains a global \((io|builtins)\.open\)"):
        D.read_dataset_file(path)
    assert not marker.exists()
    # the same bytes through the plain unpickler do run code: the test payload is real
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_reference_is_refused(protocol):
    with pytest.raises(UserError, match="contains a global"):
        D.restricted_loads(pickle.dumps(os.system, protocol=protocol))


def test_primitive_pickle_round_trips(tmp_path):
    rows = [(["a b "], 0), (["c", "d"], 1)]
    path = tmp_path / "ok.dataset"
    path.write_bytes(pickle.dumps(rows, protocol=4))
    assert D.read_dataset_file(path, n_labels=2) == [("a b ", 0), ("c d", 1)]


@pytest.mark.parametrize(
    "obj, match",
    [({"a": 1}, "not a list"), ([("a", 0, 1)], "not a list"), ([([1], 0)], "not a list"),
     ([(["a"], "0")], "not a list"), ([(["a"], True)], "not a list"), ([(["a"], 5)], "label 5 outside")],
)  # fmt: skip
def test_malformed_content(tmp_path, obj, match):
    path = tmp_path / "bad.dataset"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(UserError, match=match):
        D.read_dataset_file(path, n_labels=2)


@pytest.mark.parametrize("blob", [b"", b"garbage", pickle.dumps([1, 2])[:-3], b"\x80\x04P0\n."])
def test_truncated_or_garbage_pickle(blob):
    with pytest.raises(UserError):
        D.restricted_loads(blob)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        D.read_dataset_file(tmp_path / "nope.dataset")
