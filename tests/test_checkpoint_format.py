"""Checkpoint files from outside: every truncation, bit flip, forged header or random file is
refused with a clear error, never half-loaded (docs/reliability.md)."""

import json
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gadei import checkpoint
from tests.helpers import FUZZ

ROOT = Path(__file__).resolve().parents[1]


# ---- checkpoints ------------------------------------------------------------------------------
def _write_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    weights = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)}
    state = {"m": np.full(17, 2.5, np.float32), "step": np.array([7], np.int64)}
    meta = {"version": 3, "ledger": {"amax": [1, 2]}, "optimizer": "sgd"}
    path = checkpoint.save(tmp_path / "ck", weights, state, meta)
    return path, path.read_bytes()


def _seal(body: bytes) -> bytes:
    """`body` with a correct sha256 trailer: damage that the checksum cannot catch."""
    import hashlib
    return body + hashlib.sha256(body).digest()


def _crafted(header: object, arrays: bytes = b"", hlen: int | None = None) -> bytes:
    """A checkpoint with a valid checksum around an arbitrary (msgpack) header."""
    blob = msgpack.packb(header)
    head = checkpoint.MAGIC + struct.pack("<Q", len(blob) if hlen is None else hlen) + blob
    pad = (-len(head)) % checkpoint.ALIGN
    return _seal(head + bytes(pad) + arrays)


def _load_bytes(tmp_path: Path, data: bytes):
    p = tmp_path / "fuzzed"
    p.write_bytes(data)
    return checkpoint.load(p)


def _must_reject(tmp_path: Path, data: bytes) -> None:
    try:
        got = _load_bytes(tmp_path, data)
    except checkpoint.CheckpointError as e:
        assert str(e) and "fuzzed" in str(e), f"the message should name the file: {e}"
        return
    pytest.fail(f"damaged checkpoint accepted: {json.dumps({k: sorted(v) for k, v in got.items() if isinstance(v, dict)})}")


def test_checkpoint_round_trip(tmp_path):
    path, _ = _write_checkpoint(tmp_path)
    ck = checkpoint.load(path)
    assert ck["weights"]["w"].shape == (3, 4) and ck["state"]["step"][0] == 7
    assert ck["meta"]["version"] == 3


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_checkpoint_truncated_is_refused(tmp_path_factory, cut):
    tmp = tmp_path_factory.mktemp("trunc")
    _, data = _write_checkpoint(tmp)
    assume(cut < len(data))
    _must_reject(tmp, data[:cut])


@FUZZ
@given(pos=st.integers(min_value=0, max_value=10_000), bit=st.integers(min_value=0, max_value=7))
def test_checkpoint_bit_flip_is_refused(tmp_path_factory, pos, bit):
    tmp = tmp_path_factory.mktemp("flip")
    _, data = _write_checkpoint(tmp)
    pos %= len(data)
    _must_reject(tmp, data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:])


@FUZZ
@given(version=st.integers(min_value=0, max_value=255).filter(lambda v: v != checkpoint.MAGIC[7]))
def test_checkpoint_other_format_version_is_refused(tmp_path_factory, version):
    tmp = tmp_path_factory.mktemp("ver")
    _, data = _write_checkpoint(tmp)
    data = data[:7] + bytes([version]) + data[8:]
    with pytest.raises(checkpoint.CheckpointError, match="format"):
        _load_bytes(tmp, data)
    # even with a checksum that matches the changed bytes
    with pytest.raises(checkpoint.CheckpointError, match="format"):
        _load_bytes(tmp, _seal(data[:-32]))


@FUZZ
@given(data=st.binary(max_size=4096), keep_magic=st.booleans())
def test_checkpoint_random_bytes_are_refused(tmp_path_factory, data, keep_magic):
    tmp = tmp_path_factory.mktemp("rand")
    if keep_magic:
        data = checkpoint.MAGIC + data
    _must_reject(tmp, data)


def _good_entry():
    return {"group": "weights", "name": "w", "dtype": "float32", "shape": [4], "offset": 0, "nbytes": 16}


BAD_ENTRIES = [
    ("offset past the end", {"offset": 4096}),
    ("huge nbytes", {"nbytes": 1 << 40}),
    ("unknown dtype", {"dtype": "object"}),
    ("dtype not a string", {"dtype": 5}),
    ("unknown group", {"group": "optimizer"}),
    ("shape does not match nbytes (reshape fails)", {"shape": [5]}),
    ("shape not a list", {"shape": "four"}),
    ("offset not an integer", {"offset": "0"}),
    ("negative offset", {"offset": -64}),
    ("negative nbytes", {"nbytes": -4, "shape": [-1]}),
    ("nbytes smaller than the shape", {"nbytes": 8, "shape": [4]}),
    ("nbytes not a multiple of the item size", {"nbytes": 15, "shape": [3]}),
    ("name not a string", {"name": 7}),
    ("missing key", {"nbytes": None}),
    ("offset past int64", {"offset": (1 << 64) - 1}),
    ("nbytes past int64", {"nbytes": (1 << 64) - 1}),
]
@pytest.mark.parametrize("what, change", BAD_ENTRIES)
def test_checkpoint_bad_array_entry_is_refused(tmp_path, what, change):
    entry = {**_good_entry(), **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    arrays = np.arange(16, dtype=np.float32).tobytes()
    _must_reject(tmp_path, _crafted({"arrays": [entry], "meta": {}}, arrays))


@pytest.mark.parametrize("header", [
    {"arrays": 5, "meta": {}},
    {"arrays": [5], "meta": {}},
    {"arrays": [[1, 2]], "meta": {}},
    {"meta": {}},
    [1, 2, 3],
    {"arrays": [], "meta": 5},
])
def test_checkpoint_malformed_header_is_refused(tmp_path, header):
    _must_reject(tmp_path, _crafted(header))


@pytest.mark.parametrize("hlen", [0, 1, 3, 1 << 20, (1 << 64) - 1])
def test_checkpoint_header_length_lies(tmp_path, hlen):
    _must_reject(tmp_path, _crafted({"arrays": [], "meta": {}}, hlen=hlen))


@FUZZ
@given(header=st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=8)
                           | st.binary(max_size=8),
                           lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.sampled_from(["arrays", "meta", "group", "name", "dtype",
                                                              "shape", "offset", "nbytes"]), c, max_size=6),
                           max_leaves=20))
def test_checkpoint_any_header_is_an_error_or_a_consistent_result(tmp_path_factory, header):
    """Whatever the (checksummed) header holds: CheckpointError, or arrays that exactly match
    their entries. Never another exception."""
    tmp = tmp_path_factory.mktemp("hdr")
    try:
        ck = _load_bytes(tmp, _crafted(header, bytes(256)))
    except checkpoint.CheckpointError:
        return
    entries = header["arrays"]
    got = {(g, n): a for g in ("weights", "state") for n, a in ck[g].items()}
    assert len(got) <= len(entries)
    for e in entries:
        a = got.get((e["group"], e["name"]))
        if a is not None and e["nbytes"] >= 0:
            assert list(a.shape) == list(e["shape"])
