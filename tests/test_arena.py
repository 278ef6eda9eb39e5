"""Unit tests of the arena, its control words, the ledger helpers and checkpoints."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from gadei import arena as A
from gadei import checkpoint, ledger as L, shm
from gadei.atomic import AtomicWords
from gadei.ledger import published_empty
from gadei.supervisor import sweep_stale

pytestmark = pytest.mark.timeout(120)


def layout(n=16, learners=2, rule="sgd"):
    return A.Layout(params=(("a", (n // 2,)), ("b", (2, n // 4))), state=(("m", "float32", (n,)),),
                    rule=rule, hyper=(("lr", 0.1),), learners=learners, slots=2)


@pytest.fixture
def arena():
    a = A.Arena.create("test-arena", layout(), {"config": {"x": 1}})
    a.write_ledger(0, published_empty(2))
    yield a
    a.unlink()
    a.close()


def test_segment_is_private_exclusive_and_unguessable(arena):
    path = shm.SHM_DIR / arena.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert arena.name.startswith("gadei_test-arena_") and len(arena.name.rsplit("_", 1)[1]) == 32
    assert shm.job_of(arena.name) == "test-arena"
    with pytest.raises(FileExistsError):
        shm.create(arena.name, 4096)
    other = A.Arena.create("test-arena", layout(), {})
    try:
        assert other.name != arena.name
    finally:
        other.unlink()
        other.close()


def test_attach_checks_the_layout(arena):
    same = A.Arena.attach(arena.name, layout().digest())
    assert same.meta["config"] == {"x": 1} and same.layout == arena.layout
    same.close()
    with pytest.raises(ValueError, match="different layout"):
        A.Arena.attach(arena.name, layout(n=32).digest())
    with pytest.raises(ValueError, match="different layout"):
        A.Arena.attach(arena.name, layout(rule="adam").digest())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.Arena.attach("gadei_nothing_" + "0" * 32)


def test_attach_refuses_a_corrupt_header(arena):
    raw = np.frombuffer(shm.attach(arena.name), np.uint8)
    raw[20] ^= 0xFF            # inside the layout digest
    with pytest.raises(ValueError, match="digest"):
        A.Arena.attach(arena.name)
    raw[20] ^= 0xFF
    raw[0] = ord("X")
    with pytest.raises(ValueError, match="not a gadei arena"):
        A.Arena.attach(arena.name)
    raw[0] = A.MAGIC[0]


def test_invalid_job_names_are_refused():
    for bad in ("", "a/b", "x" * 65, "-lead", "sp ace"):
        with pytest.raises(ValueError, match="invalid job name"):
            shm.segment_name(bad)


def test_regions_do_not_overlap(arena):
    regions = [arena.weights(b) for b in range(arena.layout.weight_buffers)]
    regions += [arena.state(b)["m"] for b in range(A.BUFFERS)]
    regions += [arena.slot(i, s) for i in range(2) for s in range(2)]
    for r in regions:
        r[:] = 0
    for k, r in enumerate(regions):
        r[:] = k + 1
    for k, r in enumerate(regions):
        assert (r == k + 1).all()
    words = arena.words.copy()
    assert words[A.OWNER_PID] == os.getpid()        # the creator owns it
    words[[A.OWNER_PID, A.OWNER_START]] = 0
    marks = words[-arena.layout.weight_buffers:]
    assert marks[0] == 0 and (marks[1:] == A.REUSE).all()   # version 0 in weight buffer 0
    words = words[:-arena.layout.weight_buffers]
    assert words.max() == 0         # the other control words were not touched


def test_vectors_start_at_distinct_page_offsets():
    """Note [staggered regions]: the vectors one update streams (a header's state and the next
    header's, the published weight buffer and the one being written, the slot) start 32-byte
    aligned at distinct offsets within their pages, so the kernel's streaming stores apply and
    its streams do not share a memory channel."""
    lay = A.Layout(params=(("w", (5000,)),), rule="adam", hyper=(), learners=3, slots=2,
                   state=(("exp_avg", "float32", (5000,)), ("exp_avg_sq", "float32", (5000,)),
                          ("max_exp_avg_sq", "float32", (5000,)), ("step", "float64", (1,))),
                   weight_buffers=5)
    a = A.Arena.create("test-arena-stagger", lay, {"config": {}})
    try:
        def offset(x):
            return x.ctypes.data % A.PAGE
        state = [offset(a.state(0)[k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
        for b in range(1, A.BUFFERS):
            assert state == [offset(a.state(b)[k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
        weights = [offset(a.weights(b)) for b in range(5)]
        slots = [offset(a.slot(i, s)) for i in range(3) for s in range(2)]
        seen = state + weights + slots
        assert len(set(seen)) == len(seen), f"page offsets {seen}"
        assert all(o % 32 == 0 for o in seen), f"not 32-byte aligned: {seen}"
    finally:
        a.unlink()
        a.close()


def test_atomic_words_load_store_cas(arena):
    ctl = arena.ctl
    ctl.store(A.HOLD, 41)
    assert ctl.load(A.HOLD) == 41 and ctl.load(A.HOLD, fence=True) == 41
    assert ctl.cas(A.HOLD, 41, 42) and ctl.load(A.HOLD) == 42
    assert not ctl.cas(A.HOLD, 41, 43) and ctl.load(A.HOLD) == 42
    ctl.store(A.HOLD, 2**64 - 1)
    assert ctl.load(A.HOLD) == 2**64 - 1
    with pytest.raises(ValueError):
        AtomicWords(np.zeros(4, np.int64))


def test_control_word_encoding():
    for state in (A.FREE, A.WRITING, A.READY):
        for seq in (0, 1, 12345, 2**40):
            w = A.ctrl(state, seq)
            assert A.ctrl_state(w) == state and A.ctrl_seq(w) == seq
    assert A.ctrl_seq(0) == -1 and A.ctrl_state(0) == A.FREE   # never used


@pytest.mark.alone      # any job start sweeps: another worker's could take `stale` before we do
def test_stale_arenas_of_dead_jobs_are_swept():
    """An arena whose creator was killed (its lock gone with it) is swept; a live one is not."""
    code = ("import time; from gadei import arena as A; from tests.helpers import small_layout; "
            "a = A.Arena.create('test-stale', small_layout(), {}); print(a.name, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    stale = child.stdout.readline().strip()
    live = A.Arena.create("test-live", layout(), {})
    try:
        assert shm.owned(stale) and shm.owned(live.name)
        child.kill()
        child.wait()
        assert not shm.owned(stale)
        removed = sweep_stale(log=lambda m: None)
        assert stale in removed and live.name not in removed
        assert shm.segments("test-live") == [live.name] and shm.segments("test-stale") == []
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        shm.unlink(stale)
        live.unlink()
        live.close()


def test_ledger_ranges_and_audit():
    r = L.to_ranges([5, 0, 1, 2, 7, 8])
    assert r == [[0, 2], [5, 5], [7, 8]] and L.expand(r) == [0, 1, 2, 5, 7, 8] and L.count(r) == 6
    assert L.committed(6, [3]) == [[0, 2], [4, 5]]
    good = {"committed": [[0, 5]], "applied": [[0, 2], [4, 5]], "rejected": [3], "discarded": []}
    assert L.audit(good) == []
    lost = {**good, "applied": [[0, 2], [5, 5]]}
    assert "committed but never applied" in L.audit(lost)[0]
    twice = {**good, "applied": [[0, 2], [2, 2], [4, 5]]}
    assert any("twice" in p for p in L.audit(twice))
    with pytest.raises(ValueError):
        L.add([[0, 4]], 3)


def test_checkpoint_round_trip_and_damage(tmp_path):
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, np.float32)}
    s = {"m": np.full(11, 0.5, np.float32), "step": np.array([7.0])}
    path = checkpoint.save(tmp_path, w, s, {"version": 3, "ledger": {"x": [1, 2]}})
    assert path == tmp_path / "checkpoint"
    back = checkpoint.load(tmp_path)
    for k in w:
        np.testing.assert_array_equal(back["weights"][k], w[k])
    for k in s:
        np.testing.assert_array_equal(back["state"][k], s[k])
    assert back["meta"] == {"version": 3, "ledger": {"x": [1, 2]}}
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))
    data = path.read_bytes()
    cases = {"empty": b"", "truncated": data[:-7], "bit flip": data[:60] + bytes([data[60] ^ 4]) + data[61:],
             "other file": b"PK\x03\x04" + data[4:], "future format": data[:7] + b"\x09" + data[8:]}
    for what, bad in cases.items():
        path.write_bytes(bad)
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dtype"):
        checkpoint.save(tmp_path, {"o": np.array([object()])}, {}, {})
