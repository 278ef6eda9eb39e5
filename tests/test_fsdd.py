"""qa_tasks/speech/fsdd.py: FSDD folders and tars, the cache, damaged files, splits and joins, log-mel features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.signal
import torch

from qa_tasks.speech import fsdd
from qa_tasks.speech.asr import ASR
from tests.speech_files import TINY, make_tar, wav_bytes, write_recordings


@pytest.fixture
def recordings_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    return write_recordings(tmp_path / "recordings")


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
    # a data root holding fsdd/recordings.tar.gz, as $GADEI_DATA does
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


@pytest.mark.timeout(60)
def test_cepstra_are_the_orthonormal_dct_of_the_log_mels():
    feats = fsdd.log_mel(np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32),
                         fsdd.mel_filterbank(40), normalize=False)
    np.testing.assert_allclose(fsdd.cepstra(feats, 13).numpy(),
                               scipy.fft.dct(feats.numpy().astype(np.float64), type=2, norm="ortho", axis=1)[:, :13],
                               rtol=1e-4, atol=1e-3)
    # all 40 coefficients keep the frame's energy (orthonormal): nothing lost but the order
    np.testing.assert_allclose(fsdd.cepstra(feats, 40).norm(dim=1), feats.norm(dim=1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"cepstra must be in 1..40"):
        fsdd.cepstra(feats, 41)


@pytest.mark.timeout(60)
def test_normalize_over_utterances_or_groups():
    rng = np.random.default_rng(1)
    feats = [torch.from_numpy(rng.normal(3.0, 2.0, (n, 5)).astype(np.float32)) for n in (7, 11, 4)]
    # one key per utterance: log_mel's per-utterance normalisation
    for f, g in zip(feats, fsdd.normalize(feats, [0, 1, 2])):
        torch.testing.assert_close(g, (f - f.mean(0)) / (f.std(0, correction=0) + 1e-5))
    # a shared key: the statistics of the group's frames together, each frame kept in place
    out = fsdd.normalize(feats, ["a", "b", "a"])
    together = torch.cat([out[0], out[2]])
    torch.testing.assert_close(together.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(together.std(0, correction=0), torch.ones(5), atol=1e-4, rtol=0)
    assert not torch.allclose(out[0].mean(0), torch.zeros(5), atol=1e-3)   # not each on its own
    torch.testing.assert_close(out[1], fsdd.normalize([feats[1]], ["b"])[0])
    with pytest.raises(ValueError, match="3 feature arrays but 2 group keys"):
        fsdd.normalize(feats, ["a", "b"])


# -- augmentation ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_join_levels_and_gains(recordings_dir):
    recs = fsdd.select(fsdd.load_recordings(recordings_dir), "test")
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    speech = lambda u: u.audio[u.audio != 0]                  # noise 0: the pauses are exact zeros
    plain = fsdd.join(recs, 3, max_digits=1, noise=0.0)
    levelled = fsdd.join(recs, 3, max_digits=1, noise=0.0, level=0.05)
    assert [u.digits for u in plain] == [u.digits for u in levelled]
    assert len({round(rms(speech(u)), 3) for u in plain}) > 1
    assert all(rms(speech(u)) == pytest.approx(0.05, rel=1e-3) for u in levelled)
    gained = fsdd.join(recs, 3, max_digits=1, noise=0.0, level=0.05, gain_db=6)
    assert [u.digits for u in gained] == [u.digits for u in plain]      # the same groups
    db = np.array([20 * np.log10(rms(speech(u)) / 0.05) for u in gained])
    assert np.abs(db).max() <= 6.0 + 1e-3 and db.std() > 1


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * fsdd.SAMPLE_RATE / len(x))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("factor", [0.9, 0.95, 1.07, 1.1])
def test_speed_perturbation_scales_duration_and_pitch(factor):
    t = np.arange(8000) / fsdd.SAMPLE_RATE
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = fsdd.speed_perturb(x, factor)
    assert y.dtype == np.float32 and len(y) == math.ceil(8000 / factor)
    assert peak_hz(y) == pytest.approx(1000 * factor, abs=3)
    # the same as scipy's resample_poly with its own filter
    np.testing.assert_allclose(y, scipy.signal.resample_poly(x, 100, round(100 * factor)), atol=1e-5)
    assert fsdd.speed_perturb(x, 1.0) is x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("alpha", [0.85, 0.9, 1.1, 1.15])
def test_vtlp_warp_scales_low_frequencies_and_keeps_the_band(alpha):
    import torch
    f = torch.linspace(0, 4000, 401, dtype=torch.float64)
    w = fsdd.vtlp_warp(f, alpha, 4000.0)
    assert float(w[0]) == 0 and float(w[-1]) == pytest.approx(4000)
    assert (w.diff() > 0).all()                                          # monotone: no folding
    low = f <= 0.8 * 4000 * min(alpha, 1) / alpha
    torch.testing.assert_close(w[low], alpha * f[low])
    fb = fsdd.mel_filterbank(40, warp=alpha).numpy()
    plain = fsdd.mel_filterbank(40).numpy()
    assert fb.shape == plain.shape and (fb.sum(1) > 0).all()
    centre = lambda bank: (bank * np.arange(101)).sum(1) / bank.sum(1)
    moved = centre(fb)[10:25] / centre(plain)[10:25]                       # filters below the knee
    np.testing.assert_allclose(moved, alpha, rtol=0.06)
    np.testing.assert_array_equal(fsdd.mel_filterbank(40, warp=1.0).numpy(), plain)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shift", [0.9, 1.12])
def test_a_warped_filterbank_puts_a_shifted_voices_peaks_where_the_unshifted_has_them(shift):
    """Test-time VTLN's premise: a voice whose formants sit `shift` times higher (generated tones,
    all below the warp's knee) peaks, under the filters warped by `shift`, in the mel bins where
    the unshifted voice peaks under the plain filters; under the plain filters it peaks elsewhere."""
    plain = fsdd.mel_filterbank(40)
    moved, kept = [], []
    for digit in (0, 2, 4, 6, 7, 8):                   # both tones <= 1500 Hz, x 1.12 below the knee
        voice = lambda pitch: fsdd.synth_digit(digit, np.random.default_rng([5, digit]), pitch) / 32768.0
        ref = fsdd.log_mel(voice(1.0), plain, normalize=False)
        loud = ref.max(1).values > ref.max() - 3          # the tones' frames, not the noise between
        peaks = lambda feats: feats.argmax(1)[loud]
        moved.append(float((peaks(fsdd.log_mel(voice(shift), plain, normalize=False)) != peaks(ref)).float().mean()))
        warped = fsdd.log_mel(voice(shift), fsdd.mel_filterbank(40, warp=shift), normalize=False)
        kept.append(float((peaks(warped) == peaks(ref)).float().mean()))
    assert min(kept) == 1.0 and np.mean(moved) > 0.5, (kept, moved)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("factor", [0.8, 1.0, 1.25])
def test_stretch_changes_the_tempo_and_keeps_the_spectra(factor):
    feats = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (100, 6)).astype(np.float32))
    out = fsdd.stretch(feats, factor)
    assert out.shape == (round(100 / factor), 6)
    torch.testing.assert_close(out[0], feats[0]) and torch.testing.assert_close(out[-1], feats[-1])
    # each output frame lies between its two neighbours in the input (linear interpolation)
    pos = torch.linspace(0, 99, len(out))
    lo, hi = feats[pos.floor().long()], feats[pos.ceil().long()]
    assert (out >= torch.minimum(lo, hi) - 1e-5).all() and (out <= torch.maximum(lo, hi) + 1e-5).all()
    with pytest.raises(ValueError, match="must be > 0"):
        fsdd.stretch(feats, 0.0)


@pytest.mark.timeout(60)
def test_spec_augment_masks_bands_and_spans():
    import torch
    feats = torch.randn(300, 40) + 5                 # no zeros of its own
    copy = feats.clone()
    out = fsdd.spec_augment(feats, np.random.default_rng(0), 2, 8, 3, 10)
    again = fsdd.spec_augment(feats, np.random.default_rng(0), 2, 8, 3, 10)
    assert torch.equal(out, again) and torch.equal(feats, copy)            # seeded; the input kept
    zero_bins = (out == 0).all(0).sum().item()
    zero_frames = (out == 0).all(1).sum().item()
    assert 0 < zero_bins <= 16 and 0 < zero_frames <= 30
    kept = (out != 0)
    assert torch.equal(out[kept], feats[kept])       # everything else untouched
    assert torch.equal(fsdd.spec_augment(feats, np.random.default_rng(0), 0, 8, 0, 10), feats)
