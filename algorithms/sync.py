"""SYNC: bulk-synchronous SGD through the PS.

Every round each live learner pushes one gradient; the PS waits for one from every live
learner (a learner that is dead, or slower than `round_timeout` seconds, drops out of that
round and the ledger counts it), averages them and applies the rule once:

    w_{t+1} = rule(w_t, (1/n) * sum_i g_i)       over the n learners in round t

Learners wait for their gradient to be applied before the next step, so all start each
round from the same weights.
"""
from __future__ import annotations

import algorithms
from algorithms.protocols import Protocol, check_positive


class Sync(Protocol):
    name = "sync"
    sync = True
    direct_gradients = True

    def __init__(self, *, lr: float = 0.01, update: str = "sgd", round_timeout: float = 10.0):
        check_positive("round_timeout", round_timeout)
        if update not in algorithms.RULES:
            raise ValueError(f"Invalid update rule for SYNC: {update!r} (one of {', '.join(algorithms.RULES)})")
        self.lr, self.round_timeout, self.update = lr, round_timeout, update
        self.rule = algorithms.get(update, lr=lr)

    def step(self, worker, model, closure) -> float:
        worker.pull()
        loss = closure()
        worker.wait_applied(worker.push_gradient())
        return float(loss.detach())
