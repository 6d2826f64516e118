"""The restricted unpickler: StaICC files load, anything with a global is refused without running it."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------- fuzzing (hypothesis)
_CALLED: list = []


def _side_effect(*args):
    """What a malicious pickle would call; any call is recorded."""
    _CALLED.append(args)
    return args


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)


def _only_plain(obj, seen=None) -> bool:
    seen = set() if seen is None else seen
    if id(obj) in seen:  # memo references can build cycles
        return True
    seen.add(id(obj))
    if type(obj) not in _PLAIN:
        return False
    if isinstance(obj, dict):
        return all(_only_plain(k, seen) and _only_plain(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return all(_only_plain(x, seen) for x in obj)
    return True


def _restricted_or_user_error(blob: bytes):
    """Arbitrary bytes -> plain data or UserError (one line); never another exception, never a call."""
    try:
        obj = D.restricted_loads(blob)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert _only_plain(obj), type(obj)
    return obj


_MOD, _NAME = __name__.encode(), b"_side_effect"
_CALLS = [  # every opcode that imports or calls something, each aimed at _side_effect
    b"c" + _MOD + b"\n" + _NAME + b"\n(tR",  # GLOBAL + REDUCE
    b"\x8c" + bytes([len(_MOD)]) + _MOD + b"\x8c" + bytes([len(_NAME)]) + _NAME + b"\x93)R",  # STACK_GLOBAL
    b"(i" + _MOD + b"\n" + _NAME + b"\n",  # INST
    b"(c" + _MOD + b"\n" + _NAME + b"\no",  # OBJ
    b"c" + _MOD + b"\n" + _NAME + b"\n)\x81",  # NEWOBJ
    b"c" + _MOD + b"\n" + _NAME + b"\n)}\x92",  # NEWOBJ_EX
    b"\x82\x01",  # EXT1 (copyreg extension registry)
    b"Pfoo\n",  # PERSID
    b"\x97",  # NEXT_BUFFER (out-of-band data)
    b"c" + b"builtins\neval\n(V_side_effect()\ntR",  # eval of a string
]
_plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


def test_every_calling_opcode_is_refused_and_the_payload_is_real():
    for snippet in _CALLS:
        for blob in (b"\x80\x02" + snippet + b".", b"\x80\x04(" + snippet + b"l."):
            _CALLED.clear()
            with pytest.raises(UserError):
                D.restricted_loads(blob)
            assert not _CALLED
    _CALLED.clear()
    pickle.loads(b"\x80\x02" + _CALLS[0] + b".")  # the plain unpickler does call it
    assert _CALLED


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(blob):
    _restricted_or_user_error(blob)
    _restricted_or_user_error(b"\x80\x04" + blob)  # past the protocol header


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_plain_data,
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    call=st.one_of(st.none(), st.sampled_from(_CALLS)),
    where=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_mutated_pickles(data, protocol, call, where, flips, cut):
    """Valid pickles of plain data, with a call spliced in, bytes flipped and the end cut: plain data comes
    back unchanged or the result is a UserError, and nothing is ever called."""
    blob = bytearray(pickle.dumps(data, protocol=protocol))
    if not call and not flips and cut is None and protocol >= 3:  # 0-2 pickle bytes via a global (refused)
        assert D.restricted_loads(bytes(blob)) == data
    if call:
        at = int(where * len(blob))
        blob[at:at] = call
    for pos, value in flips:
        blob[min(int(pos * len(blob)), len(blob) - 1)] = value
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
    _CALLED.clear()
    _restricted_or_user_error(bytes(blob))
    assert not _CALLED


_cells = st.one_of(
    st.text(max_size=4), st.integers(-2, 4), st.booleans(), st.none(), st.floats(), st.binary(max_size=2)
)
_dataset_like = st.one_of(
    st.lists(st.tuples(st.one_of(st.lists(_cells, max_size=2), _cells), _cells), max_size=4),
    st.lists(st.lists(_cells, max_size=3), max_size=3),
    _plain_data,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(obj=_dataset_like, n_labels=st.integers(1, 4))
def test_fuzz_dataset_file_shapes(tmp_path, obj, n_labels):
    """Any plain pickle as a StaICC file: (text, label) rows with labels in range, or UserError."""
    path = tmp_path / "f.dataset"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    try:
        rows = D.read_dataset_file(path, n_labels=n_labels)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(t, str) and isinstance(y, int) and 0 <= y < n_labels for t, y in rows)
