"""The systems `bench.ps_throughput` measures, one module each, behind one entry point.

Every entry point (``ENTRY``: module and function) is ``run(params: int, learners: int,
seconds: float, warmup: float, lr: float) -> dict`` that runs one setting to the end in the
calling process (starting whatever processes the system needs) and returns at least::

    exchanges_per_s_total   gradient exchanges per second over all learners in the timed window
    exchanges_timed         exchanges completed in the timed window (all learners)
    pushed_total            gradients pushed, warm-up included
    applied_total           gradients applied, derived from the final weights (see below)
    lost_fraction           1 - applied_total / pushed_total

Note (one exchange): a learner pushes a precomputed gradient of P float32, the system applies it
with SGD, and the learner pulls the weights back. Every system uses the gradient ``ones(P)`` and
``lr = 1`` from zero weights, so the final weights are exactly ``-(updates applied)`` (float32
holds integers to 2**24 exactly): the applied count is read off the weights, never assumed.

Note (timing): each learner runs one exchange and then ``warmup`` seconds, waits at a barrier
with the others, then runs exchanges until ``seconds`` have passed; its rate is its exchanges
over the time from the barrier to the end of its last exchange, and the total is the sum over
learners. Synchronous
systems (gloo) agree on a step count instead (see ``gloo.py``). Processes are forked (the
default on Linux, and what torch's Hogwild example uses): the worker has imported torch once,
and a spawned child would import it again, seconds each on a loaded machine.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable

SYSTEMS = ("gadei", "gadei_mpi", "mpi_ps", "gloo", "hogwild", "queue")
ENTRY = {"gadei": "bench.peers.gadei_ps:run", "gadei_mpi": "bench.peers.gadei_ps:run_mpi",
         "mpi_ps": "bench.peers.mpi_ps:run", "gloo": "bench.peers.gloo:run",
         "hogwild": "bench.peers.hogwild:run", "queue": "bench.peers.queue_ps:run"}
MPI_SYSTEMS = ("gadei_mpi", "mpi_ps")      # run as mpiexec -n learners+1


def own_session() -> None:
    """Move the calling process into a session of its own, as gadei's supervisor starts each of
    its roles. With the kernel's autogroup scheduling CPU time is shared out per session: on a
    busy machine, peer processes forked into one session would share that session's time while
    gadei's roles got one share each, and the comparison would favour gadei. Call it first thing
    in every process that does a system's work."""
    try:
        os.setsid()
    except PermissionError:   # already a process group leader (a session of its own or a group's)
        pass


@contextmanager
def running(procs: list):
    """Start `procs` in order; on the way out (also on an error) join them in reverse order,
    killing one still alive after 30 s."""
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in reversed(procs):
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()


def timed_loop(exchange: Callable[[], None], seconds: float, warmup: float,
               barrier: Callable[[], None]) -> dict:
    """Run `exchange` for `warmup` s, wait at `barrier`, then for `seconds` s; return the counts."""
    # 1. warm-up: a first exchange (it may wait for the server to start), then `warmup` s
    exchange()
    warm = 1
    start = time.perf_counter()
    while time.perf_counter() - start < warmup:
        exchange()
        warm += 1
    # 2. all learners start the timed window together
    barrier()
    # 3. timed window: exchanges that began after t0 and ended by t_end, back to back
    t0 = time.perf_counter()
    deadline = t0 + seconds
    n = 0
    while True:
        exchange()
        n += 1
        t_end = time.perf_counter()
        if t_end >= deadline:
            break
    return {"warmup_exchanges": warm, "exchanges": n, "elapsed_s": t_end - t0}


def summarize(per_learner: list[dict], applied_total: float) -> dict:
    """The common result fields from the learners' `timed_loop` counts and the applied count."""
    pushed = sum(r["warmup_exchanges"] + r["exchanges"] for r in per_learner)
    return {
        "exchanges_per_s_total": sum(r["exchanges"] / r["elapsed_s"] for r in per_learner),
        "exchanges_timed": sum(r["exchanges"] for r in per_learner),
        "elapsed_s": max(r["elapsed_s"] for r in per_learner),
        "pushed_total": pushed,
        "applied_total": applied_total,
        "lost_fraction": lost_fraction(applied_total, pushed),
        "per_learner": per_learner,
    }


def lost_fraction(applied: float, pushed: float) -> float:
    """1 - applied / pushed; negative would mean updates applied twice (reported, not clipped)."""
    if pushed <= 0:
        raise ValueError(f"no gradient was pushed (pushed={pushed}): the run did not start")
    return 1.0 - applied / pushed


def applied_from_weights(w) -> float:
    """Updates applied to weights that started at 0 and took `ones` steps with lr 1: -mean(w).

    A lost update under Hogwild loses it for a run of elements, not all of them: the mean over
    elements is the fraction of element updates that landed.
    """
    import numpy as np
    return float(-np.asarray(w, dtype=np.float64).mean())
