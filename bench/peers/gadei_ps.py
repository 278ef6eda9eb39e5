"""gadei itself: ``gadei.train`` on the ``bench.exchange_task.Exchange`` task with SGD
(``run``), or the same job on the MPI backend under ``mpiexec -n N+1`` (``run_mpi``).

``gadei.train`` runs a step count, not a wall time, and starts its processes inside the call,
so the rate comes from the run's ``metrics.jsonl`` (one row a second: time, updates applied):
the steady rate between the first and the last row taken while updates were still arriving
(start-up and shut-down excluded), over at least ``seconds``. Steps:

1. run with the step count that fills ``seconds + 2`` at a guessed rate (exchanges of 20·P
   bytes at 2 GB/s);
2. if the steady window came out under 60 % of ``seconds``, run again with the step count
   from the rate it measured, at most twice more; a run with no steady window at all (too
   short for two metrics rows inside it: on a quiet machine the guess is low) makes the next
   one aim at twice the time, since its summary rate counts the start-up too.

Every update is one exchange (a learner pushes a gradient, the PS applies it, the learner pulls
the weights). ``lost_fraction = 1 - applied / committed`` from the run's ledger; the applied count
is also read off the final weights (``-mean(w)``, as for the peers). ``updates_per_s_summary`` is
gadei's own ``updates_per_s`` for comparison.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

GUESS_BYTES_PER_S = 2e9


def ledger_count(ledger: dict, key: str) -> int:
    """Sequence numbers under `key` ("committed", "applied") over all learners of a ledger."""
    if key == "applied":    # counted (the ranges stop at a learner's horizon of rejections)
        return sum(entry["applied_count"] for entry in ledger.values())
    return sum(last - first + 1 for entry in ledger.values() for first, last in entry[key])


def steady_rate(metrics_path: str, total: int) -> dict | None:
    """The rate between the first and the last metrics row with 0 < updates < total, or None."""
    try:
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return None
    inner = [(r["t"], r["updates"]) for r in rows if 0 < r.get("updates", 0) < total]
    if len(inner) < 2 or inner[-1][0] <= inner[0][0]:
        return None
    (t0, u0), (t1, u1) = inner[0], inner[-1]
    return {"rate": (u1 - u0) / (t1 - t0), "window_s": t1 - t0, "updates": u1 - u0}


def _applied_from_checkpoint(out: str) -> float | None:
    try:
        import gadei.checkpoint

        from bench.peers import applied_from_weights
        return applied_from_weights(gadei.checkpoint.load(os.path.join(out, "checkpoint"))
                                    ["weights"]["w"])
    except Exception:                            # optional cross-check only
        return None


def run(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0) -> dict:
    """The local backend: `gadei.train` (a supervisor, the PS and the learners as processes)."""
    import bench
    from bench.exchange_task import Exchange
    task = Exchange(params=params)
    with tempfile.TemporaryDirectory(prefix="bench-gadei-") as d:
        return _attempts(params, learners, seconds, warmup, d, lambda total, out: bench.train(
            task, optimizer="sgd", learners=learners, steps=total, out=out, lr=lr))


def run_mpi(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0):
    """The MPI backend, one rank of `mpiexec -n learners+1`: the node leader (rank 0, which
    also hosts the PS) and one learner per other rank. The result on rank 0, None elsewhere."""
    from mpi4py import MPI

    from gadei.job import JobConfig
    from gadei.mpi import run_mpi as train_mpi
    comm = MPI.COMM_WORLD
    d = comm.bcast(tempfile.mkdtemp(prefix="bench-gadei-mpi-") if comm.rank == 0 else None)

    def train(total: int, out: str) -> dict | None:
        cfg = JobConfig(task="bench.exchange_task:Exchange", task_options={"params": params},
                        optimizer="sgd", hyper={"lr": lr}, learners=learners, steps=total, out=out)
        return train_mpi(cfg)

    try:
        return _attempts(params, learners, seconds, warmup, d, train, comm)
    finally:
        comm.Barrier()
        if comm.rank == 0:
            shutil.rmtree(d, ignore_errors=True)


def _attempts(params, learners, seconds, warmup, d, train, comm=None) -> dict | None:
    """Run the job (at most three times, see the module docstring) and measure its steady rate.
    `train(total, out)` returns the summary (None on MPI ranks other than 0, which follow
    rank 0's decisions through `comm`)."""
    import torch

    from bench.peers import lost_fraction
    torch.set_num_threads(1)
    rate = GUESS_BYTES_PER_S / (20 * params)     # total exchanges/s, a guess for attempt 0
    stretch = 1.0
    for attempt in range(3):
        # steps: gadei counts them over all learners (were it per learner, the run would
        # only last longer)
        total = max(2 * learners, math.ceil(rate * stretch * (seconds + 2 + warmup)))
        out = os.path.join(d, f"run{attempt}")
        s = train(total, out)
        if s is not None:
            applied = ledger_count(s["ledger"], "applied")
            steady = steady_rate(os.path.join(out, "metrics.jsonl"), applied)
            done = bool(steady and steady["window_s"] >= 0.6 * seconds)
            rate = steady["rate"] if steady else max(float(s["updates_per_s"]), 1e-3)
            stretch = 1.0 if steady else 2 * stretch
        if comm is not None:
            done, rate, stretch = comm.bcast((done, rate, stretch) if s is not None else None)
        if done:
            break
    if s is None:
        return None
    if not steady:
        raise RuntimeError(f"gadei: no steady window in metrics.jsonl after 3 runs (last: "
                           f"{applied} updates, summary {s['updates_per_s']}/s)")
    committed = ledger_count(s["ledger"], "committed")
    return {
        "exchanges_per_s_total": steady["rate"],
        "exchanges_timed": steady["updates"],
        "elapsed_s": steady["window_s"],
        "pushed_total": committed,
        "applied_total": applied,
        "lost_fraction": lost_fraction(applied, committed),
        "applied_from_weights": _applied_from_checkpoint(out),
        "steps": total,
        "attempts": attempt + 1,
        "updates_per_s_summary": float(s["updates_per_s"]),
        "summary": json.loads(json.dumps({k: v for k, v in s.items() if k != "ledger"},
                                         default=str)),
    }
