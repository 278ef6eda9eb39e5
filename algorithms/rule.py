"""The interface every server-side update rule implements, and the helpers they share.

Note [one pass over memory]: an update rule written as a chain of whole-vector torch ops makes
one trip to main memory per op (Adam: about ten), and the parameter server is bound by memory
bandwidth. The rules therefore walk the vectors in cache-sized chunks (``chunks``): every op of
the chain runs on a chunk that is still in cache, so each weight, gradient and state entry is
read from memory once and written once -- the floor ``bytes_per_weight`` counts. Within a chunk
the ops are the same ops, in the same order, as ``torch.optim``'s single-tensor code, so the
results agree with torch to float32 rounding (in practice bit for bit).

Note [fused kernels]: even in cache, each eager op costs ~0.2 ns per element on one thread, so a
rule of five to ten ops stays at 0.2-0.5 of the bandwidth floor. Where torch has a fused CPU
kernel for a rule (``torch._fused_adam_``, ``_fused_adamw_``, ``_fused_adagrad_``: the kernels
behind ``torch.optim``'s ``fused=True``), the rule calls it chunk by chunk instead: one
vectorised loop reads each input once and writes each output once. The kernels work in place;
out of place (the double-buffered PS), ``stage`` first copies the chunk's inputs into the output
chunk, where the kernel finds them in cache. They are torch.optim's own ``fused=True`` code,
which torch tests against its single-tensor code to float32 rounding; so do our tests.

What that leaves (CPU clock, 2-core EPYC, 10M weights; docs/performance.md section 5): Adam in
place runs at the floor (8.1 ms against 7.7), out of place at ~0.4 (18-21 ms): the staging
copies (10-14 ms: the output lines are read before they are written, and a plain copy gets ~20
GB/s) and the kernel's arithmetic (6 ms of square roots and divisions, measured in L2) follow
one another instead of overlapping. Only a single-pass out-of-place kernel would overlap them,
and torch has none. For MSGD (three cheap ops) the staging costs more than the fused kernel
saves, so it stays eager.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator

import numpy as np
import torch

# Floats per chunk and per torch thread. Each op costs ~2-3 us of dispatch on top of its work, so
# chunks must be large; 256 Ki floats (1 MiB per array, ~10 MiB for all arrays and scratch of a
# chunk) stay in L3 and keep dispatch under ~5 %. Measured on a 2-core EPYC (1 MiB L2, 32 MiB L3),
# Adam on 10M weights: 64 Ki 28-33 ms, 128 Ki 26-31, 256 Ki 28, 1 Mi 29-31, unchunked 80 ms.
CHUNK = 1 << 18


def as_tensor(x) -> torch.Tensor:
    """A torch view of a float32 numpy array (shared memory stays shared: no copy)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


def vectors(weights, grad) -> tuple[torch.Tensor, torch.Tensor]:
    """`weights` and `grad` as torch views, checked to be flat float32 vectors of one length."""
    w, g = as_tensor(weights), as_tensor(grad)
    if w.dtype != torch.float32 or g.dtype != torch.float32:
        raise ValueError(f"weights and grad must be float32, got {w.dtype} and {g.dtype}")
    if w.dim() != 1 or w.shape != g.shape:
        raise ValueError(f"weights and grad must be flat and of one length, got shapes "
                         f"{tuple(w.shape)} and {tuple(g.shape)}")
    return w, g


def chunks(tensors: list[torch.Tensor | None], n_scratch: int = 0
           ) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """Cache-sized views of `tensors` (flat, one length; None stays None), chunk by chunk.

    Each tuple holds the chunk views of `tensors` followed by `n_scratch` scratch views of the
    same length, which the caller may overwrite (allocated once per call: ``n_scratch`` chunks,
    not vectors). See Note [one pass over memory].
    """
    n = next(t for t in tensors if t is not None).numel()
    size = CHUNK * max(1, torch.get_num_threads())
    if n <= size:  # one chunk: no splitting overhead for small vectors
        yield (*tensors, *(torch.empty(n) for _ in range(n_scratch)))
        return
    scratch = [torch.empty(size) for _ in range(n_scratch)]
    parts = [t.split(size) if t is not None else None for t in tensors]
    for i in range((n + size - 1) // size):
        m = min(size, n - i * size)
        yield (*(p[i] if p is not None else None for p in parts),
               *(s if m == size else s[:m] for s in scratch))


def stage(inputs: list[torch.Tensor | None], outputs: list[torch.Tensor | None]) -> None:
    """Copy each chunk of `inputs` into its chunk of `outputs` unless they are the same memory
    (in place), so that a fused kernel that works in place (``torch._fused_adam_``, ...) can
    apply an update out of place. Called chunk by chunk, the kernel then finds the copies in
    cache: see Note [fused kernels]."""
    for a, b in zip(inputs, outputs):
        if a is not None and a.data_ptr() != b.data_ptr():
            b.copy_(a)


def step_tensor(step: float) -> torch.Tensor:
    """The step count t as torch.optim keeps it for its fused kernels: a float32 scalar tensor
    (the kernels compute the bias corrections from it; they do not advance it)."""
    return torch.tensor(step, dtype=torch.float32)


# torch.optim's range of each hyper-parameter: (name in the error, upper bound, bound included);
# every one is >= 0
_RANGES = {"lr": ("learning rate", None, False), "eps": ("epsilon value", None, False),
           "weight_decay": ("weight_decay value", None, False), "momentum": ("momentum value", None, False),
           "lr_decay": ("lr_decay value", None, False),
           "initial_accumulator_value": ("initial_accumulator_value value", None, False),
           "dampening": ("dampening value", 1.0, True), "rho": ("rho value", 1.0, True),
           "alpha": ("alpha value", 1.0, True), "beta1": ("beta1 value (need 0 <= beta1 < 1)", 1.0, False),
           "beta2": ("beta2 value (need 0 <= beta2 < 1)", 1.0, False)}


def check_ranges(**values: float) -> None:
    """torch.optim's argument checks, with its messages (NaN fails every one)."""
    for key, v in values.items():
        what, high, inclusive = _RANGES[key]
        if not (0.0 <= v and (high is None or (v <= high if inclusive else v < high))):
            raise ValueError(f"Invalid {what}: {v}")


def targets(weights, grad, state, out_weights, out_state):
    """(w, g, w_out, out_state) for `apply`: torch views of the inputs, and where the result
    goes (in place where `out_*` is None)."""
    w, g = vectors(weights, grad)
    w_out = w if out_weights is None else as_tensor(out_weights)
    return w, g, w_out, (state if out_state is None else out_state)


def counter(state: dict, key: str = "step") -> float:
    """The value of the shape-(1,) counter `state[key]`."""
    return float(state[key][0])


class Rule:
    """A server-side update rule on flat float32 vectors.

    Subclasses take their hyper-parameters as keyword-only constructor arguments (validated
    eagerly), keep them as attributes of the same names, and implement:

    - ``init_state(n) -> dict[str, np.ndarray]``: the optimizer state for ``n`` weights; float32
      arrays of shape ``(n,)`` plus counters as arrays of shape ``(1,)`` (float64 or int64).
    - ``apply(weights, grad, state, out_weights=None, out_state=None)``: write the updated
      weights and state into ``out_*`` (same layout as the inputs), or in place where None.
      ``grad`` is only read. The inputs are never modified when ``out_*`` are given.

    ``bytes_per_weight`` is the memory traffic one update must make per weight: read the weight,
    the gradient and each state vector, write the weight and each state vector
    (``12 + 8 * k`` for ``k`` state vectors); the benchmark's floor.
    """

    name = "rule"
    bytes_per_weight = 12

    def hyper(self) -> dict[str, float | bool | int | str]:
        """The hyper-parameters this rule was built with (part of the arena's layout digest)."""
        params = inspect.signature(type(self)).parameters
        return {k: getattr(self, k) for k in params}

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"algorithms.get({self.name!r}, {args})"


def state_views(state: dict, out_state: dict | None, keys: list[str | None]
                ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Torch views of the state vectors `keys` (None -> None) in `state` and in `out_state`
    (`state` itself when None)."""
    out_state = state if out_state is None else out_state
    ins = [as_tensor(state[k]) if k is not None else None for k in keys]
    outs = [as_tensor(out_state[k]) if k is not None else None for k in keys]
    return ins, outs


def zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.float32)


def step_counter() -> np.ndarray:
    return np.zeros(1, np.float64)
