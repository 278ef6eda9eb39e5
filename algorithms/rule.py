"""The interface every server-side update rule implements, and the helpers they share.

Note [single-pass kernels]: the parameter server is bound by memory bandwidth, and applies an
update out of place (it reads the published buffer's weights and state and the gradient slot,
and writes the unpublished buffer). Each rule is therefore one compiled loop
(``algorithms/_kernels.c``, the module ``algorithms._kernels``): it reads every input vector
once, writes every output vector once (with non-temporal stores when out of place, so the
output's lines are not first read from memory), and checks the gradient for NaN/Inf as it reads
it, returning whether it was finite -- the PS's validation costs no pass of its own. The loop's
float operations are torch.optim's single-tensor ones in the same order (vectorised as ATen
vectorises them), so results equal torch.optim's to float32 rounding; in place and out of place
agree bit for bit, and so do the AVX2 path and the plain C one (``use_simd``).

What that leaves (10M weights, CPU clock, one core of a 2-core EPYC; docs/performance.md
section 5): in place the kernels run above the bandwidth floor; through the PS, out of place,
every rule runs at 0.7-1.0 of it (Adam 0.83-0.97), and only if the arena keeps its vectors at
distinct offsets within their pages (Note [staggered regions] in gadei/arena.py: seven streams
at one page offset share one memory channel, and Adam took 12 ms instead of 7.3). Adam's
square root and two divisions per weight cost ~0.6 ns per weight even in cache, three quarters
of its memory time, which leaves the loop little slack to hide memory stalls in.

Before the kernels, the rules were chains of torch ops run chunk by chunk in cache, and Adam and
Adagrad called torch's fused (in-place) kernels after staging copies of their inputs; both
stayed at 0.2-0.5 of the floor out of place (history in docs/performance.md section 5).
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

try:
    from algorithms import _kernels as kernels
except ImportError as e:       # the extension is built by `pip install -e .` (setup.py)
    raise ImportError(
        "gadei's compiled update kernels (algorithms._kernels) are not built or do not load "
        f"({e}). Reinstall on a machine with a C compiler (gcc or clang) and the Python headers: "
        "`pip install -e .` from the repository root (or `python setup.py build_ext --inplace`)."
    ) from e


def as_array(x) -> np.ndarray:
    """A numpy view of `x` (a CPU torch tensor shares its memory: no copy)."""
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def vectors(weights, grad) -> tuple[np.ndarray, np.ndarray]:
    """`weights` and `grad` as numpy views, checked to be flat float32 vectors of one length."""
    w, g = as_array(weights), as_array(grad)
    if w.dtype != np.float32 or g.dtype != np.float32:
        raise ValueError(f"weights and grad must be float32, got {w.dtype} and {g.dtype}")
    if w.ndim != 1 or w.shape != g.shape:
        raise ValueError(f"weights and grad must be flat and of one length, got shapes "
                         f"{w.shape} and {g.shape}")
    return w, g


def apply_delta(w, d, w_out) -> bool:
    """w_out = w + d (a DOWNPOUR or EASGD learner's delta), in one pass; True when every
    element of `d` is finite. `w_out` may be `w`."""
    return kernels.add(as_array(w), as_array(d), as_array(w_out))


def mean(out, grads: list) -> bool:
    """out = (grads[0] + grads[1] + ...) / len(grads) (two or more, summed in that order), in one
    pass; True when every element of every gradient is finite."""
    return kernels.mean(as_array(out), [as_array(g) for g in grads])


def use_simd(on: bool) -> bool:
    """Run the kernels' AVX2 path where the CPU has it (True, the default) or the plain C one
    (tests compare them); returns whether the AVX2 path is now used."""
    return kernels.use_simd(on)


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
    """(w, g, w_out, out_state) for `apply`: numpy views of the inputs, and where the result
    goes (in place where `out_*` is None)."""
    w, g = vectors(weights, grad)
    w_out = w if out_weights is None else as_array(out_weights)
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
    - ``apply(weights, grad, state, out_weights=None, out_state=None) -> bool | None``: write
      the updated weights and state into ``out_*`` (same layout as the inputs), or in place
      where None. ``grad`` is only read. The inputs are never modified when ``out_*`` are
      given. Returns whether every element of ``grad`` was finite (the built-in rules check it
      in their one pass); a rule that returns None leaves the check to the PS (one more read).

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

    def apply(self, weights, grad, state, out_weights=None, out_state=None) -> bool | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"algorithms.get({self.name!r}, {args})"


def state_views(state: dict, out_state: dict | None, keys: list[str | None]
                ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Numpy views of the state vectors `keys` (None -> None) in `state` and in `out_state`
    (`state` itself when None)."""
    out_state = state if out_state is None else out_state
    ins = [as_array(state[k]) if k is not None else None for k in keys]
    outs = [as_array(out_state[k]) if k is not None else None for k in keys]
    return ins, outs


def zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.float32)


def step_counter() -> np.ndarray:
    return np.zeros(1, np.float64)
