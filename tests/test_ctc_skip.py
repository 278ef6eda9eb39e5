"""qa_tasks/speech/ctc_skip.py: the factorized head, and skipping against the full run."""
from __future__ import annotations

import pytest
import torch

from qa_tasks.speech.ctc_skip import CTCSkipEncoder, InterHead
from tests.speech_files import TINY

# model outputs computed two ways agree to float32 rounding: |difference| <= 1e-5 everywhere
CLOSE = dict(rtol=0, atol=1e-5)


# -- model -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("factorized", [True, False])
def test_intermediate_distribution_sums_to_one(factorized):
    torch.manual_seed(0)
    head = InterHead(16, 11, factorized)
    with torch.no_grad():
        head.proj.weight.mul_(10)       # extreme logits too
    logp = head(torch.randn(3, 20, 16))                                       # (B, T, V)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 20), **CLOSE,
                               msg=lambda m: f"sum over the vocabulary of P_inter: {m}")
    if factorized:   # P(blank) is the sigmoid of logit 0; digits share the rest by a softmax
        h = torch.randn(2, 5, 16)
        z = head.proj(h)
        expect = torch.cat([torch.sigmoid(z[..., :1]), (1 - torch.sigmoid(z[..., :1])) * torch.softmax(z[..., 1:], -1)], -1)
        torch.testing.assert_close(head(h).exp(), expect, **CLOSE,
                                   msg=lambda m: f"factorized P_inter vs sigmoid/softmax formula: {m}")


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = CTCSkipEncoder(n_mels=40, **TINY).eval()
    lens = torch.tensor([120, 93, 61])
    feats = torch.randn(3, 120, 40) * (torch.arange(120)[None, :, None] < lens[:, None, None])
    return model, feats, lens


@pytest.mark.timeout(60)
def test_no_skipping_equals_the_full_run_exactly():
    model, feats, lens = model_and_batch()
    with torch.no_grad():
        full, out_lens = model.full(feats, lens)
        skip, out_lens2, skipped = model.skipping(feats, lens, threshold=1.5)
    assert torch.equal(out_lens, out_lens2) and skipped.tolist() == [0, 0, 0]
    for b, n in enumerate(out_lens.tolist()):        # real frames bit for bit (padding is free to differ)
        assert torch.equal(full[b, :n], skip[b, :n]), f"utterance {b}: skipping nothing changed the output"
    with torch.no_grad():                            # one utterance alone: no padding at all
        one, _ = model.full(feats[:1], lens[:1])
        assert torch.equal(one, model.skipping(feats[:1], lens[:1], threshold=1.5)[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threshold", [1.5, None])
def test_a_padded_batch_computes_what_each_utterance_alone_does(threshold):
    """Batched decoding pads shorter utterances: the front end and both attention stages must
    ignore the padding, with and without skipping (None: a threshold that skips about half)."""
    model, feats, lens = model_and_batch(2)
    with torch.no_grad():
        if threshold is None:
            h, mask, out_lens = model.embed(feats, lens)
            for layer in model.layers[:model.inter_layer]:
                h = layer(h, mask)
            threshold = float(model.inter_head(h)[0, :out_lens[0], 0].exp().median())
        batched, out_lens, skipped = model.skipping(feats, lens, threshold)
        for b, n in enumerate(lens.tolist()):
            alone, out_len, sk = model.skipping(feats[b:b + 1, :n], lens[b:b + 1], threshold)
            assert int(out_len) == int(out_lens[b]) and int(sk) == int(skipped[b])
            torch.testing.assert_close(batched[b, :int(out_len)], alone[0], **CLOSE,
                                       msg=lambda m: f"utterance {b} padded in a batch vs alone: {m}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extension", [0, 1, 2])
def test_skipped_frames_keep_layer_k_values_and_kept_frames_attend_among_themselves(extension):
    model, feats, lens = model_and_batch(1)
    k = model.inter_layer
    with torch.no_grad():
        h, mask, out_lens = model.embed(feats, lens)
        for layer in model.layers[:k]:
            h = layer(h, mask)
        p_blank = model.inter_head(h)[..., 0].exp()
        threshold = float(p_blank[0, :out_lens[0]].median())       # about half the frames pass
        keep = model.keep_mask(h, out_lens, threshold, extension)
        # the keep mask: below threshold, dilated by `extension`, never a padding frame
        for b in range(3):
            n = int(out_lens[b])
            base = [bool(p_blank[b, t] <= threshold) for t in range(n)]
            expect = [any(base[max(0, t - extension):t + extension + 1]) for t in range(n)]
            assert keep[b, :n].tolist() == expect and not keep[b, n:].any()
        log_probs, _, skipped = model.skipping(feats, lens, threshold, extension)
        assert skipped.tolist() == (out_lens - keep.sum(1)).tolist() and 0 < int(skipped.sum()) < int(out_lens.sum())
        for b in range(3):
            n = int(out_lens[b])
            idx = keep[b].nonzero()[:, 0]
            g = h[b:b + 1, idx]                                      # (1, Tk, d): this utterance alone
            for layer in model.layers[k:]:
                g = layer(g, None)
            expect = h[b:b + 1].clone()
            expect[0, idx] = g[0]
            torch.testing.assert_close(log_probs[b, :n], model.final(expect)[0, :n], **CLOSE,
                                       msg=lambda m: f"utterance {b} vs running it alone: {m}")
            skip_idx = (~keep[b, :n]).nonzero()[:, 0]
            torch.testing.assert_close(log_probs[b, skip_idx], model.final(h[b:b + 1, skip_idx])[0], **CLOSE,
                                       msg=lambda m: f"utterance {b} skipped frames vs layer k: {m}")
        # everything skipped: the final head reads layer k everywhere
        all_skip, _, skipped = model.skipping(feats, lens, threshold=-1.0, spike_extension=extension)
        torch.testing.assert_close(all_skip, model.final(h), **CLOSE,
                                   msg=lambda m: f"all frames skipped vs the final head on layer k: {m}")
        assert skipped.tolist() == out_lens.tolist()
