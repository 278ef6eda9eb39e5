"""Learning-rate schedules, applied by the PS by update count (so every learner sees one
schedule, and a restarted PS or a resumed job continues it exactly: the count lives in the
published ledger).

    constant   lr_t = lr
    cosine     lr_t = lr * (1 + cos(pi * t / T)) / 2      (t capped at T; 0 at the end)
    linear     lr_t = lr * (1 - t / T)

t is the number of updates applied before this one and T the job's total (`--steps`).
"""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("constant", "cosine", "linear")


def schedule(name: str, lr: float, total: int) -> Callable[[int], float] | None:
    """lr_t as a function of t, or None for a constant rate."""
    if name not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, not {name!r}")
    if name == "constant":
        return None
    if total < 1:
        raise ValueError(f"an lr schedule needs the total number of updates, not {total}")
    if name == "cosine":
        return lambda t: lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    return lambda t: lr * max(0.0, 1.0 - t / total)
