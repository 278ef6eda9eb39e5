"""The job driver: runs a built job to its end and reports it, the one way for every backend.

    acquire, build -> run (metering; Ctrl-C or SIGTERM: stop) -> stop the roles, drain
    -> the last checkpoint -> summary.json (with the final metrics)

The local backend drives a `Supervisor`; under MPI each node leader drives its node's
(gadei/mpi/node.py) and world rank 0 reports the job.
"""
from __future__ import annotations

import json
import os
import signal
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from gadei.evaluate import Evaluator
from gadei.job import JobConfig, JobError
from gadei.meter import Meter
from gadei.supervisor import Outcome, Supervisor


def run_local(cfg: JobConfig, evaluate: bool = True) -> dict:
    """Run `cfg` with local processes; return its summary."""
    out = Path(cfg.out)
    with private_files(), interruptible(signal.SIGINT, signal.SIGTERM):
        sup = Supervisor(cfg)
        try:
            sup.acquire()
            sup.build()
        except BaseException:
            sup.close()
            raise
        return drive(sup, cfg, out, out / "metrics.jsonl", evaluate=evaluate)


def drive(sup, cfg: JobConfig, out: Path, metrics: Path, *, evaluate: bool = True,
          reporting: bool = True, on_tick=None) -> dict | None:
    """Run the built job of `sup` to its end; on the reporting process, checkpoint, write
    `out/summary.json` and return it (None elsewhere). `cfg` is the whole job's configuration
    (under MPI, `sup.cfg` is its node's); `on_tick(sup)` runs on every supervisor round."""
    t_start = time.monotonic()
    meter = Meter(sup, metrics, cfg.progress and reporting)

    def tick(s):
        meter(s)
        if on_tick:
            on_tick(s)
    error = None
    try:
        try:
            train_s = sup.run(on_tick=tick)
        except KeyboardInterrupt:
            sup.interrupted = True
            sup.log("gadei: interrupted; stopping the learners and the PS, saving a checkpoint")
            train_s = time.monotonic() - t_start
        except JobError as e:           # the job cannot go on: it still ends with its checkpoint
            error = e
            sup.log(f"gadei: {e}\ngadei: the job stops; saving a checkpoint and the summary")
            train_s = time.monotonic() - t_start
        meter.record(time.monotonic(), final=error is None)
        sup.stop_children()
        if not reporting:
            if error:
                raise error
            return None
        outcome = sup.conclude(final=not sup.interrupted and error is None, train_s=train_s)
        summary = job_summary(cfg, sup.interrupted, outcome, train_s, outcome.rates or meter.rates())
        sup.close()
        if evaluate and not sup.interrupted and error is None:
            try:
                summary["final_metrics"] = Evaluator(cfg)(outcome.weights)
            except Exception as e:      # noqa: BLE001 - the task's own code: any error is its
                error = JobError(f"the job finished and its checkpoint is written, but task {cfg.task!r}'s "
                                 f"evaluate() raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
        if error:
            summary["error"] = str(error)
        summary["wall_time_s"] = round(time.monotonic() - t_start, 3)
        write_json(out / "summary.json", summary)
        if error:
            raise error
        return summary
    finally:
        meter.close()
        sup.close()


def job_summary(cfg: JobConfig, interrupted: bool, outcome: Outcome, train_s: float,
                rates: tuple[float, float]) -> dict:
    """summary.json (docs/protocol.md, "The summary"), less the final metrics, the wall time and
    the error that ended the job, if one did."""
    led = outcome.ledger
    applied = led.applied
    return {
        "settings": cfg.to_dict(), "job": cfg.job, "interrupted": interrupted,
        "wall_time_s": None, "train_time_s": round(train_s, 3),
        "updates_applied": applied, "updates_rejected": led.rejected,
        "updates_per_s": round(rates[0], 2), "samples": led.samples, "samples_per_s": round(rates[1], 2),
        "version": outcome.version,
        "staleness": {"mean": led.stale_sum / max(1, applied), "max": led.stale_max},
        "checkpoint": str(Path(cfg.out) / "checkpoint"), "final_metrics": {},
        "sync_rounds_missed": [r.dropped for r in led.ordered()],
        "ledger": led.summary(), **outcome.extra,
    }


@contextmanager
def private_files():
    """Inside, what the job writes (checkpoint, summary, metrics, logs, folders) is readable by
    this user alone, as its shared memory is (0600)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def interruptible(*signals: int):
    """Inside, each of `signals` raises KeyboardInterrupt, so that a job stops the one way it
    does on Ctrl-C (children stopped, committed slots drained, checkpoint). Explicit even for
    SIGINT: Python leaves it ignored in a job started ignoring it (`cmd &` in a script). The
    previous handlers come back on the way out."""
    def interrupt(signum, frame):
        if _held["depth"]:
            _held["pending"] = True
            return
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_held = {"depth": 0, "pending": False}


@contextmanager
def uninterrupted():
    """Inside, an interrupt (see `interruptible`) waits and is raised on the way out: for a step
    that must not be cut in two."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["pending"]:
            _held["pending"] = False
            raise KeyboardInterrupt


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
