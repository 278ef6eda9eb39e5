"""The interface of learner-side protocols (how a learner talks to the PS).

A protocol takes its hyper-parameters as keyword-only constructor arguments (validated
eagerly) and provides:

- ``rule``: the server-side rule the PS applies to the GRADIENTs it pushes (protocols that push
  only DELTAs still name one, for the arena's layout);
- ``step(worker, model, closure) -> float``: one step on one batch; ``closure()`` zeroes the
  gradients, computes the loss, runs backward and returns the loss;
- ``finish(worker, model)``: optional, at the end of the learner's work (flush what is pending).

The worker offers ``pull()`` (latest weights into the model), ``fetch(out)`` (latest weights
into a buffer), ``push_gradient()``, ``push_delta(delta, steps=n)``, ``wait_applied(seq)``,
``gradient(out)`` (the model's gradients as one flat tensor), ``flat`` (the model's parameters
as one flat tensor), ``learners``, ``step`` and ``quota``.
"""
from __future__ import annotations

import torch


class Protocol:
    name = "protocol"
    sync = False          # True: the PS applies one averaged gradient per round of all learners
    # True: every gradient is pushed as backward computed it, so the worker has backward write
    # it straight into a claimed slot (no copy); False: gradients stay local (local steps)
    direct_gradients = False

    def hyper(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "rule"}

    def step(self, worker, model, closure) -> float:
        raise NotImplementedError

    def finish(self, worker, model) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"algorithms.protocol({self.name!r}, {args})"


def check_positive(name: str, value, integer: bool = False) -> None:
    if value <= 0 or (integer and int(value) != value):
        kind = "a positive integer" if integer else "positive"
        raise ValueError(f"Invalid {name}: {value} (must be {kind})")


class LocalSteps(Protocol):
    """Shared by the protocols that take local SGD steps and push a DELTA every few steps."""

    def __init__(self):
        self._pending = 0     # local steps since the last push
        self._buf = None      # scratch for gradients and deltas, one flat tensor

    def due(self, worker, every: int) -> bool:
        """Push after `every` local steps, or earlier when the learner's quota runs out."""
        if self._pending >= every:
            return True
        return worker.quota is not None and worker.step + self._pending >= worker.quota

    def scratch(self, worker) -> torch.Tensor:
        if self._buf is None:
            self._buf = torch.zeros_like(worker.flat)
        return self._buf
