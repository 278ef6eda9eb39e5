"""Non-finite gradients are rejected, not applied; DELTA pushes keep exactly-once under kills."""
from __future__ import annotations

import random
import pytest

import gadei
from gadei import ledger as L
from gadei.probe import audit
from tests.helpers import train_under_chaos

pytestmark = pytest.mark.timeout(300)


def test_non_finite_gradients_are_rejected_and_training_goes_on(tmp_path):
    s = gadei.train("tests.tasks:Poisoned", optimizer="sgd", learners=2, steps=100, out=tmp_path, lr=0.1)
    for i, entry in s["ledger"].items():
        committed = L.expand(entry["committed"])
        assert entry["rejected"] == [k for k in committed if k % 5 == 3]
        assert set(L.expand(entry["applied"])) == {k for k in committed if k % 5 != 3}
        assert L.audit(entry) == []
    assert s["updates_rejected"] == 20
    assert s["final_metrics"]["loss"] == s["final_metrics"]["loss"]   # finite weights: not NaN
    log = (tmp_path / "logs" / "ps.log").read_text()
    assert log.count("non-finite") == 2          # warned once per learner
    assert "learner 0" in log and "learner 1" in log


@pytest.mark.parametrize("optimizer", [["downpour", "--n-push", 2, "--n-fetch", 3],
                                       ["easgd", "--tau", 2, "--beta", 0.9],
                                       ["sync", "--round-timeout", 2]])
def test_protocols_keep_exactly_once_under_kills(tmp_path, optimizer):
    out = tmp_path / optimizer[0]
    # an unbounded job (steps divisible by learners x n_push: exact DOWNPOUR weights), stopped after the kills
    args = ["train", "--task", "probe", "--learners", 2, "--steps", 10**9, "--lr", 1,
            "--probe-size", 200_000, "--optimizer", *optimizer, "--out", out, "--no-progress"]
    kills, s = train_under_chaos(args, f"delta-{optimizer[0]}", 4, random.Random(3),
                                 ps_share=0.3, gap=(0.3, 1.0))
    assert kills == 4 and s["restarts"]["ps"] + s["restarts"]["learners"] >= 1
    assert audit(out) == []       # ledger for both; exact weights for DOWNPOUR (docs/algorithms.md)
