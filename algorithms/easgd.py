"""EASGD and EAMSGD (Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD",
NIPS 2015), asynchronous form (their Algorithm 1 and 2).

Each learner i runs local steps; every `tau` steps it fetches the centre x~ and exchanges the
elastic difference with it:

    d   = alpha * (x_i - x~),   alpha = beta / p           (p learners; paper: beta = 0.9)
    push DELTA d                 (the PS: x~ <- x~ + d)
    x_i <- x_i - d

Local steps: EASGD   x_i <- x_i - lr * g(x_i)
             EAMSGD  v <- delta * v - lr * g(x_i + delta * v);  x_i <- x_i + v  (Nesterov)
"""
from __future__ import annotations

import sys

import numpy as np

from algorithms.protocols import LocalSteps, check_positive
from algorithms.sgd import SGD


class EASGD(LocalSteps):
    name = "easgd"

    def __init__(self, *, lr: float = 0.01, tau: int = 4, beta: float = 0.9):
        super().__init__()
        check_positive("learning rate", lr)
        check_positive("tau", tau, integer=True)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"Invalid beta: {beta} (the moving rate alpha = beta / p needs 0 < beta <= 1)")
        self.lr, self.tau, self.beta = lr, int(tau), beta
        self.rule = SGD(lr=lr)
        self._centre = None

    def restart(self) -> None:
        """Forget the local state beyond the weights (EAMSGD: the momentum)."""

    def local_step(self, worker, closure):
        loss = closure()
        worker.flat.add_(worker.gradient(), alpha=-self.lr)
        return loss

    def step(self, worker, model, closure) -> float:
        if self._centre is None:       # a fresh (or restarted) learner starts at the centre
            worker.pull()
            self._centre = np.empty(worker.flat.numel(), np.float32)
        loss = self.local_step(worker, closure)
        self._pending += 1
        if self.due(worker, self.tau):
            worker.fetch(self._centre)
            d = self.scratch(worker)
            alpha = self.beta / worker.learners
            d.copy_(worker.flat).sub_(torch_from(self._centre)).mul_(alpha)
            worker.push_delta(d, steps=self._pending)      # the PS rejects a non-finite one
            if bool(d.isfinite().all()):
                worker.flat.sub_(d)
            else:                      # a NaN or Inf stays in local weights: start again from the centre
                print(f"gadei: learner {worker.i}: its local weights are not finite after step {worker.step}; "
                      "it starts again from the centre", file=sys.stderr, flush=True)
                worker.pull()
                self.restart()
            self._pending = 0
        return float(loss.detach())


class EAMSGD(EASGD):
    name = "eamsgd"

    def __init__(self, *, lr: float = 0.01, tau: int = 4, beta: float = 0.9, delta: float = 0.99):
        super().__init__(lr=lr, tau=tau, beta=beta)
        if not 0.0 <= delta < 1.0:
            raise ValueError(f"Invalid momentum delta: {delta} (needs 0 <= delta < 1)")
        self.delta = delta
        self._v = None

    def restart(self) -> None:
        self._v = None

    def local_step(self, worker, closure):
        x = worker.flat
        if self._v is None:
            self._v = x.clone().zero_()
        x.add_(self._v, alpha=self.delta)          # look ahead: the gradient at x + delta v
        loss = closure()
        x.sub_(self._v, alpha=self.delta)
        g = worker.gradient()
        self._v.mul_(self.delta).add_(g, alpha=-self.lr)
        x.add_(self._v)
        return loss


def torch_from(a: np.ndarray):
    import torch
    return torch.from_numpy(a)
