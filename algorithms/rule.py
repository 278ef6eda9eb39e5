"""The interface every server-side update rule implements, and the helpers they share."""
from __future__ import annotations

import numpy as np
import torch


def as_tensor(x) -> torch.Tensor:
    """A torch view of a float32 numpy array (shared memory stays shared: no copy)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


class Rule:
    """A server-side update rule on flat float32 vectors.

    Subclasses take their hyper-parameters as keyword-only constructor arguments (validated
    eagerly), keep them as attributes of the same names, and implement:

    - ``init_state(n) -> dict[str, np.ndarray]``: the optimizer state for ``n`` weights; float32
      arrays of shape ``(n,)`` plus counters as arrays of shape ``(1,)`` (float64 or int64).
    - ``apply(weights, grad, state, out_weights=None, out_state=None)``: write the updated
      weights and state into ``out_*`` (same layout as the inputs), or in place where None.
      ``grad`` is only read. The inputs are never modified when ``out_*`` are given.
    """

    name = "rule"

    def hyper(self) -> dict[str, float | bool | int | str]:
        """The hyper-parameters this rule was built with (part of the arena's layout digest)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"algorithms.get({self.name!r}, {args})"
