"""Hogwild with torch.multiprocessing, as its docs and examples/mnist_hogwild write it.

One weight tensor in shared memory (``share_memory_()``); each learner process applies its
gradient in place with no lock (``w.add_(g, alpha=-lr)``: read w, g, write w) and copies w out
(the pull). Updates that race on the same elements are lost; the final weights tell how many.
"""
from __future__ import annotations

import os

from bench.peers import applied_from_weights, own_session, running, summarize, timed_loop

BARRIER_TIMEOUT_S = 120.0


def _learner(i: int, w, seconds: float, warmup: float, lr: float, barrier, results) -> None:
    own_session()
    import torch
    torch.set_num_threads(1)
    g = torch.ones_like(w)          # the precomputed gradient, (P,)
    local = torch.empty_like(w)     # the learner's copy of the weights, (P,)

    def exchange() -> None:
        w.add_(g, alpha=-lr)        # push + apply, no lock
        local.copy_(w)              # pull

    results.put((i, timed_loop(exchange, seconds, warmup,
                               lambda: barrier.wait(BARRIER_TIMEOUT_S))))


def run(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0) -> dict:
    import torch
    import torch.multiprocessing as mp
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("fork")
    w = torch.zeros(params, dtype=torch.float32).share_memory_()
    barrier, results = ctx.Barrier(learners), ctx.Queue()
    procs = [ctx.Process(target=_learner, args=(i, w, seconds, warmup, lr, barrier, results),
                         daemon=True) for i in range(learners)]
    with running(procs):
        per_learner = dict(results.get(timeout=120 + 4 * (seconds + warmup)) for _ in procs)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"hogwild learner exited with {bad}")
    out = summarize([per_learner[i] for i in range(learners)], applied_from_weights(w.numpy()))
    return out
