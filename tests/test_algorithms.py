"""Server-side update rules against torch.optim, in place against out of place, and the errors.

Every comparison goes through `assert_close`, which names what it compares; `test_check_can_fail`
shows that it catches a rule that differs from torch only in a hyper-parameter.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import algorithms
import algorithms.rule

pytestmark = pytest.mark.timeout(120)

TORCH = {"sgd": torch.optim.SGD, "msgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
         "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop,
         "adam": torch.optim.Adam, "adamax": torch.optim.Adamax}

# one case per rule and per formula variant; each runs 1,000 steps against torch
CASES = [
    ("sgd", {"lr": 0.01}),
    ("sgd", {"lr": 0.01, "weight_decay": 0.1}),
    ("msgd", {"lr": 0.01}),
    ("msgd", {"lr": 0.01, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01}),
    ("msgd", {"lr": 0.01, "nesterov": True, "weight_decay": 0.01}),
    ("msgd", {"lr": 0.01, "momentum": 0.0, "dampening": 0.5}),
    ("adagrad", {}),
    ("adagrad", {"lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1,
                 "eps": 1e-6}),
    ("adadelta", {}),
    ("adadelta", {"lr": 0.5, "rho": 0.5, "weight_decay": 0.01}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"momentum": 0.9, "weight_decay": 0.01}),
    ("rmsprop", {"momentum": 0.9, "centered": True, "alpha": 0.9, "eps": 1e-4}),
    ("adam", {}),
    ("adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("adam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("adam", {"amsgrad": True, "decoupled_weight_decay": True, "weight_decay": 0.01,
              "beta1": 0.5, "beta2": 0.9}),
    ("adamax", {}),
    ("adamax", {"weight_decay": 0.01, "beta1": 0.5, "beta2": 0.9}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'defaults'}" for n, h in CASES]


def torch_optimizer(name: str, hyper: dict, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    """torch.optim's optimizer for rule `name` with our hyper-parameters (beta1/beta2 -> betas)."""
    kw = {**algorithms.get(name, **hyper).hyper()}      # our defaults, spelled out
    if "beta1" in kw:
        kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
    return TORCH[name]([param], foreach=False, **kw)


def assert_close(what: str, ours, ref, rtol: float = 1e-5) -> None:
    """max |ours - ref| / max |ref| < rtol over a vector; NaN where the reference has NaN."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan), f"{what}: NaN at other positions than reference"
    diff = np.abs(ours[~nan] - ref[~nan])
    scale = np.abs(ref[~nan]).max(initial=0.0)
    err = diff.max(initial=0.0) / scale if scale > 0 else diff.max(initial=0.0)
    assert err < rtol, f"{what}: relative error {err:.3g} >= {rtol:g} (max |ref| {scale:.3g})"


def gradients(seed: int, n: int, steps: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield (scale * rng.standard_normal(n)).astype(np.float32)


def compare_with_torch(name: str, hyper: dict, n: int, steps: int, seed: int = 0,
                       scale: float = 1.0, rtol: float = 1e-5,
                       ill_conditioned: bool = False) -> None:
    """Run rule `name` (in place) and torch.optim side by side; compare weights and all state.

    `ill_conditioned`: where weights or state differ by more than `rtol`, accept them if they are
    about as close to torch.optim's float64 result as torch.optim's float32 ones are (within 10x:
    two float32 runs of a recurrence that amplifies rounding land at random distances from the
    exact result; a rule with a wrong formula or hyper-parameter misses by orders of magnitude
    more, as `test_check_can_fail`'s does). Some random
    settings amplify rounding (a zero gradient with weight decay under an adaptive rule: the
    step is weight decay over its own root mean square, and centered RMSprop takes the square
    root of a difference of near-equal numbers), and torch's float32 sqrt is not correctly rounded
    where the kernels' is (it differs from the IEEE square root on ~19 % of random inputs), so
    one unit in the last place can grow past any rtol."""
    rng = np.random.default_rng(seed + 1)
    w = rng.standard_normal(n).astype(np.float32)
    w0 = w.copy()
    param = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = torch_optimizer(name, hyper, param)
    rule = algorithms.get(name, **hyper)
    state = rule.init_state(n)
    for g in gradients(seed, n, steps, scale):
        rule.apply(w, g, state)
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    label = f"{name}{hyper} after {steps} steps"
    ref_state = opt.state[param]
    try:
        assert_close(f"{label}: weights", w, param.detach().numpy(), rtol)
        for key, ref in ref_state.items():
            assert key in state, f"{label}: state has no {key!r} (torch has {sorted(ref_state)})"
            assert_close(f"{label}: state[{key!r}]", state[key], np.atleast_1d(ref.numpy()), rtol)
    except AssertionError:
        if not ill_conditioned:
            raise
        exact = torch.nn.Parameter(torch.from_numpy(w0.astype(np.float64)))
        opt64 = torch_optimizer(name, hyper, exact)
        for g in gradients(seed, n, steps, scale):
            exact.grad = torch.from_numpy(g.astype(np.float64))
            opt64.step()
        pairs = [("weights", w, param.detach().numpy(), exact.detach().numpy())]
        pairs += [(f"state[{k!r}]", state[k], np.atleast_1d(r.numpy()),
                   np.atleast_1d(opt64.state[exact][k].numpy())) for k, r in ref_state.items()]
        for what, ours, ref32, ref64 in pairs:
            ours_err, torch_err = np.abs(ours - ref64).max(), np.abs(ref32 - ref64).max()
            assert ours_err <= 10 * torch_err + rtol * np.abs(ref64).max(), \
                f"{label}: {what} {ours_err:.3g} from the float64 result, torch.optim's {torch_err:.3g}"
    extra = set(state) - set(ref_state) - {"step"}
    assert not extra, f"{label}: state keys {sorted(extra)} that torch does not keep"


@pytest.fixture(params=[True, False], ids=["avx2", "plain"])
def simd(request):
    """Run on the kernels' AVX2 path (where the CPU has it) and on the plain C one."""
    algorithms.rule.use_simd(request.param)
    yield request.param
    algorithms.rule.use_simd(True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_matches_torch_1000_steps(name, hyper, simd):
    compare_with_torch(name, hyper, n=101, steps=1000)


@pytest.mark.timeout(60)
def test_every_rule_has_a_case():
    assert {n for n, _ in CASES} == set(algorithms.RULES)


# more variants for the first steps (Note [single-pass kernels] in rule.py)
EVERY_STEP_CASES = CASES + [
    ("adam", {"weight_decay": 0.1, "beta1": 0.5, "eps": 1e-3}),
    ("adagrad", {"lr_decay": 0.5, "weight_decay": 0.1})]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,hyper", EVERY_STEP_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'defaults'}"
                              for n, h in EVERY_STEP_CASES])
@pytest.mark.parametrize("n", [197, (1 << 18) + 7], ids=["197", "256Ki-and-7"])
def test_every_step(name, hyper, n):
    """Each rule against torch.optim after each of the first steps (step 1: Adam's bias
    corrections are largest), on sizes that are no multiple of 8 (the kernels' tail) and large
    enough for their streaming stores (1 MiB), in place and out of place."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal(n).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = torch_optimizer(name, hyper, param)
    rule = algorithms.get(name, **hyper)
    state = rule.init_state(n)
    other = (np.empty_like(w), {k: np.empty_like(v) for k, v in state.items()})
    for step, g in enumerate(gradients(8, n, 4), 1):
        w_out, s_out = other
        rule.apply(w, g, state, out_weights=w_out, out_state=s_out)   # out of place ...
        rule.apply(w, g, state)                                       # ... and in place
        assert np.array_equal(w, w_out), f"{name} step {step}: out of place differs"
        param.grad = torch.from_numpy(g.copy())
        opt.step()
        assert_close(f"{name}{hyper} step {step}: weights", w, param.detach().numpy())
        for key, ref in opt.state[param].items():
            assert_close(f"{name}{hyper} step {step}: state[{key!r}]", state[key],
                         np.atleast_1d(ref.numpy()))
            assert np.array_equal(state[key], s_out[key]), f"{name} step {step}: {key} differs"


LR = st.floats(1e-4, 0.5)
WD = st.sampled_from([0.0, 1e-4, 0.1])
EPS = st.sampled_from([1e-10, 1e-8, 1e-6, 1e-3])
BETA = st.sampled_from([0.0, 0.5, 0.9, 0.999])


@st.composite
def msgd_hyper(draw):
    nesterov = draw(st.booleans())
    momentum = draw(st.sampled_from([0.5, 0.9, 0.99] if nesterov else [0.0, 0.5, 0.9, 0.99]))
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5]))
    return {"lr": draw(LR), "momentum": momentum, "dampening": dampening,
            "nesterov": nesterov, "weight_decay": draw(WD)}


HYPER = {
    "sgd": st.fixed_dictionaries({"lr": LR, "weight_decay": WD}),
    "msgd": msgd_hyper(),
    "adagrad": st.fixed_dictionaries({
        "lr": LR, "lr_decay": st.sampled_from([0.0, 0.01, 0.5]), "weight_decay": WD,
        "initial_accumulator_value": st.sampled_from([0.0, 0.1, 1.0]), "eps": EPS}),
    "adadelta": st.fixed_dictionaries({
        "lr": st.sampled_from([0.1, 1.0, 2.0]), "rho": st.sampled_from([0.0, 0.5, 0.9, 0.99]),
        "eps": EPS, "weight_decay": WD}),
    "rmsprop": st.fixed_dictionaries({
        "lr": st.floats(1e-4, 0.05), "alpha": st.sampled_from([0.5, 0.9, 0.99]), "eps": EPS,
        "weight_decay": WD, "momentum": st.sampled_from([0.0, 0.5, 0.9]),
        "centered": st.booleans()}),
    "adam": st.fixed_dictionaries({
        "lr": LR, "beta1": BETA, "beta2": BETA, "eps": EPS, "weight_decay": WD,
        "amsgrad": st.booleans(), "decoupled_weight_decay": st.booleans()}),
    "adamax": st.fixed_dictionaries({
        "lr": LR, "beta1": BETA, "beta2": BETA, "eps": EPS, "weight_decay": WD}),
}


@st.composite
def rule_and_hyper(draw):
    name = draw(st.sampled_from(sorted(HYPER)))
    return name, draw(HYPER[name])


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None)
@given(case=rule_and_hyper(), n=st.integers(1, 300), steps=st.integers(1, 25),
       seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 1e-3, 1.0, 100.0]),
       simd=st.booleans())
def test_matches_torch_hypothesis(case, n, steps, seed, scale, simd):
    name, hyper = case
    algorithms.rule.use_simd(simd)
    try:
        compare_with_torch(name, hyper, n=n, steps=steps, seed=seed, scale=scale,
                           ill_conditioned=True)
    finally:
        algorithms.rule.use_simd(True)


@pytest.mark.timeout(30)
def test_check_can_fail():
    """The comparison catches a rule that differs from torch in one hyper-parameter."""
    rule = algorithms.get("adam", beta2=0.99)
    n, w = 64, np.ones(64, np.float32)
    state = rule.init_state(n)
    param = torch.nn.Parameter(torch.ones(n))
    opt = torch_optimizer("adam", {}, param)          # beta2 = 0.999
    for g in gradients(0, n, 20):
        rule.apply(w, g, state)
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("adam beta2 0.99 vs 0.999", w, param.detach().numpy())


def copy_state(state):
    return {k: v.copy() for k, v in state.items()}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_out_of_place_equals_in_place(name, hyper, simd):
    """Double-buffered (A -> B -> A) equals in place bit for bit; inputs and grad untouched."""
    n, rule = 77, algorithms.get(name, **hyper)
    rng = np.random.default_rng(3)
    w_in = rng.standard_normal(n).astype(np.float32)
    s_in = rule.init_state(n)
    buffers = [(w_in.copy(), copy_state(s_in)),
               (np.full(n, np.nan, np.float32),                    # garbage in the out buffer
                {k: np.full_like(v, np.nan) for k, v in s_in.items()})]
    for step, g in enumerate(gradients(4, n, 30)):
        g_before = g.copy()
        rule.apply(w_in, g, s_in)
        (w_a, s_a), (w_b, s_b) = buffers[step % 2], buffers[(step + 1) % 2]
        w_a0, s_a0 = w_a.copy(), copy_state(s_a)
        rule.apply(w_a, g, s_a, out_weights=w_b, out_state=s_b)
        assert np.array_equal(g, g_before), f"{name}: grad modified"
        assert np.array_equal(w_a, w_a0), f"{name}: input weights modified out of place"
        for k in s_a:
            assert np.array_equal(s_a[k], s_a0[k]), f"{name}: input state[{k!r}] modified"
        assert np.array_equal(w_b, w_in), f"{name} step {step}: out-of-place weights differ"
        for k in s_in:
            assert np.array_equal(s_b[k], s_in[k]), f"{name} step {step}: state[{k!r}] differs"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_out_weights_only(name, hyper):
    """Weights out of place, state in place (the two are independent)."""
    n, rule = 33, algorithms.get(name, **hyper)
    w1, s1 = np.linspace(-1, 1, n, dtype=np.float32), rule.init_state(n)
    w2, s2 = w1.copy(), rule.init_state(n)
    for g in gradients(5, n, 5):
        out = np.empty_like(w2)
        w0 = w2.copy()
        rule.apply(w1, g, s1)
        rule.apply(w2, g, s2, out_weights=out)
        assert np.array_equal(w2, w0), f"{name}: input weights modified"
        w2 = out
        assert np.array_equal(w1, w2), f"{name}: weights differ"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_state_layout(name, hyper):
    """float32 (n,) vectors plus shape-(1,) counters; bytes_per_weight counts the vectors."""
    rule = algorithms.get(name, **hyper)
    state = rule.init_state(10)
    vecs = [k for k, v in state.items() if v.shape == (10,)]
    for k, v in state.items():
        if k in vecs:
            assert v.dtype == np.float32, f"{name}: state[{k!r}] dtype {v.dtype}"
        else:
            assert v.shape == (1,) and v.dtype in (np.float64, np.int64), \
                f"{name}: state[{k!r}] is neither a vector nor a counter: {v.shape} {v.dtype}"
    assert rule.bytes_per_weight == 12 + 8 * len(vecs), \
        f"{name}: bytes_per_weight {rule.bytes_per_weight} for state vectors {vecs}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_hyper_round_trip(name, hyper):
    rule = algorithms.get(name, **hyper)
    assert set(rule.hyper()) == set(algorithms.hyper_parameters(name))
    assert {k: rule.hyper()[k] for k in hyper} == hyper
    again = eval(repr(rule), {"algorithms": algorithms})
    assert again.hyper() == rule.hyper() and type(again) is type(rule)


@pytest.mark.timeout(30)
def test_defaults_equal_torch():
    """Our keyword defaults are torch.optim's (msgd: momentum 0.9 by design)."""
    import inspect
    for name in sorted(algorithms.RULES):
        ours = {k: p.default for k, p in algorithms.hyper_parameters(name).items()}
        ref = {k: p.default for k, p in inspect.signature(TORCH[name]).parameters.items()}
        if "betas" in ref:
            ref["beta1"], ref["beta2"] = ref.pop("betas")
        if name == "msgd":
            ref["momentum"] = 0.9
        for k, v in ours.items():
            assert ref[k] == v, f"{name}: default {k}={v!r}, torch has {ref[k]!r}"


BAD = [
    ("sgd", {"lr": -0.1}, "Invalid learning rate: -0.1"),
    ("sgd", {"weight_decay": -1.0}, "Invalid weight_decay value: -1.0"),
    ("sgd", {"lr": float("nan")}, "Invalid learning rate: nan"),
    ("msgd", {"momentum": -0.5}, "Invalid momentum value: -0.5"),
    ("msgd", {"dampening": 1.5}, "Invalid dampening value: 1.5"),
    ("msgd", {"nesterov": True, "momentum": 0.0}, "Nesterov.*momentum=0.0"),
    ("msgd", {"nesterov": True, "dampening": 0.1}, "Nesterov.*dampening=0.1"),
    ("adagrad", {"lr_decay": -1.0}, "Invalid lr_decay value: -1.0"),
    ("adagrad", {"initial_accumulator_value": -0.1}, "initial_accumulator_value value: -0.1"),
    ("adagrad", {"eps": -1e-10}, "Invalid epsilon value: -1e-10"),
    ("adadelta", {"rho": 1.1}, "Invalid rho value: 1.1"),
    ("adadelta", {"lr": -1.0}, "Invalid learning rate: -1.0"),
    ("rmsprop", {"alpha": -0.1}, "Invalid alpha value: -0.1"),
    ("rmsprop", {"momentum": -0.9}, "Invalid momentum value: -0.9"),
    ("rmsprop", {"eps": -1.0}, "Invalid epsilon value: -1.0"),
    ("adam", {"beta1": 1.0}, "Invalid beta1 value.*: 1.0"),
    ("adam", {"beta2": -0.1}, "Invalid beta2 value.*: -0.1"),
    ("adam", {"weight_decay": -0.01}, "Invalid weight_decay value: -0.01"),
    ("adamax", {"beta1": 1.5}, "Invalid beta1 value.*: 1.5"),
    ("adamax", {"beta2": 1.0}, "Invalid beta2 value.*: 1.0"),
    ("adamax", {"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,hyper,pattern", BAD, ids=[f"{n}-{h}" for n, h, _ in BAD])
def test_bad_hyper_parameters(name, hyper, pattern):
    with pytest.raises(ValueError, match=pattern):
        algorithms.get(name, **hyper)


@pytest.mark.timeout(30)
def test_get_errors():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'; choose one of .*adam"):
        algorithms.get("adamw")
    with pytest.raises(ValueError, match=r"optimizer 'adam' has no hyper-parameter betas; "
                                         r"it takes .*beta1"):
        algorithms.get("adam", betas=(0.9, 0.999))
    assert type(algorithms.get("ADAM")).__name__ == "Adam"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(TORCH))
def test_bad_buffers(name):
    rule = algorithms.get(name)
    state = rule.init_state(4)
    with pytest.raises(ValueError, match=re.escape("must be float32, got float64")):
        rule.apply(np.zeros(4), np.zeros(4, np.float32), state)
    with pytest.raises(ValueError, match=re.escape("shapes (4,) and (5,)")):
        rule.apply(np.zeros(4, np.float32), np.zeros(5, np.float32), state)
