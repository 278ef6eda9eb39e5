"""The asr task: FSDD loader, log-mel features, factorized head, blank-triggered skipping, training."""
from __future__ import annotations

import io
import math
import tarfile
import wave

import numpy as np
import pytest
import scipy.signal
import torch

from qa_tasks.speech import fsdd
from qa_tasks.speech.asr import ASR, error_rates
from qa_tasks.speech.ctc_skip import CTCSkipEncoder, InterHead

def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-5):
    """One checked comparison that names what it compares and by how much it is off."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert diff <= atol, f"{what}: max |difference| {diff:.3g} > {atol}"


TINY = dict(d_model=32, heads=2, layers=4, inter_layer=2, ff_dim=64, conv_channels=16, dropout=0.0)


def wav_bytes(x: np.ndarray, rate: int = 8000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture
def recordings_dir(tmp_path, monkeypatch):
    """2 speakers x 10 digits x indices 0..11 of generated tones, as real WAV files."""
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "recordings"
    folder.mkdir()
    for s, speaker in enumerate(["ann", "bob"]):
        for d in range(10):
            for i in range(12):
                x = fsdd.synth_digit(d, np.random.default_rng([s, d, i]), pitch=1 + 0.1 * s)
                (folder / f"{d}_{speaker}_{i}.wav").write_bytes(wav_bytes(x))
    return folder


def make_tar(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="recordings")
    return path


# -- loader ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_folder_and_tar_load_the_same_recordings(recordings_dir, tmp_path):
    from_dir = fsdd.load_recordings(recordings_dir)
    from_tar = fsdd.load_recordings(make_tar(recordings_dir, tmp_path / "r.tar.gz"))
    assert len(from_dir) == len(from_tar) == 2 * 10 * 12
    for a, b in zip(from_dir, from_tar):
        assert (a.digit, a.speaker, a.index) == (b.digit, b.speaker, b.index)
        np.testing.assert_array_equal(a.audio, b.audio)
    raw = wav_bytes(fsdd.synth_digit(3, np.random.default_rng([1, 3, 7]), pitch=1.1))
    rec = next(r for r in from_dir if (r.digit, r.speaker, r.index) == (3, "bob", 7))
    np.testing.assert_array_equal(rec.audio, np.frombuffer(raw[44:], "<i2"))
    # the second load comes from the .npy cache and is identical; no temporary file is left
    again = fsdd.load_recordings(recordings_dir)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(from_dir, again))
    cached = list((tmp_path / "cache").rglob("*"))
    assert {f.name for f in cached if f.is_file()} >= {"audio.npy", "table.npy", "speakers.json"}
    assert not [f for f in cached if ".tmp" in f.name]


@pytest.mark.timeout(60)
def test_a_cache_cut_short_before_its_marker_is_decoded_again(recordings_dir, tmp_path):
    fsdd.load_recordings(recordings_dir)
    (marker,) = (tmp_path / "cache").rglob("speakers.json")
    marker.unlink()                                    # as if the decoder died before the marker
    (marker.parent / "audio.npy").write_bytes(b"half")  # and left a damaged audio file
    again = fsdd.load_recordings(recordings_dir)
    assert len(again) == 2 * 10 * 12 and marker.exists()


@pytest.mark.timeout(60)
def test_speaker_subset_and_data_dir_layouts(recordings_dir, tmp_path):
    only_bob = fsdd.load_recordings(recordings_dir, ["bob"])
    assert {r.speaker for r in only_bob} == {"bob"} and len(only_bob) == 120
    with pytest.raises(ValueError, match="george.*holds ann, bob"):
        fsdd.load_recordings(recordings_dir, ["george"])
    # a data root holding fsdd/recordings.tar.gz, as /work/shared/data does
    (tmp_path / "root" / "fsdd").mkdir(parents=True)
    tar = make_tar(recordings_dir, tmp_path / "root" / "fsdd" / "recordings.tar.gz")
    assert fsdd.find_source(tmp_path / "root") == tar
    assert fsdd.find_source(recordings_dir) == recordings_dir
    task = ASR(data="real", data_dir=str(tmp_path / "root"), speakers="ann", **TINY)
    assert {r.speaker for r in task.recordings} == {"ann"}
    with pytest.raises(FileNotFoundError, match="no FSDD recordings"):
        fsdd.find_source(tmp_path / "cache")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, data, message", [
    ("3_ann_x.wav", wav_bytes(np.zeros(400)), r"must be named \{digit\}_\{speaker\}_\{index\}"),
    ("3_ann_1.wav", wav_bytes(np.zeros(400), rate=16000), "expected 8000 Hz mono 16-bit"),
    ("3_ann_1.wav", wav_bytes(np.zeros(400), channels=2), "expected 8000 Hz mono 16-bit"),
    ("3_ann_1.wav", b"RIFF\x00\x00garbage", "not a readable PCM WAV"),
    ("3_ann_1.wav", wav_bytes(np.zeros(400))[:-100], "truncated"),
])
def test_malformed_files_are_named_in_the_error(tmp_path, monkeypatch, name, data, message):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / name).write_bytes(data)
    with pytest.raises(ValueError, match=message) as e:
        fsdd.load_recordings(folder)
    assert name in str(e.value)


@pytest.mark.timeout(60)
def test_missing_and_empty_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fsdd.load_recordings(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .wav"):
        fsdd.load_recordings(tmp_path / "empty")
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar"):
        fsdd.load_recordings(tmp_path / "junk.tar")


@pytest.mark.timeout(60)
def test_splits_are_disjoint_and_joins_are_deterministic(recordings_dir):
    recs = fsdd.load_recordings(recordings_dir)
    split = {s: fsdd.select(recs, s) for s in ("train", "valid", "test")}
    assert {r.index for r in split["test"]} == set(range(5))
    assert {r.index for r in split["valid"]} == set(range(5, 10))
    assert {r.index for r in split["train"]} == {10, 11}
    assert sum(map(len, split.values())) == len(recs) == len(fsdd.select(recs, "all"))
    a, b, c = (fsdd.join(split["test"], seed) for seed in (7, 7, 8))
    assert [u.digits for u in a] == [u.digits for u in b] and all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b))
    assert [u.digits for u in a] != [u.digits for u in c]
    # every recording exactly once, one speaker per utterance, 1..7 digits
    assert sorted(d for u in a for d in u.digits) == sorted(r.digit for r in split["test"])
    assert all(1 <= len(u.digits) <= 7 for u in a)
    per_speaker = {s: sum(len(u.digits) for u in a if u.speaker == s) for s in ("ann", "bob")}
    assert per_speaker == {"ann": 50, "bob": 50}
    with pytest.raises(ValueError, match="unknown split"):
        fsdd.select(recs, "dev")


# -- features ----------------------------------------------------------------------------------


def reference_filterbank(n_mels, n_fft=200, rate=8000):
    """Triangular HTK-mel filters written out one bin at a time."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)
    top = mel(rate / 2)
    edges = [inv(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * rate / n_fft
            if lo <= f <= mid:
                fb[m, k] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[m, k] = (hi - f) / (hi - mid)
    return fb


@pytest.mark.timeout(60)
def test_mel_filterbank_matches_reference():
    fb = fsdd.mel_filterbank(40).numpy()
    np.testing.assert_allclose(fb, reference_filterbank(40), atol=1e-6)
    assert fb.shape == (40, 101) and (fb.max(1) > 0.5).all()
    with pytest.raises(ValueError, match="use fewer mels"):
        fsdd.mel_filterbank(120)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [200, 279, 280, 8000, 12345])
def test_log_mel_frames_and_values(n):
    x = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    fb = fsdd.mel_filterbank(40)
    feats = fsdd.log_mel(x, fb, normalize=False)
    assert feats.shape == (1 + (n - 200) // 80, 40) == (fsdd.n_frames(n), 40)
    # reference: frame by hand, periodic Hann, |rfft|^2, filterbank, log
    frames = np.stack([x[i * 80:i * 80 + 200] for i in range(feats.shape[0])]).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * scipy.signal.get_window("hann", 200), axis=1)) ** 2
    ref = np.log(np.maximum(power @ reference_filterbank(40).T, 1e-10))
    np.testing.assert_allclose(feats.numpy(), ref, rtol=1e-4, atol=1e-3)
    normed = fsdd.log_mel(x, fb).numpy()
    if len(normed) > 1:
        np.testing.assert_allclose(normed.mean(0), 0, atol=1e-4)
    with pytest.raises(ValueError, match="shorter than one 25 ms window"):
        fsdd.log_mel(x[:199], fb)


# -- model -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("factorized", [True, False])
def test_intermediate_distribution_sums_to_one(factorized):
    torch.manual_seed(0)
    head = InterHead(16, 11, factorized)
    with torch.no_grad():
        head.proj.weight.mul_(10)       # extreme logits too
    logp = head(torch.randn(3, 20, 16))                                       # (B, T, V)
    assert_close(logp.exp().sum(-1), torch.ones(3, 20), "sum over the vocabulary of P_inter")
    if factorized:   # P(blank) is the sigmoid of logit 0; digits share the rest by a softmax
        h = torch.randn(2, 5, 16)
        z = head.proj(h)
        expect = torch.cat([torch.sigmoid(z[..., :1]), (1 - torch.sigmoid(z[..., :1])) * torch.softmax(z[..., 1:], -1)], -1)
        assert_close(head(h).exp(), expect, "factorized P_inter vs sigmoid/softmax formula")


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
            assert_close(batched[b, :int(out_len)], alone[0], f"utterance {b} padded in a batch vs alone")


@pytest.mark.timeout(60)
def test_eval_rounds_join_the_same_recordings_again_differently(recordings_dir):
    one = ASR(data="real", data_dir=str(recordings_dir), **TINY).eval_set("test")
    three = ASR(data="real", data_dir=str(recordings_dir), eval_rounds=3, **TINY).eval_set("test")
    assert three[1][:len(one[1])] == one[1]                       # round 0 unchanged
    assert all(torch.equal(a, b) for a, b in zip(one[0], three[0]))
    digits = lambda utts: sorted(d for u in utts for d in u)
    assert digits(three[1]) == sorted(3 * digits(one[1]))                # each recording 3 times
    assert three[1][len(one[1]):] != 2 * one[1]                  # other groupings


@pytest.mark.timeout(60)
def test_evaluate_decodes_the_same_in_batches_as_one_at_a_time():
    task = ASR(data="generated", speakers="gen0", max_digits=3, **TINY)
    torch.manual_seed(3)
    model = task.build_model()
    runs = []
    for eval_batch in (1, 4):
        task.eval_batch = eval_batch
        runs.append(task.transcribe(model, "test", 0.5))
    assert runs[0]["hyps"] == runs[1]["hyps"] and runs[0]["refs"] == runs[1]["refs"]
    assert runs[0]["skipped"] == runs[1]["skipped"] and runs[0]["frames"] == runs[1]["frames"]
    assert len(runs[0]["ms"]) == len(runs[0]["refs"]) and len(runs[1]["ms"]) == -(-len(runs[1]["refs"]) // 4)


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
            assert_close(log_probs[b, :n], model.final(expect)[0, :n], f"utterance {b} vs running it alone")
            skip_idx = (~keep[b, :n]).nonzero()[:, 0]
            assert_close(log_probs[b, skip_idx], model.final(h[b:b + 1, skip_idx])[0], f"utterance {b} skipped frames vs layer k")
        # everything skipped: the final head reads layer k everywhere
        all_skip, _, skipped = model.skipping(feats, lens, threshold=-1.0, spike_extension=extension)
        assert_close(all_skip, model.final(h), "all frames skipped vs the final head on layer k")
        assert skipped.tolist() == out_lens.tolist()


# -- task --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_error_rates():
    wer, cer = error_rates([[1, 2, 3], [4]], [[1, 3], [4, 4]])
    assert wer == pytest.approx(2 / 4)
    # spelled out: "one two three" -> "one three" drops 4 chars of 13; "four" -> "four four" adds 5 of 4
    assert cer == pytest.approx((4 + 5) / (13 + 4))
    assert error_rates([[5]], [[5]]) == (0.0, 0.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options, message", [
    (dict(data="fake"), "data must be"),
    (dict(batch=0), "batch sizes must be >= 1"),
    (dict(eval_batch=0), "batch sizes must be >= 1"),
    (dict(eval_rounds=0), "eval_rounds must be >= 1"),
    (dict(inter_ctc_weight=1.0), r"inter_ctc_weight must be in \[0, 1\)"),
    (dict(inter_ctc_weight=0.0, distill_weight=0.0), "would never be trained"),
    (dict(inter_layer=6), "inter_layer must be in 1..layers-1"),
    (dict(d_model=30, heads=4), "multiple of heads"),
    (dict(spike_extension=-1), "spike_extension"),
])
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        ASR(**{"data": "generated", **options})


@pytest.mark.timeout(60)
def test_shards_are_disjoint_and_batches_deterministic(recordings_dir):
    task = ASR(data="real", data_dir=str(recordings_dir), batch=4, **TINY)
    shards = [[b["targets"].tolist() for b in task.batches(i, 2, seed=3)] for i in range(2)]
    assert shards[0] == [b["targets"].tolist() for b in task.batches(0, 2, seed=3)]
    digits = lambda batches: sorted(d for b in batches for row in b for d in row if d)
    assert sorted(digits(shards[0]) + digits(shards[1])) == sorted(r.digit + 1 for r in fsdd.select(task.recordings, "train"))
    batch = next(iter(task.batches(0, 1, seed=0)))
    assert batch["feats"].shape[0] == task.batch_size(batch) == 4 and batch["feats"].shape[2] == 40


@pytest.mark.timeout(120)
def test_training_loss_falls_and_evaluate_reports(tmp_path):
    """A few dozen Adam steps on two generated batches: the loss must drop well below the
    all-blank plateau, and evaluate must report every metric."""
    task = ASR(data="generated", batch=8, speakers="gen0", max_digits=3, **TINY)
    torch.manual_seed(0)
    model = task.build_model()
    batches = list(task.batches(0, 1, seed=0))[:2]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        loss = task.loss(model, batches[step % 2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.5 * first and last < 1.5, (first, last)
    metrics = task.evaluate(model, "test")
    assert set(metrics) >= {"wer", "cer", "skipped_fraction", "encoder_ms_per_utt"}
    assert 0 <= metrics["skipped_fraction"] <= 0.5 and metrics["encoder_ms_per_utt"] > 0


@pytest.mark.timeout(300)
def test_asr_trains_through_gadei_with_two_learners(tmp_path):
    """The same task through the shared-memory PS: 2 learner processes, Adam on the server; the
    checkpoint's weights, loaded by name without pickle, give the summary's metrics."""
    gadei = pytest.importorskip("gadei")
    from gadei import checkpoint
    options = dict(data="generated", batch=8, speakers="gen0", max_digits=3, **TINY)
    task = ASR(**options)
    torch.manual_seed(0)
    batch = next(iter(task.batches(0, 1, seed=99)))
    with torch.no_grad():
        before = float(task.loss(task.build_model().eval(), batch))
    summary = gadei.train("asr", task_options=options, optimizer="adam", learners=2, steps=80,
                          out=tmp_path / "run", lr=3e-3)
    assert summary["updates_applied"] == 80
    model = task.build_model()
    weights = checkpoint.load(tmp_path / "run")["weights"]
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    with torch.no_grad():
        after = float(task.loss(model.eval(), batch))
    assert after < 0.5 * before, (before, after)
    metrics = task.evaluate(model, "test")
    assert metrics["wer"] == pytest.approx(summary["final_metrics"]["wer"])
