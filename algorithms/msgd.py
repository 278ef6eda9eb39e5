"""MSGD: SGD with momentum (Polyak 1964) and optional Nesterov momentum (Nesterov 1983, in the
form of Sutskever et al. 2013), equal to ``torch.optim.SGD`` with ``momentum``.

    g_t     = g_t + weight_decay * w_t                       (if weight_decay != 0)
    b_t     = g_t                                            (t = 1)
    b_t     = momentum * b_{t-1} + (1 - dampening) * g_t     (t > 1)
    u_t     = g_t + momentum * b_t   (nesterov)   or   b_t   (otherwise)
    w_{t+1} = w_t - lr * u_t

With ``momentum == 0`` this is plain SGD (no buffer, dampening unused), as in torch.
State: ``momentum_buffer`` (b), ``step`` (t, counter). Memory floor: 20 bytes per weight.
"""
from __future__ import annotations

import numpy as np

from algorithms.rule import Rule, check_ranges, counter, kernels, state_views, step_counter, targets, zeros
from algorithms.sgd import sgd


def msgd(w: np.ndarray, g: np.ndarray, buf: np.ndarray, w_out: np.ndarray,
         buf_out: np.ndarray, *, step: float, lr: float, momentum: float, dampening: float,
         nesterov: bool, weight_decay: float) -> bool:
    """One momentum-SGD step; `step` is t (1 on the first update: `buf` is not read). Outputs
    may alias inputs. One pass (Note [single-pass kernels] in rule.py); True when every element
    of `g` is finite."""
    return kernels.msgd(w, g, buf, w_out, buf_out, first=step == 1, lr=lr, momentum=momentum,
                        dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)


class MSGD(Rule):
    name = "msgd"
    bytes_per_weight = 20

    def __init__(self, *, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        check_ranges(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening, "
                             f"got momentum={momentum}, dampening={dampening}")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = bool(nesterov), weight_decay
        if momentum == 0:
            self.bytes_per_weight = 12

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        if self.momentum == 0:
            return {"step": step_counter()}
        return {"momentum_buffer": zeros(n), "step": step_counter()}

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool:
        w, g, w_out, out_state = targets(weights, grad, state, out_weights, out_state)
        step = counter(state) + 1
        if self.momentum == 0:
            finite = sgd(w, g, w_out, lr=self.lr, weight_decay=self.weight_decay)
        else:
            (buf,), (buf_out,) = state_views(state, out_state, ["momentum_buffer"])
            finite = msgd(w, g, buf, w_out, buf_out, step=step, lr=self.lr,
                          momentum=self.momentum, dampening=self.dampening,
                          nesterov=self.nesterov, weight_decay=self.weight_decay)
        out_state["step"][0] = step
        return finite
