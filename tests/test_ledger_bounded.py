"""The ledger stays the same size for any job length (reliability finding 6): a NaN every other
step once split the applied ranges at every update, filled the arena's fixed ledger region at
~52,600 updates and killed every PS after, and every resume."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

import algorithms
import gadei
from gadei import arena as A
from gadei import checkpoint
from gadei import ledger as L
from gadei.probe import audit, expected_weights
from gadei.server import Server
from gadei.worker import Worker
from tests.helpers import small_layout

pytestmark = pytest.mark.timeout(300)

OLD_LEDGER_MAX = 256 * 1024 - 8      # the msgpack ledger region before format 3


def old_form(k_end: int) -> dict:
    """The pre-format-3 published ledger of one learner after seqs [0, k_end), odd ones rejected."""
    return {"applied": [[[k, k] for k in range(0, k_end, 2)]], "rejected": [list(range(1, k_end, 2))],
            "amax": [k_end - 1], "progress": [[k_end, 0, k_end]], "dropped": [0],
            "updates": k_end // 2, "rejects": k_end // 2, "stale_sum": 0, "stale_max": 0, "last_norm": 1.0}


def test_a_resume_past_the_old_limit_with_a_nan_every_other_step(tmp_path):
    """A job whose checkpoint already holds 60,000 updates, every other one rejected (more than
    the old region held: the old code died creating the arena), resumes in the old checkpoint
    format and goes on rejecting every other step; the audit is exact, weights included."""
    probe = {"probe_size": 16, "probe_nan_every": 2}
    first, second = tmp_path / "first", tmp_path / "second"
    gadei.train("probe", task_options=probe, learners=1, steps=4, lr=1, out=first, evaluate=False)
    ck = checkpoint.load(first)
    K = 60_000
    pub = old_form(K)
    assert len(msgpack.packb(pub)) > OLD_LEDGER_MAX          # the finding, reproduced
    entry = {"committed": [[0, K - 1]], "applied": pub["applied"][0]}
    meta = {**ck["meta"], "version": K, "ledger": pub,
            "learner_records": [{"next_seq": K, "discarded": [], "step": K, "epoch": 0, "incarnations": 1}]}
    checkpoint.save(first / "checkpoint", {"w": expected_weights({"0": entry}, 16)}, {}, meta)

    s = gadei.train("probe", task_options=probe, learners=1, steps=K + 300, lr=1, out=second,
                    resume=first, evaluate=False)
    e = s["ledger"]["0"]
    assert e["committed"] == [[0, K + 299]]
    assert e["applied_count"] == e["rejected_count"] == (K + 300) // 2
    assert len(e["rejected"]) == L.WINDOW and e["horizon"] >= K
    assert s["updates_applied"] == (K + 300) // 2 and s["updates_rejected"] == (K + 300) // 2
    assert audit(second) == []


def test_the_ledger_keeps_its_size_as_rejections_accumulate():
    """In one process, a PS and a learner pushing NaN every other time: the published ledger is
    the same words, its checkpoint form and summary stay the same size, counts stay exact."""
    layout = small_layout(learners=1, n=8)
    arena = A.Arena.create("test-ledger-size", layout, {"config": {}})
    try:
        arena.write_ledger(0, L.published_empty(1))
        rule = algorithms.protocol("sgd", lr=1.0).rule
        ps = Server(arena, rule, warn=lambda m: None)
        worker = Worker(arena, 0)
        good, bad = torch.ones(8), torch.full((8,), float("nan"))
        sizes = {}
        for k in range(2000):
            worker.push(A.GRADIENT, good if k % 2 == 0 else bad)
            assert ps.step()
            if k + 1 in (1000, 2000):
                v, pub = arena.published_ledger()
                assert pub.w.nbytes == 8 * L.words(1)
                led = L.Ledger.join(pub, [[]], [1], [worker.next_seq])
                sizes[k + 1] = (len(msgpack.packb(led.to_checkpoint())), len(msgpack.packb(led.summary())))
                assert L.audit(led.summary()["0"]) == []
        assert led.applied == led.rejected == 1000
        assert led.records[0].rejected == list(range(2001 - 2 * L.WINDOW, 2000, 2))
        (c1, s1), (c2, s2) = sizes[1000], sizes[2000]
        assert c2 - c1 <= 16 and s2 - s1 <= 16, sizes      # the same integer widths: the same size
        np.testing.assert_array_equal(arena.published_weights(), np.full(8, -1000.0))
    finally:
        arena.unlink()
        arena.close()


def test_an_old_checkpoint_ledger_reads_as_counts_and_a_window():
    meta = {"ledger": old_form(1000), "learner_records": [{"next_seq": 1000, "discarded": [], "incarnations": 2}]}
    led = L.Ledger.from_checkpoint(meta)
    r = led.records[0]
    assert (r.n_applied, r.n_rejected, r.amax, r.horizon) == (500, 500, 999, 999 - 2 * L.WINDOW)
    assert r.rejected == list(range(1001 - 2 * L.WINDOW, 1000, 2))
    assert L.audit(led.summary()["0"]) == []
    back = L.Ledger.from_checkpoint(led.to_checkpoint())     # and the new form round-trips
    assert back.records[0] == r
    lost = {**led.summary()["0"], "applied_count": 499}
    assert "counts" in L.audit(lost)[0]
