"""ADAGRAD: adaptive sub-gradient steps (Duchi, Hazan & Singer 2011), equal to
``torch.optim.Adagrad``.

    g_t     = g_t + weight_decay * w_t                 (if weight_decay != 0)
    clr_t   = lr / (1 + (t - 1) * lr_decay)
    s_t     = s_{t-1} + g_t^2                          (s_0 = initial_accumulator_value)
    w_{t+1} = w_t - clr_t * g_t / (sqrt(s_t) + eps)

State: ``sum`` (s), ``step`` (t, counter). Memory floor: 20 bytes per weight.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets


def adagrad(w: np.ndarray, g: np.ndarray, s: np.ndarray, w_out: np.ndarray, s_out: np.ndarray,
            *, step: float, lr: float, lr_decay: float, eps: float, weight_decay: float) -> bool:
    """One Adagrad step; `step` is t (1 on the first update). Outputs may alias inputs. One pass
    (Note [single-pass kernels] in rule.py); True when every element of `g` is finite."""
    return kernels.adagrad(w, g, s, w_out, s_out, step=step, lr=lr, lr_decay=lr_decay, eps=eps,
                           weight_decay=weight_decay)


class Adagrad(Rule):
    name = "adagrad"
    bytes_per_weight = 20

    def __init__(self, *, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        check_ranges(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                     initial_accumulator_value=initial_accumulator_value, eps=eps)
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.initial_accumulator_value, self.eps = initial_accumulator_value, eps

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {"sum": np.full(n, self.initial_accumulator_value, np.float32),
                "step": step_counter()}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        step = counter(state) + 1
        (s,), (s_out,) = state_views(state, out_state, ["sum"])
        finite = adagrad(w, g, s, w_out, s_out, step=step, lr=self.lr, lr_decay=self.lr_decay,
                         eps=self.eps, weight_decay=self.weight_decay)
        out_state["step"][0] = step
        return finite
