"""A gadei task that measures the gradient exchange, not a model: one flat parameter ``w`` of
``params`` float32 (zeros), and a loss whose gradient is a precomputed constant.

    gadei train --task bench.exchange_task:Exchange --optimizer sgd --learners 2 --steps 1000
    gadei.train(Exchange(params=16_000_000), optimizer="sgd", learners=2, steps=100, out=DIR,
                lr=1.0)

The loss is ``_ConstGrad.apply(w, g)``: its forward returns 0 without touching ``w`` and its
backward hands autograd ``g`` (``ones(P)`` by default), which autograd accumulates into
``w.grad`` (the gradient slot, when the runtime makes ``.grad`` a view of it). That is the
gradient ``(w * g).sum()`` would give, without the forward's 8·P-byte read and the backward's
4·P-byte temporary, so the learner's work is the exchange alone, as for the peers in
``bench.peers``. With SGD at lr 1 the final weights are exactly ``-(updates applied)``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from gadei.task import option


class _ConstGrad(torch.autograd.Function):
    """loss = 0 with d loss / d w = g (a constant tensor, shape of w)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ctx.g = g                        # a constant: nothing to save for backward
        return w.new_zeros(())

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        g = ctx.g
        return (g if bool(grad_out == 1) else g * grad_out), None


class ExchangeModel(torch.nn.Module):
    def __init__(self, params: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(params, dtype=torch.float32))   # (P,)


@dataclass(kw_only=True, eq=False)
class Exchange:
    """The exchange benchmark as a gadei task (see the module docstring)."""

    params: int = option(1_000_000, "number of float32 weights P")
    grad_value: float = option(1.0, "every element of the constant gradient (an integer keeps the "
                                    "applied count exact)")
    epoch_batches: int = option(100_000, "batches per batches() call")

    eval_split = "valid"

    def __post_init__(self):
        if self.params < 1:
            raise ValueError(f"Invalid params (weights, >= 1): {self.params}")
        if self.epoch_batches < 1:
            raise ValueError(f"Invalid epoch_batches (>= 1): {self.epoch_batches}")
        self._g: torch.Tensor | None = None      # built once per process, never pickled

    def __getstate__(self):
        return {**self.__dict__, "_g": None}

    def build_model(self) -> torch.nn.Module:
        return ExchangeModel(self.params)

    def batches(self, learner: int, learners: int, seed: int):
        return itertools.repeat(torch.zeros(1), self.epoch_batches)   # trivial batches

    def batch_size(self, batch) -> int:
        return 1

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        if self._g is None:
            self._g = torch.full((self.params,), float(self.grad_value), dtype=torch.float32)
        return _ConstGrad.apply(model.w, self._g)

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        w = model.w.detach().double()
        return {"w_mean": float(w.mean()), "w_min": float(w.min()), "w_max": float(w.max())}
