"""The `lra` workload: ListOps generator and formats, the DCT, the Fourier Transformer, training."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_tasks.listops import dataset as listops
from qa_tasks.listops.fourier import (ModelConfig, build, dct, dct_shorten, idct, inherit,
                              shorten_padded, shortened_length)
from qa_tasks.listops.lra import LRA, load_weights
from qa_tasks.plain import save_weights


# ---- the DCT against scipy ----------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 2, 3, 8, 17, 64, 101])
def test_dct_and_inverse_match_scipy(n):
    x = np.random.default_rng(n).standard_normal((3, 5, n))
    X = dct(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(X, scipy.fft.dct(x, type=2, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(idct(torch.from_numpy(X)).numpy(), x, atol=1e-12)        # round trip
    np.testing.assert_allclose(idct(torch.from_numpy(X)).numpy(),
                               scipy.fft.idct(X, type=2, norm="ortho"), atol=1e-12)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n,m", [(10, 5), (11, 6), (64, 16), (7, 1), (9, 9)])
def test_truncation_matches_scipy(n, m):
    x = np.random.default_rng(n * m).standard_normal((4, n))
    want = scipy.fft.idct(scipy.fft.dct(x, norm="ortho")[:, :m], norm="ortho") * math.sqrt(m / n)
    np.testing.assert_allclose(dct_shorten(torch.from_numpy(x), m).numpy(), want, atol=1e-12)


@pytest.mark.timeout(60)
def test_shortening_keeps_a_constant_sequence_and_float32_gradients_flow():
    x = torch.full((2, 30), 3.0, requires_grad=True)
    y = dct_shorten(x, 15)
    torch.testing.assert_close(y, torch.full((2, 15), 3.0))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.timeout(60)
def test_shorten_padded_treats_each_sequence_over_its_own_length():
    torch.manual_seed(0)
    x = torch.randn(3, 20, 4)                                       # (B, T, C)
    lengths = [20, 13, 1]
    mask = torch.arange(20) < torch.tensor(lengths)[:, None]
    out, new_mask = shorten_padded(x, mask, 0.5)
    assert new_mask.sum(1).tolist() == [10, 7, 1] == [shortened_length(n, 0.5) for n in lengths]
    for b, n in enumerate(lengths):
        m = shortened_length(n, 0.5)
        torch.testing.assert_close(out[b, :m], dct_shorten(x[b, :n].T, m).T)
        assert (out[b, m:] == 0).all()
    with pytest.raises(ValueError, match="right-padding"):
        shorten_padded(x, mask.flip(1), 0.5)


# ---- ListOps: labels against an independent evaluator -------------------------------------------

def reference_value(tokens: list[str]) -> int:
    """A separate evaluator: a stack machine over the token strings (not listops.evaluate)."""
    stack: list = []
    for tok in tokens:
        if tok == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
                     "[MED": lambda a: math.floor(statistics.median(a))}[op](args)
            stack.append(value)
        elif tok.isdigit():
            stack.append(int(tok))
        else:
            stack.append(tok)
    (value,) = stack
    return value


trees = st.recursive(st.integers(0, 9),
                     lambda sub: st.tuples(st.sampled_from(listops.OPERATORS), st.lists(sub, min_size=1, max_size=6)),
                     max_leaves=40)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None)
@given(trees)
def test_labels_match_an_independent_evaluator(tree):
    tokens = listops.to_tokens(tree)
    assert listops.evaluate(listops.parse(tokens)) == reference_value(tokens)


@pytest.mark.timeout(60)
def test_generator_follows_the_spec_and_is_deterministic():
    spec = listops.ListOpsSpec(min_length=20, max_length=60, max_depth=6, max_args=5,
                               n_train=150, n_valid=20, n_test=20, seed=3)
    splits = listops.generate(spec)
    assert {k: len(v) for k, v in splits.items()} == {"train": 150, "valid": 20, "test": 20}
    sources = [s for rows in splits.values() for s, _ in rows]
    assert len(set(sources)) == len(sources)                        # distinct across splits
    for source, label in splits["train"]:
        tokens = source.split()
        assert 20 <= len(tokens) <= 60
        assert label == reference_value(tokens)
        assert set(tokens) <= set(listops.DIGITS + listops.OPERATORS + (listops.END,))
    depth = max(max(np.cumsum([(t in listops.OPERATORS) - (t == "]") for t in s.split()]))
                for s in sources)
    assert depth <= spec.max_depth - 1
    assert listops.generate(spec) == splits
    assert listops.generate(listops.ListOpsSpec(**{**spec.__dict__, "seed": 4})) != splits
    assert len({label for _, label in splits["train"]}) == 10       # every class occurs


# ---- file formats -------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_both_tsv_formats_round_trip(tmp_path):
    spec = listops.ListOpsSpec(min_length=5, max_length=40, n_train=50, n_valid=0, n_test=0)
    rows = listops.generate(spec)["train"]
    listops.write_lra_tsv(tmp_path / "basic_train.tsv", rows)
    listops.write_original_tsv(tmp_path / "train_d20s.tsv", rows)
    assert (tmp_path / "basic_train.tsv").read_text().startswith("Source\tTarget\n")
    assert "( " in (tmp_path / "train_d20s.tsv").read_text()
    want = [(s.split(), label) for s, label in rows]
    assert listops.read_lra_tsv(tmp_path / "basic_train.tsv") == want
    assert listops.read_original_tsv(tmp_path / "train_d20s.tsv") == want


@pytest.mark.timeout(60)
def test_original_rendering_is_lras(tmp_path):
    path = tmp_path / "train.tsv"
    listops.write_original_tsv(path, [("[MAX 2 9 ]", 9)])
    assert path.read_text() == "9\t( ( ( [MAX 2 ) 9 ) ] )\n"   # LRA's to_string of its tuples


LRA_BAD = [
    ("Src\tTgt\n[MAX 1 ]\t1\n", "line 1: header"),
    ("Source\tTarget\n[MAX 1 ]\t1\t3\n", "line 2: 3 tab-separated fields"),
    ("Source\tTarget\n[MAX 1 ]\t1\n[MAX 1 ]\tx\n", "line 3: label 'x' is not a class"),
    ("Source\tTarget\n[MAX 1 ]\t12\n", "label '12' is not a class"),
    ("Source\tTarget\n[MAX 1 [FOO 2 ] ]\t1\n", "token 2 '\\[FOO' is not ListOps"),
    ("Source\tTarget\n[MAX 1 [MIN 2 ]\t1\n", "never closed"),
    ("Source\tTarget\n[MAX 1 ] ]\t1\n", "after the end of the expression"),
    ("Source\tTarget\n]\t1\n", "closes nothing"),
    ("Source\tTarget\n[MAX ]\t1\n", "no operands"),
    ("Source\tTarget\n[MAX 1 7 ]\t1\n", "label 1 but the expression evaluates to 7"),
]


ORIGINAL_BAD = [
    ("( [MAX 1 ) ]\t1\n", "line 1: label"),
    ("1\t( [MAX 1 ]\n", "1 '\\(' but 0 '\\)'"),
    ("1\n", "1 tab-separated fields"),
    ("3\t( ( [SM 1 ) 1 ) ]\n", "label 3 but the expression evaluates to 2"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader, name, text, pattern",
                         [("read_lra_tsv", "basic_train.tsv", *case) for case in LRA_BAD]
                         + [("read_original_tsv", "train_d20s.tsv", *case) for case in ORIGINAL_BAD])
def test_malformed_tsv_is_a_clear_error(tmp_path, reader, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern) as e:
        getattr(listops, reader)(path)
    assert str(path) in str(e.value)


# ---- the models ---------------------------------------------------------------------------------

def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": len(listops.VOCAB), "n_classes": 10, "max_len": 64,
                          "d_model": 16, "n_heads": 2, "n_layers": 3, "d_ff": 32,
                          "fourier_layers": (1, 2), "fourier_ratio": 0.5, **kw})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_transformer_weights_load_into_the_fourier_model(positions):
    cfg = small_cfg(positions=positions)
    torch.manual_seed(0)
    transformer = build(cfg, "transformer")
    fourier = build(cfg, "fourier")
    result = fourier.load_state_dict(transformer.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    inherited = inherit(transformer.state_dict(), cfg)
    for (k1, v1), (k2, v2) in zip(transformer.state_dict().items(), inherited.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.randint(2, len(listops.VOCAB), (2, 40))
    # at ratio 1 the shortening is the identity: the two models compute the same function
    same = inherit(transformer.state_dict(), small_cfg(positions=positions, fourier_ratio=1.0))
    torch.testing.assert_close(same(ids), transformer(ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(inherited(ids), transformer(ids))      # at 0.5 it is not


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["transformer", "fourier"])
def test_padding_does_not_change_the_output(kind):
    torch.manual_seed(1)
    model = build(small_cfg(), kind).eval()
    ids = torch.randint(2, len(listops.VOCAB), (3, 30))             # (B, T)
    ids[1, 17:] = listops.PAD
    ids[2, 4:] = listops.PAD
    batched = model(ids)                                            # (B, 10)
    for b, n in enumerate([30, 17, 4]):
        torch.testing.assert_close(model(ids[b:b + 1, :n]), batched[b:b + 1], atol=1e-5, rtol=1e-5)


# ---- the task -----------------------------------------------------------------------------------

TINY = dict(data="generated", min_length=5, max_length=30, max_depth=4, max_args=4,
            n_train=400, n_valid=100, n_test=50, batch=16, d_model=32, n_heads=2, n_layers=2,
            d_ff=64, fourier_layers="1")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.timeout(60)
def test_shards_are_disjoint_and_cover_the_epoch(cache):
    task = LRA(**TINY)

    def rows(learner, seed):  # examples without their batch's padding
        return [tuple(t for t in r if t != listops.PAD)
                for ids, _ in task.batches(learner, 3, seed) for r in ids.tolist()]

    shards = [rows(i, seed=5) for i in range(3)]
    assert sum(map(len, shards)) == 400 == len(set().union(*shards))  # disjoint, all distinct
    assert rows(0, 5) != rows(0, 6) and sorted(rows(0, 5)) == sorted(rows(0, 6))  # seed shuffles
    assert list((cache / "gadei" / "lra").glob("listops-*/basic_train.tsv"))  # cached, not in the repo


@pytest.mark.timeout(60)
def test_batches_hold_similar_lengths(cache):
    """Length bucketing: far less padding than batches of random lengths, and the batch order
    still changes with the seed (TINY: lengths 5..30, 400 examples, batches of 16)."""
    task = LRA(**TINY)
    batches = [ids for ids, _ in task.batches(0, 1, seed=1)]
    real = sum(int((ids != listops.PAD).sum()) for ids in batches)
    padded = sum(ids.numel() for ids in batches)
    assert padded < 1.1 * real, f"{padded / real:.2f}x padding"
    assert [len(b[0]) for b in batches] != [len(b[0]) for b, _ in task.batches(0, 1, seed=2)]


@pytest.mark.timeout(60)
def test_real_data_folder_is_read_and_missing_folder_explained(tmp_path, cache):
    folder = tmp_path / "data" / "listops"
    folder.mkdir(parents=True)
    rows = listops.generate(listops.ListOpsSpec(min_length=5, max_length=30, n_train=20, n_valid=5, n_test=5))
    for split, name in listops.LRA_FILES.items():
        listops.write_lra_tsv(folder / name, rows[split])
    task = LRA(data="real", data_dir=str(tmp_path / "data"), max_length=30, d_model=16, n_heads=2, d_ff=32)
    metrics = task.evaluate(task.build_model(), "test")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    with pytest.raises(FileNotFoundError, match="must hold listops/"):
        LRA(data="real", data_dir=str(tmp_path)).evaluate(task.build_model(), "valid")
    with pytest.raises(ValueError, match="model must be"):
        LRA(model="fnet")


@pytest.mark.timeout(180)
def test_short_training_lowers_the_loss_and_weights_carry_over(tmp_path, cache):
    torch.manual_seed(0)
    task = LRA(**TINY, model="transformer")
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = task.evaluate(model, "valid")["loss"]
    for epoch in range(6):
        for batch in task.batches(0, 1, seed=epoch):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(model, "valid")["loss"]
    assert after < before - 0.2, f"valid loss {before:.3f} -> {after:.3f}: training did not learn"
    # the trained weights start a Fourier Transformer through --init-from
    save_weights(model, tmp_path / "t.npz")
    fourier = LRA(**TINY, model="fourier", init_from=str(tmp_path / "t.npz")).build_model()
    assert set(load_weights(tmp_path / "t.npz")) == set(fourier.state_dict())
    torch.testing.assert_close(fourier.state_dict()["head.weight"], model.state_dict()["head.weight"])


@pytest.mark.timeout(180)
def test_gadei_trains_the_task_and_its_checkpoint_starts_a_fourier_model(tmp_path, cache):
    import gadei

    options = {**TINY, "model": "transformer"}
    summary = gadei.train("lra", task_options=options, optimizer="adam", learners=2, steps=30,
                          out=tmp_path / "run", lr=3e-3)
    assert summary["updates_applied"] == 30
    assert 0.0 <= summary["final_metrics"]["accuracy"] <= 1.0
    trained = load_weights(tmp_path / "run")                         # through gadei.checkpoint
    task = LRA(**{**options, "model": "fourier"}, init_from=str(tmp_path / "run"))
    fourier = task.build_model()
    for name, value in fourier.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    assert task.evaluate(fourier, "valid")["loss"] > 0
