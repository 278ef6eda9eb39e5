"""ADAM: adaptive moment estimation (Kingma & Ba 2015), with the AMSGrad variant (Reddi, Kale &
Kumar 2018) and decoupled weight decay, i.e. AdamW (Loshchilov & Hutter 2019). Equal to
``torch.optim.Adam`` (``decoupled_weight_decay=True``: ``torch.optim.AdamW``); note eps is added
*after* the bias-corrected square root.

    w_t     = w_t * (1 - lr * weight_decay)           (if decoupled_weight_decay)
    g_t     = g_t + weight_decay * w_t                (if weight_decay != 0, not decoupled)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t     = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    vmax_t  = max(vmax_{t-1}, v_t)                    (amsgrad; then v_t := vmax_t below)
    w_{t+1} = w_t - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

State: ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (vmax, if amsgrad), ``step``
(t, counter). Memory floor: 28 bytes per weight, 36 with amsgrad.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets, zeros


def adam(w: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, w_out: np.ndarray,
         m_out: np.ndarray, v_out: np.ndarray, *, step: float, lr: float, beta1: float,
         beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool = False,
         amsgrad: bool = False, vmax: np.ndarray | None = None,
         vmax_out: np.ndarray | None = None) -> bool:
    """One Adam step; `step` is t (1 on the first update); `vmax`/`vmax_out` needed with
    amsgrad. Outputs may alias inputs. One pass (Note [single-pass kernels] in rule.py); True
    when every element of `g` is finite."""
    if amsgrad and (vmax is None or vmax_out is None):
        raise ValueError("adam: amsgrad needs vmax and vmax_out")
    extra = (vmax, vmax_out) if amsgrad else ()
    return kernels.adam(w, g, m, v, w_out, m_out, v_out, *extra, step=step, lr=lr, beta1=beta1,
                        beta2=beta2, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay)


class Adam(Rule):
    name = "adam"
    bytes_per_weight = 28

    def __init__(self, *, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = False):
        check_ranges(lr=lr, eps=eps, beta1=beta1, beta2=beta2, weight_decay=weight_decay)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.amsgrad = weight_decay, bool(amsgrad)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.bytes_per_weight = 36 if self.amsgrad else 28

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        state = {"exp_avg": zeros(n), "exp_avg_sq": zeros(n)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = zeros(n)
        state["step"] = step_counter()
        return state

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        step = counter(state) + 1
        keys = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq" if self.amsgrad else None]
        (m, v, x), (m_out, v_out, x_out) = state_views(state, out_state, keys)
        finite = adam(w, g, m, v, w_out, m_out, v_out, step=step, lr=self.lr, beta1=self.beta1,
                      beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay,
                      decoupled_weight_decay=self.decoupled_weight_decay, amsgrad=self.amsgrad,
                      vmax=x, vmax_out=x_out)
        out_state["step"][0] = step
        return finite
