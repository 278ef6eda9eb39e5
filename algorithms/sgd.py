"""SGD: plain stochastic gradient descent, equal to ``torch.optim.SGD`` without momentum.

    g_t     = g_t + weight_decay * w_t          (if weight_decay != 0)
    w_{t+1} = w_t - lr * g_t
"""
from __future__ import annotations

import numpy as np
import torch

from algorithms.rule import Rule, as_tensor


def sgd(w: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, lr: float,
        weight_decay: float) -> None:
    """out = w - lr * (g + weight_decay * w), in one fused pass when weight_decay == 0.

    `out` may alias `w`; `g` is only read.
    """
    if weight_decay:
        g = g.add(w, alpha=weight_decay)
    torch.add(w, g, alpha=-lr, out=out)


class SGD(Rule):
    name = "sgd"

    def __init__(self, *, lr: float = 1e-3, weight_decay: float = 0.0):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self.lr, self.weight_decay = lr, weight_decay

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> None:
        w = as_tensor(weights)
        out = w if out_weights is None else as_tensor(out_weights)
        sgd(w, as_tensor(grad), out, lr=self.lr, weight_decay=self.weight_decay)
