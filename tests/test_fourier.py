"""qa_tasks/listops/fourier.py: the DCT against scipy, shortening, and the two models' shared weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from qa_tasks.listops import dataset as listops
from qa_tasks.listops.fourier import (ModelConfig, build, dct, dct_shorten, idct, inherit,
                                      shorten_padded, shortened_length)


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
