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
import torch

from algorithms.rule import Rule, check_ranges, chunks, counter, state_views, step_counter, targets, zeros


def rmsprop(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor, w_out: torch.Tensor,
            v_out: torch.Tensor, *, lr: float, alpha: float, eps: float, weight_decay: float,
            momentum: float = 0.0, b: torch.Tensor | None = None,
            b_out: torch.Tensor | None = None, centered: bool = False,
            m: torch.Tensor | None = None, m_out: torch.Tensor | None = None) -> None:
    """One RMSprop step; `b`/`b_out` needed when momentum > 0, `m`/`m_out` when centered.
    Outputs may alias inputs."""
    for w_, g_, v_, b_, m_, wo, vo, bo, mo, d, avg in chunks(
            [w, g, v, b, m, w_out, v_out, b_out, m_out], 2):
        if weight_decay:
            g_ = torch.add(g_, w_, alpha=weight_decay, out=d)
        torch.mul(v_, alpha, out=vo).addcmul_(g_, g_, value=1 - alpha)
        if centered:
            torch.lerp(m_, g_, 1 - alpha, out=mo)
            torch.addcmul(vo, mo, mo, value=-1, out=avg).sqrt_()
        else:
            torch.sqrt(vo, out=avg)
        avg.add_(eps)
        if momentum > 0:
            torch.mul(b_, momentum, out=bo).addcdiv_(g_, avg)
            torch.add(w_, bo, alpha=-lr, out=wo)
        else:
            torch.addcdiv(w_, g_, avg, value=-lr, out=wo)


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

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> None:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        (v, b, m), (v_out, b_out, m_out) = state_views(state, out_state, self._keys())
        rmsprop(w, g, v, w_out, v_out, lr=self.lr, alpha=self.alpha, eps=self.eps,
                weight_decay=self.weight_decay, momentum=self.momentum, b=b, b_out=b_out,
                centered=self.centered, m=m, m_out=m_out)
        out_state["step"][0] = counter(state) + 1
