"""A small real model for tests, used as a user's task would be ("tests.tasks:Blobs").

Three Gaussian blobs in 8 dimensions, classified by a two-layer MLP; deterministic.
"""
from __future__ import annotations

import torch


class Blobs:
    eval_split = "valid"

    def __init__(self, *, n: int = 1200, batch: int = 32, hidden: int = 32):
        self.n, self.batch, self.hidden = n, batch, hidden
        g = torch.Generator().manual_seed(1234)
        centres = torch.randn(3, 8, generator=g) * 2.0
        y = torch.arange(n) % 3
        self.x = centres[y] + torch.randn(n, 8, generator=g)
        self.y = y

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, self.hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(self.hidden, 3))

    def batches(self, learner: int, learners: int, seed: int):
        idx = torch.arange(learner, self.n - 200, learners)
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        for s in range(0, len(idx) - self.batch + 1, self.batch):
            b = idx[s:s + self.batch]
            yield self.x[b], self.y[b]

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, split: str) -> dict[str, float]:
        x, y = (self.x[-200:], self.y[-200:]) if split == "valid" else (self.x[:-200], self.y[:-200])
        with torch.no_grad():
            logits = model(x)
        return {"loss": float(torch.nn.functional.cross_entropy(logits, y)),
                "accuracy": float((logits.argmax(1) == y).float().mean())}


class Poisoned(Blobs):
    """Blobs whose loss is NaN for every sequence number k with k % 5 == 3 (to test rejection)."""

    def loss(self, model, batch) -> torch.Tensor:
        from gadei.context import current
        loss = super().loss(model, batch)
        return loss * float("nan") if current().seq % 5 == 3 else loss


class FailsFrom(Blobs):
    """Blobs whose loss raises on learner 1 from its third step on: a deterministic failure."""

    def loss(self, model, batch) -> torch.Tensor:
        from gadei.context import current
        ctx = current()
        if ctx.learner == 1 and ctx.step >= 3:
            raise RuntimeError(f"deterministic failure at step {ctx.step}")
        return super().loss(model, batch)


class SlowSteps(Blobs):
    """Blobs whose every step takes `pause` seconds more (longer than a short lease)."""

    def __init__(self, *, pause: float = 6.0):
        super().__init__()
        self.pause = pause

    def loss(self, model, batch) -> torch.Tensor:
        import time
        time.sleep(self.pause)
        return super().loss(model, batch)


class BadEvaluate(Blobs):
    """Blobs whose evaluate() raises."""

    def evaluate(self, model, split: str) -> dict[str, float]:
        raise KeyError("no such metric")


class WritesWeights(Blobs):
    """Blobs whose loss scales the first layer's weights in place (as nn.Embedding(max_norm=...)
    renormalises its rows): a task that needs private weights, not the zero-copy pull."""

    def loss(self, model, batch) -> torch.Tensor:
        with torch.no_grad():
            model[0].weight.mul_(1.0)
        return super().loss(model, batch)
