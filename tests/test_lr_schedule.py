"""The PS's learning-rate schedules: lr by update count, continued across a PS restart."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import algorithms
from algorithms.schedules import schedule
from gadei import arena as A
from gadei.job import JobConfig
from gadei.ledger import published_empty
from gadei.server import Server
from gadei.worker import Worker

pytestmark = pytest.mark.timeout(120)


def test_schedules_by_update_count():
    cos, lin = schedule("cosine", 0.1, 10), schedule("linear", 0.1, 10)
    assert schedule("constant", 0.1, 10) is None
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.05) and cos(10) == pytest.approx(0.0)
    assert cos(25) == pytest.approx(0.0)                       # past the end: stays at 0
    assert lin(0) == pytest.approx(0.1) and lin(4) == pytest.approx(0.06) and lin(12) == 0.0
    with pytest.raises(ValueError, match="one of constant, cosine, linear"):
        schedule("step", 0.1, 10)


def test_a_floor_stops_the_decay_at_a_fraction_of_lr():
    cos, lin = schedule("cosine", 0.1, 10, floor=0.1), schedule("linear", 0.1, 10, floor=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.055) and cos(10) == pytest.approx(0.01)
    assert cos(25) == pytest.approx(0.01) and lin(4) == pytest.approx(0.01 + 0.09 * 0.6) and lin(12) == pytest.approx(0.01)
    assert JobConfig(lr_schedule="cosine", lr_floor=0.1, steps=10, hyper={"lr": 0.1}).lr_at()(10) == pytest.approx(0.01)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="lr floor must be a fraction"):
            schedule("cosine", 0.1, 10, floor=bad)


def test_warmup_raises_the_rate_linearly_under_any_schedule():
    const, cos = schedule("constant", 0.1, 10, warmup=4), schedule("cosine", 0.1, 10, warmup=4)
    assert [round(const(t), 6) for t in range(6)] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]
    assert cos(1) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert cos(5) == pytest.approx(0.05)                         # past the warm-up: the schedule alone
    with pytest.raises(ValueError, match="warm-up must be >= 0"):
        schedule("cosine", 0.1, 10, warmup=-1)


def test_ps_applies_the_scheduled_lr_and_a_new_ps_continues_it():
    """SGD with a gradient of ones: w after update t is -sum of the lr of updates 0..t-1, also
    when a second PS (a restart) takes over half way."""
    total, n = 6, 4
    layout = A.Layout(params=(("w", (n,)),), state=(), rule="sgd", hyper=(("lr", 0.5),), learners=1, slots=2)
    arena = A.Arena.create("test-sched", layout, {"config": {}})
    try:
        arena.write_ledger(0, published_empty(1))
        lr_at = schedule("cosine", 0.5, total)
        worker = Worker(arena, 0)
        expected = 0.0
        for t in range(total):
            if t in (0, total // 2):                     # a PS, then its replacement
                ps = Server(arena, algorithms.get("sgd", lr=0.5), warn=lambda m: None, lr_at=lr_at)
            s = worker.claim()
            worker.write(s, torch.ones(n))
            worker.commit(s, A.GRADIENT, samples=1)
            assert ps.step()
            expected -= 0.5 * 0.5 * (1 + math.cos(math.pi * t / total))
            w = np.empty(n, np.float32)
            arena.pull(w)
            np.testing.assert_allclose(w, expected, rtol=1e-6)
    finally:
        arena.unlink()
        arena.close()


@pytest.mark.parametrize("kwargs, pattern", [
    ({"lr_schedule": "cosine", "epochs": 2}, "give --steps"),
    ({"lr_schedule": "cosine", "optimizer": "downpour"}, "applies its learners' deltas"),
    ({"lr_schedule": "cosine", "optimizer": "easgd"}, "applies its learners' deltas"),
    ({"lr_schedule": "warm"}, "one of constant, cosine, linear"),
    ({"lr_warmup": 10, "optimizer": "easgd"}, "applies its learners' deltas"),
    ({"lr_warmup": -1}, "warm-up must be >= 0"),
])
def test_job_refuses_a_schedule_it_cannot_apply(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        JobConfig(**kwargs)


def test_job_schedule_decays_over_its_steps():
    cfg = JobConfig(optimizer="adam", hyper={"lr": 0.01}, lr_schedule="linear", steps=100)
    assert cfg.lr_at()(0) == pytest.approx(0.01) and cfg.lr_at()(50) == pytest.approx(0.005)
    assert JobConfig(optimizer="adam").lr_at() is None
    warm = JobConfig(optimizer="adam", hyper={"lr": 0.01}, lr_warmup=10, epochs=2)   # no decay: epochs will do
    assert warm.lr_at()(0) == pytest.approx(0.001) and warm.lr_at()(20) == pytest.approx(0.01)


def test_probe_audits_only_the_ledger_under_a_schedule():
    """With a schedule the lr of each update depends on the order the PS applied them, which the
    ledger does not keep: the probe must not compare the weights against one constant lr."""
    from gadei.probe import weight_scale
    base = {"optimizer": "sgd", "hyper": {"lr": 0.5}, "steps": 200, "learners": 2}
    assert weight_scale(base) == 0.5 and weight_scale({**base, "lr_schedule": "constant"}) == 0.5
    assert weight_scale({**base, "lr_schedule": "cosine"}) is None
    assert weight_scale({**base, "lr_warmup": 10}) is None
