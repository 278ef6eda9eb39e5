"""ASGD: asynchronous SGD through the parameter server (Dean et al. 2012; Recht et al. 2011).

Every step the learner pulls the latest weights, computes a gradient on its batch and pushes
it; the PS applies it with the server-side rule as it arrives:

    w_pulled   = w_v                            (the published version v)
    g          = grad loss(w_pulled; batch)
    w_{t+1}    = rule(w_t, g)                   (t >= v: the gradient is t - v versions stale)

`--optimizer adam` (any rule name) runs ASGD with that rule; `--optimizer asgd` with SGD.
"""
from __future__ import annotations

from algorithms.protocols import Protocol
from algorithms.sgd import SGD


class ASGD(Protocol):
    name = "asgd"
    direct_gradients = True

    def __init__(self, *, lr: float = 1e-3, rule=None):
        self.rule = rule if rule is not None else SGD(lr=lr)
        self.lr = lr

    def step(self, worker, model, closure) -> float:
        worker.pull()
        loss = closure()
        worker.push_gradient()
        return float(loss.detach())
