"""ADADELTA: an adaptive learning rate method (Zeiler 2012), equal to ``torch.optim.Adadelta``.

    g_t     = g_t + weight_decay * w_t                            (if weight_decay != 0)
    v_t     = rho * v_{t-1} + (1 - rho) * g_t^2
    d_t     = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
    u_t     = rho * u_{t-1} + (1 - rho) * d_t^2
    w_{t+1} = w_t - lr * d_t

State: ``square_avg`` (v), ``acc_delta`` (u), ``step`` (t, counter). Memory floor: 28 bytes per
weight.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets, zeros


def adadelta(w: np.ndarray, g: np.ndarray, v: np.ndarray, u: np.ndarray, w_out: np.ndarray,
             v_out: np.ndarray, u_out: np.ndarray, *, lr: float, rho: float, eps: float,
             weight_decay: float) -> bool:
    """One Adadelta step. Outputs may alias inputs. One pass (Note [single-pass kernels] in
    rule.py); True when every element of `g` is finite."""
    return kernels.adadelta(w, g, v, u, w_out, v_out, u_out, lr=lr, rho=rho, eps=eps,
                            weight_decay=weight_decay)


class Adadelta(Rule):
    name = "adadelta"
    bytes_per_weight = 28

    def __init__(self, *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0):
        check_ranges(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
        self.lr, self.rho, self.eps, self.weight_decay = lr, rho, eps, weight_decay

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {"square_avg": zeros(n), "acc_delta": zeros(n), "step": step_counter()}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        (v, u), (v_out, u_out) = state_views(state, out_state, ["square_avg", "acc_delta"])
        finite = adadelta(w, g, v, u, w_out, v_out, u_out, lr=self.lr, rho=self.rho,
                          eps=self.eps, weight_decay=self.weight_decay)
        out_state["step"][0] = counter(state) + 1
        return finite
