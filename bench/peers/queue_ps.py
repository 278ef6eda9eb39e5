"""A parameter server over ``multiprocessing.Queue``, as the standard library's docs write it.

A server process holds the weights; learners put ``(learner id, gradient)`` on one request queue
(the gradient is pickled), the server applies SGD and puts the weights on that learner's reply
queue. ``Queue.put`` pickles in a feeder thread *later*, so the server puts a copy: putting
``w`` itself could send weights torn by the next update.
"""
from __future__ import annotations

import os

from bench.peers import applied_from_weights, own_session, running, summarize, timed_loop

GET_TIMEOUT_S = 120.0


def _server(params: int, learners: int, lr: float, requests, replies, done) -> None:
    own_session()
    import numpy as np
    import torch
    torch.set_num_threads(1)
    w = np.zeros(params, np.float32)
    wt = torch.from_numpy(w)                      # a view: SGD in one fused pass
    live = learners
    while live:
        i, g = requests.get(timeout=GET_TIMEOUT_S)
        if g is None:                             # learner i is done
            live -= 1
            continue
        wt.add_(torch.from_numpy(g), alpha=-lr)   # apply
        replies[i].put(w.copy())                  # reply with a snapshot (see module docstring)
    done.put(w)


def _learner(i: int, params: int, seconds: float, warmup: float, requests, reply, barrier,
             results) -> None:
    own_session()
    import numpy as np
    g = np.ones(params, np.float32)               # the precomputed gradient, (P,)
    state = {}

    def exchange() -> None:
        requests.put((i, g))                      # push (pickled by the feeder thread)
        state["w"] = reply.get(timeout=GET_TIMEOUT_S)   # pull

    r = timed_loop(exchange, seconds, warmup, lambda: barrier.wait(GET_TIMEOUT_S))
    requests.put((i, None))
    results.put((i, r))


def run(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0) -> dict:
    import multiprocessing as mp

    import torch                                  # imported once, before the fork
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("fork")
    requests, done, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    replies = [ctx.Queue() for _ in range(learners)]
    barrier = ctx.Barrier(learners)
    server = ctx.Process(target=_server, args=(params, learners, lr, requests, replies, done),
                         daemon=True)
    procs = [ctx.Process(target=_learner, args=(i, params, seconds, warmup, requests, replies[i],
                                                barrier, results), daemon=True)
             for i in range(learners)]
    with running([server, *procs]):
        timeout = 120 + 4 * (seconds + warmup)
        per_learner = dict(results.get(timeout=timeout) for _ in procs)
        w = done.get(timeout=timeout)
    bad = [p.exitcode for p in [server, *procs] if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"queue PS process exited with {bad}")
    return summarize([per_learner[i] for i in range(learners)], applied_from_weights(w))
