"""Learning-rate schedules, applied by the PS by update count (so every learner sees one
schedule, and a restarted PS or a resumed job continues it exactly: the count lives in the
published ledger).

    constant   lr_t = lr
    cosine     lr_t = lr * (F + (1 - F) * (1 + cos(pi * t / T)) / 2)     (t capped at T)
    linear     lr_t = lr * (F + (1 - F) * (1 - t / T))

t is the number of updates applied before this one, T the job's total (`--steps`) and F the
floor (`--lr-floor`, 0 by default: the rate decays to 0; 0.1: to a tenth of lr, as the asr
task's measured loop). A warm-up of W updates (`--lr-warmup`) multiplies any of them by
min(1, (t + 1) / W): a Transformer trained at a high lr from its first update can diverge or stall.
"""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("constant", "cosine", "linear")


def schedule(name: str, lr: float, total: int, warmup: int = 0,
             floor: float = 0.0) -> Callable[[int], float] | None:
    """lr_t as a function of t, or None for a constant rate without warm-up."""
    if name not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, not {name!r}")
    if warmup < 0:
        raise ValueError(f"lr warm-up must be >= 0 updates, not {warmup}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"lr floor must be a fraction of lr in [0, 1], not {floor}")
    if name == "constant":
        if warmup == 0:
            return None
        decay = lambda t: lr
    elif total < 1:
        raise ValueError(f"an lr schedule needs the total number of updates, not {total}")
    elif name == "cosine":
        decay = lambda t: lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total)))
    else:
        decay = lambda t: lr * (floor + (1.0 - floor) * max(0.0, 1.0 - t / total))
    if warmup == 0:
        return decay
    return lambda t: decay(t) * min(1.0, (t + 1) / warmup)
