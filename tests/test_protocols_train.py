"""Every learner-side protocol trains a small real model through the PS with 2 learners."""
from __future__ import annotations

import pytest
import torch

import gadei
from tests.tasks import Blobs

pytestmark = pytest.mark.timeout(300)


def initial_loss() -> float:
    task = Blobs()
    torch.manual_seed(0)
    return task.evaluate(task.build_model(), "valid")["loss"]


@pytest.mark.parametrize("optimizer, hyper", [
    ("asgd", {"lr": 0.1}),
    ("adam", {"lr": 0.01}),
    ("downpour", {"lr": 0.1, "n_push": 4, "n_fetch": 4}),
    ("easgd", {"lr": 0.1, "tau": 4, "beta": 0.9}),
    ("eamsgd", {"lr": 0.05, "tau": 4, "beta": 0.9, "delta": 0.9}),
    ("sync", {"lr": 0.1}),
])
def test_protocol_reduces_the_loss(tmp_path, optimizer, hyper):
    before = initial_loss()
    s = gadei.train("tests.tasks:Blobs", optimizer=optimizer, learners=2, steps=240,
                    out=tmp_path, **hyper)
    after = s["final_metrics"]["loss"]
    assert after < 0.5 * before, (optimizer, before, after)
    assert s["final_metrics"]["accuracy"] > 0.8
    for entry in s["ledger"].values():
        assert entry["committed"] == entry["applied"]
    # every push records the version it was computed from (EASGD's fetch once did not, and its
    # staleness grew with the run: ~30 here)
    assert s["staleness"]["mean"] < 8, s["staleness"]


def test_bad_hyper_parameters_fail_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="tau"):
        gadei.train("tests.tasks:Blobs", optimizer="easgd", tau=0, out=tmp_path)
    with pytest.raises(ValueError, match="unknown option momentum"):
        gadei.train("tests.tasks:Blobs", optimizer="adam", momentum=0.9, out=tmp_path)
    with pytest.raises(ValueError, match="unknown optimizer"):
        gadei.train("tests.tasks:Blobs", optimizer="lbfgs", out=tmp_path)


def test_epochs_mode_runs_every_learner_through_its_shard(tmp_path):
    """--epochs: each learner passes over its shard that many times (Blobs: 1000 training
    samples, 2 shards of 500, 15 batches of 32 each), then stops."""
    s = gadei.train("tests.tasks:Blobs", optimizer="sgd", learners=2, epochs=2, out=tmp_path, lr=0.1)
    assert s["updates_applied"] == 2 * 2 * 15
    assert s["samples"] == 2 * 2 * 15 * 32
