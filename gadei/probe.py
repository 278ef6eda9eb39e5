"""The probe: the core's own demo and exactly-once check (docs/protocol.md, "The probe").

One parameter `w` of `size` float32 zeros. The gradient learner i commits as its sequence
number k has element j equal to ((i * 7919 + k * 104729 + j) % 17) - 8. With SGD at lr 1 the
final weights are exactly minus the sum of the applied gradients (all sums are small integers,
exact in float32), so anyone can recompute them from the ledger. With `probe_nan_every` n > 0
the gradient of every k with k % n == n - 1 is NaN (the PS rejects it): the rejected numbers
are known without the ledger, so the audit stays exact past the ledger's window of rejections.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gadei import ledger as L
from gadei.context import current
from gadei.task import option


def gradient(i: int, k: int, size: int) -> np.ndarray:
    j = np.arange(size, dtype=np.int64)
    return (((i * 7919 + k * 104729 + j) % 17) - 8).astype(np.float32)


@dataclass
class Probe:
    """Deterministic integer gradients: the exactly-once audit (no data, no learning)."""
    probe_size: int = option(1024, "float32 elements of the one parameter w")
    probe_nan_every: int = option(0, "n > 0: the gradient of every seq k with k % n == n - 1 is NaN")
    probe_hold: float = option(0.0, "s > 0: learner 0 holds the weights it computes on for s seconds "
                               "each step and fails if they change meanwhile (no torn read)")
    eval_split = "train"
    # SGD at lr 1: the final weights are minus the sum of the applied integer gradients, exactly
    recipe: ClassVar[dict] = {"optimizer": "sgd", "lr": 1.0}

    def __post_init__(self):
        if self.probe_size < 1:
            raise ValueError(f"probe_size must be positive, not {self.probe_size}")
        if self.probe_hold < 0:
            raise ValueError(f"probe_hold must be 0 (never) or positive, not {self.probe_hold}")
        if self.probe_nan_every < 0:
            raise ValueError(f"probe_nan_every must be 0 (never) or positive, not {self.probe_nan_every}")

    def build_model(self) -> torch.nn.Module:
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.zeros(self.probe_size))
        return model

    def batches(self, learner: int, learners: int, seed: int):
        return iter([None] * 1000)

    def batch_size(self, batch) -> int:
        return 1

    def loss(self, model, batch) -> torch.Tensor:
        ctx = current()
        if ctx is None:
            raise RuntimeError("the probe's gradient depends on the sequence number: run it in a learner")
        if self.probe_hold and ctx.learner == 0:
            # while learner 0 computes on its weights (in place on a pinned buffer, or its copy),
            # the other learners' updates are published: they must not change under it
            seen = model.w.detach().clone()
            time.sleep(self.probe_hold)
            if not torch.equal(seen, model.w.detach()):
                raise RuntimeError("gadei probe: the weights changed while learner 0 computed on them "
                                   "(a torn read)")
        g = torch.from_numpy(gradient(ctx.learner, ctx.seq, self.probe_size))
        if poisoned(ctx.seq, self.probe_nan_every):
            g = torch.full_like(g, float("nan"))
        return (model.w * g).sum()     # d loss / d w = g, exactly

    def evaluate(self, model, split: str) -> dict[str, float]:
        if split != self.eval_split:   # no data: its one "split" is the weights themselves
            raise ValueError(f"the probe has no split {split!r}: it has only {self.eval_split!r} "
                             "(it scores the weights, not data)")
        w = model.w.detach()
        return {"w_abs_sum": float(w.abs().sum()), "w_finite": float(torch.isfinite(w).all())}


def poisoned(k: int, nan_every: int) -> bool:
    return nan_every > 0 and k % nan_every == nan_every - 1


def expected_weights(ledger: dict, size: int, scale: float = 1.0, nan_every: int = 0) -> np.ndarray:
    """-scale times the sum of every applied gradient in `ledger` (a summary's "ledger").

    Above a learner's horizon the ledger lists its applied numbers; below it (a job with more
    rejections than the ledger's window) they are the committed ones that were not poisoned."""
    w = np.zeros(size, np.float64)
    for i, entry in ledger.items():
        h = entry.get("horizon", -1)
        below = [k for k in L.expand(entry["committed"]) if k <= h and not poisoned(k, nan_every)]
        for k in below + L.expand(entry["applied"]):
            w -= gradient(int(i), k, size)
    return (scale * w).astype(np.float32)


def weight_scale(settings: dict) -> float | None:
    """What one applied sequence number k of learner i adds to w, as a multiple of -g(i, k).

    ASGD with SGD: lr. DOWNPOUR: each push carries n_push local steps of -lr * g(i, k) (the
    probe's gradient depends only on the sequence number the steps will be pushed as), so
    lr * n_push, when every learner's steps divide by n_push. None where the weights depend
    on timing (EASGD, EAMSGD, SYNC, other rules, an lr schedule or warm-up: the lr of an update
    depends on its place in the order the PS applied them, which the ledger does not keep):
    only the ledger is audited then.
    """
    opt, hyper = settings["optimizer"], settings["hyper"]
    if settings.get("lr_schedule", "constant") != "constant" or settings.get("lr_warmup", 0):
        return None
    if opt in ("sgd", "asgd") and not hyper.get("weight_decay"):
        return hyper.get("lr", 1e-3)
    if opt == "downpour":
        n_push, lr = hyper.get("n_push", 4), hyper.get("lr", 0.01)
        steps, learners = settings["steps"], settings["learners"]
        if steps is not None and steps % (learners * n_push) == 0:
            return lr * n_push
    return None


def audit(out_dir) -> list[str]:
    """Every exactly-once violation of a finished probe job in `out_dir` (empty if none)."""
    import json
    from pathlib import Path
    from gadei import checkpoint
    summary = json.loads((Path(out_dir) / "summary.json").read_text())
    ck = checkpoint.load(out_dir)
    problems = []
    nan_every = summary["settings"].get("task_options", {}).get("probe_nan_every", 0)
    for i, entry in summary["ledger"].items():
        problems += [f"learner {i}: {p}" for p in L.audit(entry)]
        poison = sum(poisoned(k, nan_every) for k in L.expand(entry["committed"]))
        if nan_every and (L.rejected_count(entry) != poison
                          or not all(poisoned(k, nan_every) for k in entry["rejected"])):
            problems.append(f"learner {i}: rejected {L.rejected_count(entry)} ({entry['rejected'][:5]}...), "
                            f"but {poison} committed gradients were NaN")
    scale = weight_scale(summary["settings"])
    if scale is None:
        return problems
    size = ck["weights"]["w"].size
    if any(e.get("horizon", -1) >= 0 for e in summary["ledger"].values()) and not nan_every:
        return problems + ["the ledger counts rejections it no longer lists: the weights cannot be audited"]
    want = expected_weights(summary["ledger"], size, scale, nan_every)
    got = ck["weights"]["w"]
    if not np.array_equal(want, got):
        bad = np.flatnonzero(want != got)
        problems.append(f"weights differ from minus the sum of applied gradients at {bad.size} "
                        f"elements (first {bad[0]}: {got[bad[0]]} != {want[bad[0]]})")
    return problems
