"""ASGD: asynchronous SGD through the parameter server (Dean et al. 2012; Recht et al. 2011).

Every step the learner pulls the latest weights, computes a gradient on its batch and pushes
it; the PS applies it with the server-side rule (SGD, Adam, ...) as it arrives:

    w_pulled   = w_{v}                          (the published version v)
    g          = grad loss(w_pulled; batch)
    w_{t+1}    = rule(w_t, g)                   (t >= v: the gradient is t - v versions stale)
"""
from __future__ import annotations


class ASGD:
    """The learner side of ASGD. `step` runs one step on one batch and returns its loss."""

    name = "asgd"

    def step(self, worker, model, closure) -> float:
        worker.pull()
        loss = closure()   # zeroes the gradients, computes the loss, runs backward
        worker.push_gradient()
        return float(loss.detach())
