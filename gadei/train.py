"""`gadei.train()`: run a job to the end and return its summary (the CLI's `gadei train` too).

Writes into `out/`: `summary.json` (settings, times, rates, final metrics, the ledger),
`metrics.jsonl` (one line a second), `checkpoint` (the final state) and `logs/`.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gadei import arena as A
from gadei.job import JobConfig
from gadei.supervisor import JobError, Supervisor, interruptible, write_json
from gadei import task as T


class _Meter:
    """Samples the arena once a second into metrics.jsonl and the progress bar."""

    def __init__(self, sup: Supervisor, path: Path, progress: bool):
        self.sup, self.file = sup, open(path, "a")
        cfg = sup.cfg
        total = cfg.steps if cfg.steps is not None else None
        self.bar = tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True,
                        desc=f"{cfg.task}/{cfg.optimizer} x{cfg.learners}")
        self.t0 = time.monotonic()
        self.last = (self.t0, 0, 0)
        self.first = None    # (t, updates) when the first update was seen
        self.samples_at_first = 0
        self.end = (self.t0, 0, 0)
        self.evaluator = Evaluator(cfg) if cfg.eval_every else None
        self.last_eval = self.t0

    def __call__(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if now - self.last[0] < 1.0:
            return
        self.record(now)

    def record(self, now: float, final: bool = False) -> None:
        a, cfg = self.sup.arena, self.sup.cfg
        v = a.published()
        updates = v - self.sup.start_version
        steps = sum(a.ctl.load(a.lw(i, A.L_STEP)) for i in range(cfg.learners))
        samples = sum(a.ctl.load(a.lw(i, A.L_SAMPLES)) for i in range(cfg.learners))
        losses = [A.bits_f64(a.ctl.load(a.lw(i, A.L_LOSS))) for i in range(cfg.learners)]
        pulled = [a.ctl.load(a.lw(i, A.L_PULLED)) for i in range(cfg.learners)]
        dt = max(now - self.last[0], 1e-9)
        if self.first is None and updates > 0:
            self.first, self.samples_at_first = (self.last[0], self.last[1]), self.last[2]
        row = {"t": round(now - self.t0, 3), "version": v, "updates": updates,
               "updates_per_s": round((updates - self.last[1]) / dt, 2),
               "samples": samples, "samples_per_s": round((samples - self.last[2]) / dt, 2),
               "loss": float(np.mean(losses)), "staleness": float(np.mean([max(0, v - p) for p in pulled])),
               "steps": steps, "learners_alive": len(self.sup.learners),
               "restarts": dict(self.sup.restarts)}
        if self.evaluator is not None and (now - self.last_eval >= self.sup.cfg.eval_every or final):
            _, weights, _, _ = self.sup.snapshot()
            row["eval"] = self.evaluator(weights)
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
        return (self.end[1] - self.first[1]) / dt, (self.end[2] - self.samples_at_first) / dt

    def close(self) -> None:
        self.bar.close()
        self.file.close()


def train(task="probe", *, task_options: dict | None = None, optimizer: str = "sgd",
          learners: int = 2, steps: int | None = None, epochs: int | None = None,
          out: str | Path = "runs/job", seed: int = 0, checkpoint_every: int = 0,
          resume: str | Path | None = None, progress: bool = False, evaluate: bool = True,
          job: str | None = None, lease: float = 60.0, slots: int = 2, eval_every: float = 0.0,
          lr_schedule: str = "constant", lr_warmup: int = 0, **hyper) -> dict:
    """Train `task` through the shared-memory PS with `learners` processes; return the summary.

    `task` is a built-in name, "package.module:Class", a task class or instance; `hyper` are
    the optimizer's hyper-parameters (e.g. lr=0.1). Blocks until the job ends.
    """
    name, options = T.spec(task, task_options)
    cfg = JobConfig(task=name, task_options=options, optimizer=optimizer, hyper=hyper, lr_schedule=lr_schedule,
                    lr_warmup=lr_warmup,
                    learners=learners, steps=steps, epochs=epochs, seed=seed, out=str(out),
                    job=job, checkpoint_every=checkpoint_every,
                    resume=str(resume) if resume else None, lease=lease, slots=slots,
                    progress=progress, eval_every=eval_every)
    return run(cfg, evaluate=evaluate)


def run(cfg: JobConfig, evaluate: bool = True) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(cfg)
    sup.acquire()
    with interruptible(signal.SIGINT, signal.SIGTERM):
        return _run(cfg, sup, out, evaluate)


def _run(cfg: JobConfig, sup: Supervisor, out: Path, evaluate: bool) -> dict:
    meter = None
    t_start = time.monotonic()
    try:
        sup.build()
        meter = _Meter(sup, out / "metrics.jsonl", cfg.progress)
        try:
            train_s = sup.run(on_tick=meter)
        except KeyboardInterrupt:
            sup.interrupted = True
            sup.log("gadei: interrupted; stopping the learners and the PS, saving a checkpoint")
            sup.stop_children()
            train_s = time.monotonic() - t_start
        meter.record(time.monotonic(), final=True)
        sup.stop_children()
        time_split = sup.time_split(train_s)
        version = sup.write_checkpoint(final=not sup.interrupted)
        _, weights, _, ledger = sup.snapshot()
        updates_per_s, samples_per_s = meter.rates()
        summary = {
            "settings": cfg.to_dict(), "job": cfg.job, "interrupted": sup.interrupted,
            "wall_time_s": None, "train_time_s": round(train_s, 3),
            "updates_applied": ledger["updates"], "updates_rejected": ledger["rejects"],
            "updates_per_s": round(updates_per_s, 2), "samples": sum(p[2] for p in ledger["progress"]),
            "samples_per_s": round(samples_per_s, 2), "version": version,
            "staleness": {"mean": ledger["stale_sum"] / max(1, ledger["updates"]),
                          "max": ledger["stale_max"]},
            "restarts": sup.restarts, "checkpoint": str(out / "checkpoint"),
            "sync_rounds_missed": ledger["dropped"], "time_split": time_split,
            "ledger": sup.summary_ledger(ledger),
        }
        sup.close()
        summary["final_metrics"] = evaluate_weights(cfg, weights) if evaluate and not sup.interrupted else {}
        summary["wall_time_s"] = round(time.monotonic() - t_start, 3)
        write_json(out / "summary.json", summary)
        return summary
    finally:
        if meter:
            meter.close()
        sup.close()


class Evaluator:
    """The task and a model built once; `evaluator(weights)` evaluates those weights."""

    def __init__(self, cfg: JobConfig):
        torch.set_num_threads(1)
        self.task = T.build(cfg.task, cfg.task_options)
        torch.manual_seed(cfg.seed)
        self.model = self.task.build_model()

    def load(self, weights: np.ndarray | dict) -> torch.nn.Module:
        """Copy `weights` (flat, or a name -> array mapping) into the model; return it."""
        with torch.no_grad():
            if isinstance(weights, dict):
                for name, p in self.model.named_parameters():
                    p.copy_(torch.from_numpy(np.asarray(weights[name])).reshape(p.shape))
            else:
                off = 0
                for p in self.model.parameters():
                    p.copy_(torch.from_numpy(weights[off:off + p.numel()]).reshape(p.shape))
                    off += p.numel()
        return self.model

    def __call__(self, weights, split: str | None = None) -> dict:
        model = self.load(weights)
        model.eval()
        try:
            with torch.no_grad():
                return self.task.evaluate(model, split or getattr(self.task, "eval_split", "valid"))
        finally:
            model.train()


def evaluate_weights(cfg: JobConfig, weights, split: str | None = None) -> dict:
    return Evaluator(cfg)(weights, split)


def load_model(path, data_dir: str | None = None):
    """(task, model) of a checkpoint: its task rebuilt with its options (`data_dir` replacing
    the one it was trained with), its model holding the checkpoint's weights, in eval mode."""
    from gadei import checkpoint
    ck = checkpoint.load(path)
    cfg = JobConfig(**{**ck["meta"]["config"], "resume": None, "out": str(path)})
    cfg.task_options = T.with_data_dir(cfg.task, data_dir, dict(cfg.task_options))
    ev = Evaluator(cfg)
    return ev.task, ev.load(ck["weights"]).eval()


__all__ = ["train", "run", "JobError", "evaluate_weights", "Evaluator", "load_model"]
