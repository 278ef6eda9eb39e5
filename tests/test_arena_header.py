"""Arena headers from outside: random bytes, bit flips, forged meta are refused or harmless."""

import os
import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gadei import arena as A
from gadei import shm
from tests.helpers import FUZZ, small_layout

ROOT = Path(__file__).resolve().parents[1]


# ---- arena headers ----------------------------------------------------------------------------
def _attach_junk(header: bytes, size: int = 256 * 1024, digest=None) -> None:
    name = shm.segment_name("fuzz-arena")
    mm, lock = shm.create(name, size)
    try:
        mm[0:len(header)] = header
        mm.close()
        os.close(lock)
        a = A.Arena.attach(name, digest)
        a.close()
        pytest.fail("a damaged arena header was accepted")
    finally:
        shm.unlink(name)


def _valid_header(layout: A.Layout, meta: dict | None = None, meta_len: int | None = None,
                  fmt: int = A.FORMAT, digest: bytes | None = None) -> bytes:
    blob = msgpack.packb({"job": "fuzz-arena", "layout": layout.to_dict(), **(meta or {})})
    return (A.MAGIC + struct.pack("<II", fmt, len(blob) if meta_len is None else meta_len)
            + (digest or layout.digest()) + bytes(16) + blob)


@FUZZ
@given(prefix=st.sampled_from([b"", A.MAGIC, A.MAGIC + struct.pack("<I", A.FORMAT)]),
       junk=st.binary(min_size=1, max_size=512))
def test_arena_random_header_is_refused(prefix, junk):
    with pytest.raises(ValueError):
        _attach_junk(prefix + junk)


@FUZZ
@given(pos=st.integers(min_value=0, max_value=400), bit=st.integers(min_value=0, max_value=7))
def test_arena_bit_flip_in_header_is_refused_or_harmless(pos, bit):
    """A flipped bit in magic, format, length, digest or the layout is refused; one in the other
    metadata (not covered by the digest) must still attach to the same layout."""
    hdr = bytearray(_valid_header(small_layout()))
    pos %= len(hdr)
    hdr[pos] ^= 1 << bit
    name = shm.segment_name("fuzz-arena")
    mm, lock = shm.create(name, A._offsets(small_layout()).total)
    try:
        mm[0:len(hdr)] = bytes(hdr)
        mm.close()
        os.close(lock)
        try:
            a = A.Arena.attach(name, small_layout().digest())
        except ValueError as e:
            assert name in str(e) or "msgpack" in repr(type(e)) or str(e), e
            return
        try:
            assert a.layout == small_layout()
        finally:
            a.close()
    finally:
        shm.unlink(name)


@pytest.mark.parametrize("case", ["meta not a map", "meta without layout", "layout missing keys",
                                  "meta length past the segment", "layout of another size"])
def test_arena_malformed_meta_is_a_clear_error(case):
    lay = small_layout()
    if case == "meta not a map":
        blob = msgpack.packb(5)
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "meta without layout":
        blob = msgpack.packb({"job": "x"})
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "layout missing keys":
        blob = msgpack.packb({"job": "x", "layout": {"params": []}})
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "meta length past the segment":
        hdr = _valid_header(lay, meta_len=A.META_MAX + 10_000_000)
    else:   # a consistent header (right digest) for a layout larger than the segment
        big = small_layout(learners=64, n=1 << 20)
        hdr = _valid_header(big)
    with pytest.raises(ValueError):
        _attach_junk(hdr, size=A._offsets(lay).total)
