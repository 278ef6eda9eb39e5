"""The PS checks a payload for NaN/Inf inside the pass that applies it (issue #19, item 2: the
rule's kernel checks each gradient element as it reads it): a non-finite element anywhere
abandons the version (the weights and state carry over), and the PS's update is bit for bit the
rule applied on its own. SYNC's mean checks its gradients in its one pass too."""
from __future__ import annotations

import contextlib
import numpy as np
import pytest
import torch

import algorithms
from gadei import arena as A
from gadei import ledger as L
from gadei.server import Server
from gadei.worker import Worker

pytestmark = pytest.mark.timeout(120)

N = (2 << 20) + 12345      # large enough for the kernels' streaming stores, not a multiple of 8


@pytest.fixture(params=["adam", "sgd"])
def job(request):
    with make_job(algorithms.protocol(request.param, lr=0.01).rule) as j:
        yield j


@contextlib.contextmanager
def make_job(rule):
    """(arena, rule, two workers) for `rule` on N weights; the arena is freed after."""
    state = rule.init_state(N)
    layout = A.Layout(params=(("w", (N,)),), state=tuple((k, v.dtype.name, v.shape) for k, v in state.items()),
                      rule=rule.name, hyper=tuple(sorted(rule.hyper().items())), learners=2)
    arena = A.Arena.create("test-ps-validation", layout, {"config": {}})
    rng = np.random.default_rng(0)
    arena.weights(0)[:] = rng.standard_normal(N, dtype=np.float32)
    for k, v in state.items():
        arena.state(0)[k][:] = v
    arena.write_ledger(0, L.published_empty(2))
    try:
        yield arena, rule, [Worker(arena, i) for i in range(2)]
    finally:
        arena.unlink()
        arena.close()


def published(arena):
    b = arena.job.published % A.BUFFERS
    return arena.published_weights().copy(), {k: v.copy() for k, v in arena.state(b).items()}


@pytest.mark.parametrize("where", [0, 3, N // 2, N - 9, N - 1])    # head, body, tail
def test_a_non_finite_element_anywhere_abandons_the_version(job, where):
    arena, rule, (w0, _) = job
    ps = Server(arena, rule, warn=lambda m: None)
    g = torch.from_numpy(np.random.default_rng(1).standard_normal(N, dtype=np.float32))
    w0.push(A.GRADIENT, g)
    assert ps.step()
    before = published(arena)
    bad = g.clone()
    bad[where] = float("nan") if where % 2 else float("inf")
    w0.push(A.GRADIENT, bad)
    assert ps.step()
    after = published(arena)
    assert arena.job.published == 2
    np.testing.assert_array_equal(after[0], before[0])
    for k in before[1]:
        np.testing.assert_array_equal(after[1][k], before[1][k])
    pub = arena.published_ledger()[1]
    assert (pub.get(0, L.N_APPLIED), pub.get(0, L.N_REJECTED), pub.rejected(0)) == (1, 1, [1])


def test_the_ps_update_equals_the_rule_applied_alone(job):
    arena, rule, (w0, _) = job
    ps = Server(arena, rule, warn=lambda m: None)
    rng = np.random.default_rng(2)
    w, st = published(arena)
    for k in range(3):
        g = rng.standard_normal(N, dtype=np.float32)
        w0.push(A.GRADIENT, torch.from_numpy(g))
        assert ps.step()
        out_w, out_s = np.empty_like(w), {key: np.empty_like(v) for key, v in st.items()}
        rule.apply(w, g, st, out_weights=out_w, out_state=out_s)
        w, st = out_w, out_s
        got = published(arena)
        np.testing.assert_array_equal(got[0], w)
        for key in st:
            np.testing.assert_array_equal(got[1][key], st[key])


def test_sync_drops_the_non_finite_gradient_of_a_round(job):
    """A round of two: one gradient with an Inf in its last chunk; the other is applied alone."""
    arena, rule, workers = job
    ps = Server(arena, rule, warn=lambda m: None, sync_timeout=5.0)
    rng = np.random.default_rng(3)
    good = rng.standard_normal(N, dtype=np.float32)
    bad = rng.standard_normal(N, dtype=np.float32)
    bad[N - 2] = -np.inf
    w, st = published(arena)
    workers[0].push(A.GRADIENT, torch.from_numpy(bad))
    workers[1].push(A.GRADIENT, torch.from_numpy(good))
    assert ps.step()
    out_w, out_s = np.empty_like(w), {key: np.empty_like(v) for key, v in st.items()}
    rule.apply(w, good, st, out_weights=out_w, out_state=out_s)
    np.testing.assert_array_equal(published(arena)[0], out_w)
    pub = arena.published_ledger()[1]
    assert (pub.get(0, L.N_REJECTED), pub.get(1, L.N_APPLIED)) == (1, 1)


class UncheckedSGD(type(algorithms.get("sgd"))):
    """A rule written in numpy, as a user's own may be: `apply` returns None (it does not check
    the gradient), so the PS reads the gradient once more to check it."""

    def apply(self, weights, grad, state, out_weights=None, out_state=None):
        out = weights if out_weights is None else out_weights
        np.subtract(weights, np.float32(self.lr) * grad, out=out)


def test_a_rule_that_does_not_check_is_checked_by_the_ps():
    with make_job(UncheckedSGD(lr=0.01)) as (arena, rule, (w0, _)):
        ps = Server(arena, rule, warn=lambda m: None)
        g = np.random.default_rng(4).standard_normal(N, dtype=np.float32)
        w0.push(A.GRADIENT, torch.from_numpy(g))
        assert ps.step()
        before = published(arena)
        g[N - 1] = np.nan
        w0.push(A.GRADIENT, torch.from_numpy(g))
        assert ps.step()
        np.testing.assert_array_equal(published(arena)[0], before[0])
        pub = arena.published_ledger()[1]
        assert (pub.get(0, L.N_APPLIED), pub.get(0, L.N_REJECTED)) == (1, 1)
