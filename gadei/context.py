"""Which learner, incarnation and sequence number the code running now works for.

Like `torch.distributed.get_rank()`: a task may ask (the `probe` task derives its gradient
from the sequence number it is about to commit); outside a learner it is None.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Context:
    learner: int
    learners: int
    incarnation: int
    seq: int        # the sequence number the next push will carry
    step: int       # steps this learner has completed


_current: Context | None = None


def current() -> Context | None:
    return _current


def _set(ctx: Context | None) -> None:
    global _current
    _current = ctx
