"""The meter: samples a running job's arena once a second into metrics.jsonl and the progress bar."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gadei import arena as A
from gadei.evaluate import Evaluator


class Meter:
    """Called on every supervisor round; writes a row a second (and an evaluation every
    `eval_every` seconds), and knows the steady rates from the first update to the last."""

    def __init__(self, sup, path: Path, progress: bool):
        self.sup, self.file = sup, open(path, "a")
        cfg = sup.cfg
        self.bar = tqdm(total=cfg.steps, unit="step", disable=not (progress and sys.stderr.isatty()),
                        dynamic_ncols=True,
                        desc=f"{cfg.task}/{cfg.optimizer} x{cfg.learners}")
        self.t0 = time.monotonic()
        self.last = (self.t0, 0, 0)      # (t, updates, samples) of the last row
        self.first = None                # (t, updates, samples) when the first update was seen
        self.end = (self.t0, 0, 0)       # ... of the last row that saw an update
        self.evaluator = Evaluator(cfg) if cfg.eval_every else None
        self.last_eval = self.t0

    def __call__(self, sup) -> None:
        now = time.monotonic()
        if now - self.last[0] >= 1.0:
            self.record(now)

    def record(self, now: float, final: bool = False) -> None:
        a, cfg = self.sup.arena, self.sup.cfg
        v = a.job.published
        updates = v - self.sup.start_version
        words = [a.learner(i) for i in range(cfg.learners)]
        steps = sum(lw.step for lw in words)
        samples = sum(lw.samples for lw in words)
        dt = max(now - self.last[0], 1e-9)
        if self.first is None and updates > 0:
            self.first = self.last
        row = {"t": round(now - self.t0, 3), "version": v, "updates": updates,
               "updates_per_s": round((updates - self.last[1]) / dt, 2),
               "samples": samples, "samples_per_s": round((samples - self.last[2]) / dt, 2),
               "loss": float(np.mean([A.bits_f64(lw.loss) for lw in words])),
               "staleness": float(np.mean([max(0, v - lw.pulled) for lw in words])),
               "steps": steps, "learners_alive": len(self.sup.learners),
               "restarts": dict(self.sup.restarts)}
        if self.evaluator is not None and (now - self.last_eval >= cfg.eval_every or final):
            _, weights, _, _ = self.sup.snapshot()
            row["eval"] = self.evaluator(a.layout.named(weights))
            self.last_eval = time.monotonic()
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.bar.n = min(steps, self.bar.total or steps)
        self.bar.set_postfix(upd_s=row["updates_per_s"], stale=f"{row['staleness']:.1f}",
                             loss=f"{row['loss']:.4g}", refresh=False)
        self.bar.refresh()
        if updates > self.end[1]:
            self.end = (now, updates, samples)   # the steady window ends at the last update
        self.last = (now, updates, samples)

    def rates(self) -> tuple[float, float]:
        """Updates/s and samples/s from the first update seen to the last (start-up and
        shutdown excluded)."""
        if self.first is None:
            return 0.0, 0.0
        dt = max(self.end[0] - self.first[0], 1e-9)
        return (self.end[1] - self.first[1]) / dt, (self.end[2] - self.first[2]) / dt

    def close(self) -> None:
        self.bar.close()
        self.file.close()
