"""DOWNPOUR (Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012).

Each learner trains its own copy with local SGD, accumulates its updates, pushes the
accumulation every `n_push` steps (the PS adds it) and fetches the PS's weights every
`n_fetch` steps:

    x   <- x - lr * g,    acc <- acc - lr * g          every step
    push DELTA acc; acc <- 0                           every n_push steps
    x   <- w_PS                                        every n_fetch steps
"""
from __future__ import annotations

from algorithms.protocols import LocalSteps, check_positive
from algorithms.sgd import SGD


class Downpour(LocalSteps):
    name = "downpour"

    def __init__(self, *, lr: float = 0.01, n_push: int = 4, n_fetch: int = 4):
        super().__init__()
        check_positive("learning rate", lr)
        check_positive("n_push", n_push, integer=True)
        check_positive("n_fetch", n_fetch, integer=True)
        self.lr, self.n_push, self.n_fetch = lr, int(n_push), int(n_fetch)
        self.rule = SGD(lr=lr)
        self._acc = None
        self._since_fetch = None

    def step(self, worker, model, closure) -> float:
        if self._since_fetch is None:      # a fresh (or restarted) learner starts from the PS
            worker.pull()
            self._since_fetch = 0
            self._acc = self.scratch(worker).clone().zero_()
        loss = closure()
        g = worker.gradient()
        worker.flat.add_(g, alpha=-self.lr)
        self._acc.add_(g, alpha=-self.lr)
        self._pending += 1
        self._since_fetch += 1
        if self.due(worker, self.n_push):
            worker.push_delta(self._acc, steps=self._pending)
            self._acc.zero_()
            self._pending = 0
        if self._since_fetch >= self.n_fetch:
            worker.pull()
            self._since_fetch = 0
        return float(loss.detach())
