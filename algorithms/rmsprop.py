"""RMSPROP: divide the gradient by a running root mean square (Hinton, Srivastava & Swersky,
Neural Networks for Machine Learning, lecture 6e, 2012); ``centered`` subtracts the squared
running mean (Graves 2013, "Generating sequences with recurrent neural networks", eq. 38-45).
Equal to ``torch.optim.RMSprop``; note eps is added *outside* the square root.

    g_t     = g_t + weight_decay * w_t                    (if weight_decay != 0)
    v_t     = alpha * v_{t-1} + (1 - alpha) * g_t^2
    a_t     = sqrt(v_t) + eps                             (not centered)
    m_t     = m_{t-1} + (1 - alpha) * (g_t - m_{t-1})     (centered)
    a_t     = sqrt(v_t - m_t^2) + eps                     (centered)
    b_t     = momentum * b_{t-1} + g_t / a_t              (if momentum > 0)
    w_{t+1} = w_t - lr * b_t     (momentum > 0)   or   w_t - lr * g_t / a_t   (otherwise)

State: ``square_avg`` (v), ``momentum_buffer`` (b, if momentum > 0), ``grad_avg`` (m, if
centered), ``step`` (t, counter). Memory floor: 20 bytes per weight, +8 with momentum, +8 centered.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets, zeros


def rmsprop(w: np.ndarray, g: np.ndarray, v: np.ndarray, w_out: np.ndarray, v_out: np.ndarray,
            *, lr: float, alpha: float, eps: float, weight_decay: float, momentum: float = 0.0,
            b: np.ndarray | None = None, b_out: np.ndarray | None = None,
            centered: bool = False, m: np.ndarray | None = None,
            m_out: np.ndarray | None = None) -> bool:
    """One RMSprop step; `b`/`b_out` needed when momentum > 0, `m`/`m_out` when centered.
    Outputs may alias inputs. One pass (Note [single-pass kernels] in rule.py); True when every
    element of `g` is finite."""
    if (momentum > 0 and (b is None or b_out is None)) or (centered and (m is None or m_out is None)):
        raise ValueError("rmsprop: momentum > 0 needs b and b_out; centered needs m and m_out")
    return kernels.rmsprop(w, g, v, w_out, v_out, b if momentum > 0 else None,
                           b_out if momentum > 0 else None, m if centered else None,
                           m_out if centered else None, lr=lr, alpha=alpha, eps=eps,
                           weight_decay=weight_decay, momentum=momentum)


class RMSprop(Rule):
    name = "rmsprop"
    bytes_per_weight = 20

    def __init__(self, *, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        check_ranges(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.centered = momentum, bool(centered)
        self.bytes_per_weight = 20 + 8 * (momentum > 0) + 8 * self.centered

    def _keys(self) -> list[str | None]:
        return ["square_avg", "momentum_buffer" if self.momentum > 0 else None,
                "grad_avg" if self.centered else None]

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        state = {k: zeros(n) for k in self._keys() if k is not None}
        state["step"] = step_counter()
        return state

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        (v, b, m), (v_out, b_out, m_out) = state_views(state, out_state, self._keys())
        finite = rmsprop(w, g, v, w_out, v_out, lr=self.lr, alpha=self.alpha, eps=self.eps,
                         weight_decay=self.weight_decay, momentum=self.momentum, b=b,
                         b_out=b_out, centered=self.centered, m=m, m_out=m_out)
        out_state["step"][0] = counter(state) + 1
        return finite
