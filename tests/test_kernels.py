"""The compiled single-pass kernels (algorithms/_kernels.c) directly: the AVX2 and plain paths
agree bit for bit wherever a vector starts and ends, a non-finite gradient element is flagged
wherever it is, in place equals out of place (streaming stores included), and bad buffers fail
with a clear error. Their agreement with torch.optim is tests/test_algorithms.py's job."""
from __future__ import annotations

import numpy as np
import pytest

import algorithms
import algorithms.rule
from algorithms.rule import kernels

pytestmark = pytest.mark.timeout(120)

# one case per kernel and formula variant (the rules' own hyper-parameters)
CASES = [
    ("sgd", {"lr": 0.01}),
    ("sgd", {"lr": 0.01, "weight_decay": 0.1}),
    ("msgd", {"lr": 0.01, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01}),
    ("msgd", {"lr": 0.01, "nesterov": True}),
    ("adagrad", {"lr_decay": 0.01, "weight_decay": 0.01}),
    ("adadelta", {"weight_decay": 0.01}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9, "centered": True, "alpha": 0.5}),
    ("adam", {"weight_decay": 0.1}),
    ("adam", {"amsgrad": True, "decoupled_weight_decay": True, "weight_decay": 0.01}),
    ("adamax", {"weight_decay": 0.01}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'defaults'}" for n, h in CASES]

# the streaming stores start at 1 MiB of output (STREAM_MIN_BYTES in _kernels.c)
LARGE = (1 << 18) + 13


@pytest.fixture(autouse=True)
def avx2_again():
    yield
    algorithms.rule.use_simd(True)


def aligned(n: int, offset: int = 0) -> np.ndarray:
    """A float32 vector of n elements starting `offset` floats past a 64-byte boundary."""
    raw = np.empty(n + offset + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip + offset: skip + offset + n]


def setup(name: str, hyper: dict, n: int, offset: int = 0, seed: int = 0):
    """(rule, w, g, state) with random weights and gradient and a state two steps in."""
    rng = np.random.default_rng(seed)
    rule = algorithms.get(name, **hyper)
    w, g = aligned(n, offset), aligned(n, offset)
    w[:] = rng.standard_normal(n)
    state = {k: (v if v.shape != (n,) else aligned(n, offset)) for k, v in rule.init_state(n).items()}
    for k, v in rule.init_state(n).items():
        state[k][:] = v
    for _ in range(2):
        g[:] = rng.standard_normal(n)
        rule.apply(w, g, state)
    g[:] = rng.standard_normal(n)
    return rule, w, g, state


def apply_out_of_place(rule, w, g, state, offset: int = 0):
    n = w.size
    w_out = aligned(n, offset)
    s_out = {k: (v.copy() if v.shape != (n,) else aligned(n, offset)) for k, v in state.items()}
    ok = rule.apply(w, g, state, out_weights=w_out, out_state=s_out)
    return ok, w_out, s_out


def assert_same(what: str, a: dict, b: dict) -> None:
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 33, LARGE])
@pytest.mark.parametrize("offset", [0, 3])
def test_avx2_and_plain_agree(name, hyper, n, offset):
    """Bit for bit, on sizes with and without a tail, aligned and unaligned (a head)."""
    results = []
    for on in (True, False):
        algorithms.rule.use_simd(on)
        rule, w, g, state = setup(name, hyper, n, offset)
        ok, w_out, s_out = apply_out_of_place(rule, w, g, state, offset)
        assert ok is True
        results.append({"w": w_out, **s_out})
    assert_same(f"{name} n={n} offset={offset}: AVX2 against plain", *results)


@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
def test_where_a_vector_starts_does_not_matter(name, hyper):
    """The same update on vectors at every alignment: the head, body and tail split differs."""
    results = []
    for offset in range(8):
        rule, w, g, state = setup(name, hyper, 1000, offset)
        ok, w_out, s_out = apply_out_of_place(rule, w, g, state, (offset * 5) % 8)
        results.append({"w": w_out, **s_out})
    for r in results[1:]:
        assert_same(f"{name}: another alignment", results[0], r)


@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "plain"])
def test_in_place_equals_out_of_place_streamed(name, hyper, simd):
    """A large update out of place (streaming stores) equals it in place (plain stores), and
    leaves its inputs untouched."""
    algorithms.rule.use_simd(simd)
    rule, w, g, state = setup(name, hyper, LARGE)
    w0, s0 = w.copy(), {k: v.copy() for k, v in state.items()}
    ok, w_out, s_out = apply_out_of_place(rule, w, g, state)
    assert ok is True
    assert np.array_equal(w, w0) and all(np.array_equal(state[k], s0[k]) for k in state)
    assert rule.apply(w, g, state) is True
    assert_same(f"{name}: in place against out of place", {"w": w, **state}, {"w": w_out, **s_out})


BAD_VALUES = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "plain"])
@pytest.mark.parametrize("n", [37, LARGE])
def test_a_non_finite_gradient_is_flagged(name, hyper, simd, n):
    """NaN, +Inf and -Inf at the first, a middle and the last element (head, body, tail)."""
    algorithms.rule.use_simd(simd)
    for value in BAD_VALUES:
        for where in (0, n // 2, n - 1):
            rule, w, g, state = setup(name, hyper, n, offset=1)
            g[where] = value
            ok, _, _ = apply_out_of_place(rule, w, g, state, offset=1)
            assert ok is False, f"{name}: g[{where}] = {value} not flagged"


def test_finite_extremes_are_not_flagged():
    """The largest float, the smallest subnormal and -0.0 are finite."""
    n = 41
    for value in (np.finfo(np.float32).max, -np.finfo(np.float32).max,
                  np.finfo(np.float32).smallest_subnormal, -0.0):
        for simd in (True, False):
            algorithms.rule.use_simd(simd)
            g = np.zeros(n, np.float32)
            g[[0, n // 2, n - 1]] = value
            out = np.empty(n, np.float32)
            assert kernels.sgd(np.zeros(n, np.float32), g, out, lr=0.0, weight_decay=0.0) is True


@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "plain"])
def test_delta_and_mean(simd):
    """`apply_delta` is w + d exactly; `mean` is the sum in order over k; both flag NaN/Inf in
    any input."""
    algorithms.rule.use_simd(simd)
    rng = np.random.default_rng(1)
    for n in (5, LARGE):
        w, d = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        out = np.empty(n, np.float32)
        assert algorithms.rule.apply_delta(w, d, out) is True
        assert np.array_equal(out, w + d)
        gs = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
        assert algorithms.rule.mean(out, gs) is True
        assert np.array_equal(out, ((gs[0] + gs[1]) + gs[2]) * np.float32(1 / 3))
        for j, value in zip(range(3), BAD_VALUES):
            bad = [g.copy() for g in gs]
            bad[j][n - 1 - j] = value
            assert algorithms.rule.mean(out, bad) is False, f"gradient {j}: {value} not flagged"
        d[n // 2] = np.nan
        assert algorithms.rule.apply_delta(w, d, out) is False


def test_bad_buffers_fail_clearly():
    n = 16
    w, g, out = (np.zeros(n, np.float32) for _ in range(3))
    kw = {"lr": 0.1, "weight_decay": 0.0}
    with pytest.raises(ValueError, match=r"sgd: g must be a flat float32 vector, got format 'd'"):
        kernels.sgd(w, np.zeros(n), out, **kw)
    with pytest.raises(ValueError, match=r"sgd: g has 15 elements, w has 16"):
        kernels.sgd(w, g[:15], out, **kw)
    with pytest.raises(ValueError, match=r"sgd: w must be a contiguous float32 array"):
        kernels.sgd(np.zeros(2 * n, np.float32)[::2], g, out, **kw)
    read_only = np.zeros(n, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"sgd: w_out must be a writable contiguous float32"):
        kernels.sgd(w, g, read_only, **kw)
    with pytest.raises(ValueError, match=r"sgd: an output overlaps the gradient"):
        kernels.sgd(w, g, g, **kw)
    big = np.zeros(n + 4, np.float32)
    with pytest.raises(ValueError, match=r"sgd: an output overlaps another vector"):
        kernels.sgd(big[:n], g, big[4:], **kw)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    with pytest.raises(ValueError, match=r"adam: an output overlaps another vector"):
        kernels.adam(w, g, m, v, out, v, m, step=1.0, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                     weight_decay=0.0, decoupled_weight_decay=False)
    with pytest.raises(ValueError, match=r"mean: needs two or more gradients, got 1"):
        kernels.mean(out, [g])
    with pytest.raises(ValueError, match=r"mean: out overlaps a gradient"):
        kernels.mean(g, [g, w])
    with pytest.raises(ValueError, match=r"rmsprop: b and b_out are needed exactly when momentum"):
        kernels.rmsprop(w, g, v, out, m, lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0.0,
                        momentum=0.5)


def test_the_path_can_be_chosen():
    assert kernels.path() in ("avx2", "plain")
    assert algorithms.rule.use_simd(False) is False and kernels.path() == "plain"
    algorithms.rule.use_simd(True)
