"""SGD: plain stochastic gradient descent (Robbins & Monro 1951), equal to ``torch.optim.SGD``
without momentum.

    g_t     = g_t + weight_decay * w_t          (if weight_decay != 0)
    w_{t+1} = w_t - lr * g_t

State: none. Memory floor: 12 bytes per weight (read w, g; write w).
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, as_array, check_ranges, kernels, vectors


def sgd(w: np.ndarray, g: np.ndarray, out: np.ndarray, *, lr: float,
        weight_decay: float) -> bool:
    """out = w - lr * (g + weight_decay * w), in one pass over memory (Note [single-pass
    kernels] in rule.py); True when every element of `g` is finite.

    `out` may alias `w`; `g` is only read.
    """
    return kernels.sgd(w, g, out, lr=lr, weight_decay=weight_decay)


class SGD(Rule):
    name = "sgd"
    bytes_per_weight = 12

    def __init__(self, *, lr: float = 1e-3, weight_decay: float = 0.0):
        check_ranges(lr=lr, weight_decay=weight_decay)
        self.lr, self.weight_decay = lr, weight_decay

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g = vectors(weights, grad)
        out = w if out_weights is None else as_array(out_weights)
        return sgd(w, g, out, lr=self.lr, weight_decay=self.weight_decay)
