"""ADAMAX: Adam with the infinity norm (Kingma & Ba 2015, section 7.1), equal to
``torch.optim.Adamax``; note eps is added to |g| *inside* the max.

    g_t     = g_t + weight_decay * w_t                (if weight_decay != 0)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * g_t
    u_t     = max(beta2 * u_{t-1}, |g_t| + eps)
    w_{t+1} = w_t - lr / (1 - beta1^t) * m_t / u_t

State: ``exp_avg`` (m), ``exp_inf`` (u), ``step`` (t, counter). Memory floor: 28 bytes per weight.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets, zeros


def adamax(w: np.ndarray, g: np.ndarray, m: np.ndarray, u: np.ndarray, w_out: np.ndarray,
           m_out: np.ndarray, u_out: np.ndarray, *, step: float, lr: float, beta1: float,
           beta2: float, eps: float, weight_decay: float) -> bool:
    """One Adamax step; `step` is t (1 on the first update). Outputs may alias inputs. One pass
    (Note [single-pass kernels] in rule.py); True when every element of `g` is finite."""
    return kernels.adamax(w, g, m, u, w_out, m_out, u_out, step=step, lr=lr, beta1=beta1,
                          beta2=beta2, eps=eps, weight_decay=weight_decay)


class Adamax(Rule):
    name = "adamax"
    bytes_per_weight = 28

    def __init__(self, *, lr: float = 2e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        check_ranges(lr=lr, eps=eps, beta1=beta1, beta2=beta2, weight_decay=weight_decay)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay = weight_decay

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {"exp_avg": zeros(n), "exp_inf": zeros(n), "step": step_counter()}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        step = counter(state) + 1
        (m, u), (m_out, u_out) = state_views(state, out_state, ["exp_avg", "exp_inf"])
        finite = adamax(w, g, m, u, w_out, m_out, u_out, step=step, lr=self.lr, beta1=self.beta1,
                        beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay)
        out_state["step"][0] = step
        return finite
