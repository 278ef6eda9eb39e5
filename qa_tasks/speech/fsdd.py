"""Connected-digit speech from the Free Spoken Digit Dataset (FSDD), and its log-mel features.

FSDD (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset) holds isolated digits
named ``{digit}_{speaker}_{index}.wav`` (8 kHz, mono, 16-bit PCM). Connected-digit utterances are
made here by joining 1 to `max_digits` recordings of ONE speaker with short random pauses and
light white noise, deterministically from a seed.

Splits follow the dataset's rule, by recording index, so no recording is in two splits:

    index 0-4  -> "test"    (the upstream rule)
    index 5-9  -> "valid"   (held out of upstream train, for model selection)
    index 10+  -> "train"
    any index  -> "all"     (every recording, e.g. for an unseen speaker pointed at with data_dir)

Features: log-mel filterbank, 25 ms Hann window, 10 ms hop, no centering padding:

    frames   = 1 + (N - 200) // 80                        (N samples at 8 kHz)
    power    = |rfft(hann_200 * frame)|^2                 (B = 101 bins, 0..4000 Hz)
    mel(f)   = 2595 * log10(1 + f / 700)                  (HTK)
    fbank[m] = triangle rising from f[m] to f[m+1], falling to f[m+2], f = mel^-1(linspace)
    logmel   = log(max(power @ fbank^T, 1e-10)), then per-utterance mean/variance normalisation
    cepstra  = logmel @ DCT-II (orthonormal), the first K columns (MFCC; `cepstra`)

Sources: a folder of WAVs (or one holding ``recordings/``), or a tar / tar.gz of them. Decoded
audio is cached as .npy under ``cache_dir("asr")`` (never beside the data), keyed by the source's
path, size and mtime; loads use ``allow_pickle=False``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import tarfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common import cache_dir, reading, replacing

SAMPLE_RATE = 8000
WIN = 200          # 25 ms at 8 kHz
HOP = 80           # 10 ms at 8 kHz
NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "valid", "test", "all")


@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    index: int
    audio: np.ndarray          # (N,) int16


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray          # (N,) float32 in [-1, 1]
    digits: tuple[int, ...]
    speaker: str


# ---------------------------------------------------------------------------------------------
# reading recordings


def split_of(index: int) -> str:
    """The split a recording index belongs to (see the module docstring)."""
    return "test" if index < 5 else "valid" if index < 10 else "train"


def _parse_name(name: str) -> tuple[int, str, int]:
    m = NAME.match(Path(name).name)
    if m is None:
        raise ValueError(f"{name}: a recording must be named {{digit}}_{{speaker}}_{{index}}.wav "
                         "(e.g. 3_theo_12.wav); rename or remove it")
    return int(m.group(1)), m.group(2), int(m.group(3))


def decode_wav(data: bytes, name: str) -> np.ndarray:
    """(N,) int16 samples of an 8 kHz mono 16-bit PCM WAV, or a ValueError naming the file."""
    with reading(name, "a readable PCM WAV file"), wave.open(io.BytesIO(data)) as w:
        rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        frames = w.readframes(n)
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise ValueError(f"{name}: expected 8000 Hz mono 16-bit PCM, got {rate} Hz, {channels} channel(s), "
                         f"{8 * width}-bit; resample it or remove it")
    if len(frames) != 2 * n or n == 0:
        raise ValueError(f"{name}: header says {n} samples but {len(frames) // 2} are present (truncated?)")
    return np.frombuffer(frames, dtype="<i2").astype(np.int16)


def _read_source(source: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every .wav in a folder (recursively) or a tar(.gz), sorted by name."""
    if source.is_dir():
        files = sorted(source.rglob("*.wav"))
        items = [(str(f.relative_to(source)), f.read_bytes()) for f in files]
    elif source.is_file():
        with reading(source, "a readable tar or tar.gz archive"), tarfile.open(source) as tar:
            items = [(m.name, tar.extractfile(m).read()) for m in tar
                     if m.isfile() and m.name.endswith(".wav")]
        items.sort()
    else:
        raise FileNotFoundError(f"{source} does not exist: point data_dir at a folder or a tar(.gz) "
                                "of {digit}_{speaker}_{index}.wav files")
    if not items:
        raise FileNotFoundError(f"{source} holds no .wav files: expected {{digit}}_{{speaker}}_{{index}}.wav")
    return items


def find_source(root: Path) -> Path:
    """The recordings under a data directory: root may be a tar(.gz), a folder of WAVs, a folder
    holding recordings/ or recordings.tar.gz, or a data root holding fsdd/ with one of those."""
    if root.is_file():
        return root
    for base in (root / "fsdd", root):
        for cand in (base / "recordings.tar.gz", base / "recordings.tar", base / "recordings"):
            if cand.exists():
                return cand
        if base.is_dir() and any(base.glob("*.wav")):
            return base
    raise FileNotFoundError(f"no FSDD recordings under {root}: expected fsdd/recordings.tar.gz, "
                            "recordings.tar.gz, recordings/ or *.wav files there (or use --data generated)")


def _source_key(source: Path) -> str:
    """A cache key that changes when the source changes (path, sizes, mtimes)."""
    h = hashlib.sha256(str(source.resolve()).encode())
    files = sorted(source.rglob("*.wav")) if source.is_dir() else [source]
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_recordings(source: Path, speakers: list[str] | None = None, cache: bool = True) -> list[Recording]:
    """Every recording of `speakers` (all when None) in `source`, sorted by (speaker, digit, index).

    The decoded audio is cached as three files (audio.npy: all samples concatenated, int16;
    table.npy: (n, 4) int64 rows of digit, speaker id, index, offset; speakers.json)."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: point data_dir at a folder or a tar(.gz) "
                                "of {digit}_{speaker}_{index}.wav files")
    folder = cache_dir("asr", "fsdd-" + _source_key(source)) if cache else None
    if folder is not None and (folder / "speakers.json").exists():
        audio = np.load(folder / "audio.npy", allow_pickle=False)
        table = np.load(folder / "table.npy", allow_pickle=False)
        names = json.loads((folder / "speakers.json").read_text())
    else:
        names, rows, chunks, offset = [], [], [], 0
        for name, data in _read_source(source):
            digit, speaker, index = _parse_name(name)
            x = decode_wav(data, name)
            if speaker not in names:
                names.append(speaker)
            rows.append((digit, names.index(speaker), index, offset))
            chunks.append(x)
            offset += len(x)
        audio = np.concatenate(chunks)
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        if folder is not None:
            # each file whole or not at all (concurrent decoders write the same bytes), and
            # speakers.json last: it marks the cache complete
            for file, array in (("audio.npy", audio), ("table.npy", table)):
                with replacing(folder / file) as tmp:
                    np.save(tmp, array)
            with replacing(folder / "speakers.json") as tmp:
                tmp.write_text(json.dumps(names))
    ends = np.append(table[1:, 3], len(audio)) if len(table) else table[:, 3]
    if speakers:
        missing = sorted(set(speakers) - set(names))
        if missing:
            raise ValueError(f"speaker(s) {', '.join(missing)} not in {source}; it holds {', '.join(sorted(names))}")
    out = [Recording(int(d), names[s], int(i), audio[o:e]) for (d, s, i, o), e in zip(table, ends)
           if not speakers or names[s] in speakers]
    return sorted(out, key=lambda r: (r.speaker, r.digit, r.index))


def select(recordings: list[Recording], split: str) -> list[Recording]:
    """The recordings of one split ("train", "valid", "test" or "all")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return [r for r in recordings if split == "all" or split_of(r.index) == split]


# ---------------------------------------------------------------------------------------------
# generated "digits": tone patterns, for tests and the no-data demo

# each digit: two tone segments (Hz); a speaker scales them (pitch)
_TONES = [(300, 1500), (450, 2200), (600, 900), (750, 2600), (900, 1200),
          (1050, 3000), (1200, 500), (1350, 1900), (1500, 700), (1650, 2800)]


def synth_digit(digit: int, rng: np.random.Generator, pitch: float = 1.0) -> np.ndarray:
    """(N,) int16: a generated 'spoken digit', two Hann-shaped tones of 0.08-0.16 s each."""
    parts = []
    for f in _TONES[digit]:
        n = int(rng.uniform(0.08, 0.16) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        parts.append(np.sin(2 * np.pi * f * pitch * t) * np.hanning(n))
    x = np.concatenate(parts) * rng.uniform(0.3, 0.6) + rng.normal(0, 0.01, sum(map(len, parts)))
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def generated_recordings(speakers: int = 3, per_digit: int = 20, seed: int = 0) -> list[Recording]:
    """speakers x 10 digits x per_digit generated recordings, indices 0..per_digit-1."""
    out = []
    for s in range(speakers):
        for d in range(10):
            for i in range(per_digit):
                rng = np.random.default_rng([seed, s, d, i])
                out.append(Recording(d, f"gen{s}", i, synth_digit(d, rng, pitch=1.0 + 0.06 * s)))
    return out


# ---------------------------------------------------------------------------------------------
# joining recordings into connected-digit utterances


def join(recordings: list[Recording], seed: int, max_digits: int = 7, pause: tuple[float, float] = (0.05, 0.3),
         noise: float = 0.002, level: float = 0.0, gain_db: float = 0.0) -> list[Utterance]:
    """Connected-digit utterances: each speaker's recordings shuffled by `seed` and cut into
    groups of 1..max_digits, joined with random pauses (seconds, also before and after) and
    white noise of standard deviation `noise` (full scale 1). Every recording is used once.

    level > 0 scales each recording to that RMS first (FSDD's speakers were recorded 18 dB
    apart, so a fixed noise would give each speaker its own signal-to-noise ratio); gain_db > 0
    then scales each by a random gain of up to +-gain_db dB (augmentation: other SNRs)."""
    if not 1 <= max_digits:
        raise ValueError(f"max_digits must be >= 1, got {max_digits}")
    rng = np.random.default_rng(seed)
    gains = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])   # its own stream: the same groups
    by_speaker: dict[str, list[Recording]] = {}
    for r in recordings:
        by_speaker.setdefault(r.speaker, []).append(r)
    out = []
    for speaker in sorted(by_speaker):
        recs = by_speaker[speaker]
        order = rng.permutation(len(recs))
        start = 0
        while start < len(order):
            group = [recs[j] for j in order[start:start + int(rng.integers(1, max_digits + 1))]]
            start += len(group)
            pieces = []
            for r in group:
                pieces.append(np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), np.float32))
                x = r.audio.astype(np.float32) / 32768.0
                if level > 0:
                    x *= level / max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1e-6)
                if gain_db > 0:
                    x *= np.float32(10 ** (gains.uniform(-gain_db, gain_db) / 20))
                pieces.append(x)
            pieces.append(np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), np.float32))
            x = np.concatenate(pieces)
            x += rng.normal(0.0, noise, len(x)).astype(np.float32) if noise > 0 else 0.0
            out.append(Utterance(x, tuple(r.digit for r in group), speaker))
    return out


# ---------------------------------------------------------------------------------------------
# features


def vtlp_warp(f: torch.Tensor, alpha: float, f_max: float, boundary: float = 0.8) -> torch.Tensor:
    """Frequencies scaled by `alpha` below a knee and joined linearly to f_max above it, so the
    band keeps its ends (Jaitly and Hinton 2013's piecewise-linear vocal-tract-length warp; the
    knee is boundary * f_max * min(alpha, 1) / alpha, as theirs)."""
    knee = boundary * f_max * min(alpha, 1.0) / alpha
    above = f_max - (f_max - alpha * knee) / (f_max - knee) * (f_max - f)
    return torch.where(f <= knee, alpha * f, above)


def mel_filterbank(n_mels: int, n_fft: int = WIN, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float | None = None, warp: float = 1.0) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) HTK-mel triangular filters (peak 1, no area normalisation).
    warp != 1 moves the filter edges by `vtlp_warp` (vocal-tract-length perturbation: a
    speaker with a shorter or longer vocal tract, formants up or down by that factor)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)   # (F,)
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)                                    # (M + 2,)
    if warp != 1.0:
        edges = vtlp_warp(edges, warp, f_max)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]                 # (M, 1)
    rise = (freqs[None] - lo) / (mid - lo)
    fall = (hi - freqs[None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(rise, fall), min=0.0)                               # (M, F)
    if (fb.sum(1) == 0).any():
        raise ValueError(f"{n_mels} mel filters are too narrow for {n_fft // 2 + 1} FFT bins "
                         "(some filters are empty): use fewer mels")
    return fb.to(torch.float32)


def n_frames(n_samples: int) -> int:
    """Frames of 25 ms every 10 ms that fit in n_samples (no padding)."""
    return 0 if n_samples < WIN else 1 + (n_samples - WIN) // HOP


def log_mel(audio: np.ndarray | torch.Tensor, fbank: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(T, n_mels) log-mel features of (N,) float audio, T = n_frames(N); per-utterance
    mean/variance normalised when `normalize`."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if len(x) < WIN:
        raise ValueError(f"audio of {len(x)} samples is shorter than one 25 ms window ({WIN} samples)")
    spec = torch.stft(x, n_fft=WIN, hop_length=HOP, win_length=WIN, window=torch.hann_window(WIN),
                      center=False, return_complex=True)                               # (F, T)
    power = spec.real ** 2 + spec.imag ** 2
    feats = torch.log(torch.clamp(fbank @ power, min=1e-10)).T                         # (T, M)
    if normalize:
        feats = (feats - feats.mean(0)) / (feats.std(0, correction=0) + 1e-5)
    return feats.contiguous()


def cepstra(feats: torch.Tensor, k: int) -> torch.Tensor:
    """(T, k) cepstral coefficients 0..k-1 of (T, M) log-mel features: the orthonormal DCT-II
    over the mel axis (MFCC without liftering; the mean/variance normalisation that follows
    would undo a lifter's per-coefficient scale). Dropping the high coefficients smooths the
    spectrum, and with it the pitch harmonics that narrow low mel filters resolve."""
    m = feats.shape[1]
    if not 1 <= k <= m:
        raise ValueError(f"cepstra must be in 1..{m} (the mel bins), got {k}")
    n = torch.arange(m, dtype=torch.float64)[:, None]
    q = torch.arange(k, dtype=torch.float64)[None]
    dct = torch.cos(math.pi * q * (n + 0.5) / m) * math.sqrt(2.0 / m)
    dct[:, 0] /= math.sqrt(2.0)
    return feats @ dct.to(feats.dtype)


def normalize(feats: list[torch.Tensor], groups: list) -> list[torch.Tensor]:
    """Mean/variance normalisation of each feature dimension over all frames of the utterances
    that share a group key: one key per utterance is per-utterance normalisation (as log_mel's),
    the speaker as the key is speaker-level normalisation (cepstral mean and variance
    normalisation over all of a speaker's utterances)."""
    if len(feats) != len(groups):
        raise ValueError(f"{len(feats)} feature arrays but {len(groups)} group keys")
    stats = {}
    for key in dict.fromkeys(groups):
        frames = torch.cat([f for f, g in zip(feats, groups) if g == key])
        stats[key] = frames.mean(0), frames.std(0, correction=0) + 1e-5
    return [((f - stats[g][0]) / stats[g][1]).contiguous() for f, g in zip(feats, groups)]


# ---------------------------------------------------------------------------------------------
# augmentation, for speaker independence (training utterances only)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """(N,) float audio played `factor` times as fast: tempo and pitch both scale, as Kaldi's
    speed perturbation (Ko et al. 2015, sox `speed`). Polyphase resampling with an anti-alias
    filter (scipy's, designed once per ratio), the ratio rounded to 1/100."""
    from scipy.signal import resample_poly
    g = math.gcd(100, int(round(100 * factor)))
    up, down = 100 // g, int(round(100 * factor)) // g
    if up == down:
        return audio
    return resample_poly(audio, up, down, window=_antialias(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _antialias(up: int, down: int) -> np.ndarray:
    """The low-pass FIR that scipy's resample_poly designs for up/down (kaiser 5.0, 10 zero
    crossings), cached: designing it costs more than filtering a few seconds of audio."""
    from scipy.signal import firwin
    rate = max(up, down)
    return firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))


def stretch(feats: torch.Tensor, factor: float) -> torch.Tensor:
    """(T, M) features played `factor` times as fast without changing their spectra: the frames
    linearly interpolated to round(T / factor) (tempo perturbation; the pitch and the formants
    stay, where speed_perturb moves them with the tempo)."""
    if factor <= 0:
        raise ValueError(f"a tempo factor must be > 0, got {factor}")
    t = max(1, round(len(feats) / factor))
    if t == len(feats):
        return feats
    out = torch.nn.functional.interpolate(feats.T[None], size=t, mode="linear", align_corners=True)
    return out[0].T.contiguous()


def spec_augment(feats: torch.Tensor, rng: np.random.Generator, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: int) -> torch.Tensor:
    """(T, M) features with `freq_masks` bands of up to `freq_width` mel bins and `time_masks`
    spans of up to `time_width` frames set to 0, the mean after normalisation (SpecAugment's
    masks, Park et al. 2019; no time warping)."""
    out = feats.clone()
    t, m = out.shape
    for _ in range(freq_masks):
        w = int(rng.integers(0, min(freq_width, m) + 1))
        f0 = int(rng.integers(0, m - w + 1))
        out[:, f0:f0 + w] = 0.0
    for _ in range(time_masks):
        w = int(rng.integers(0, min(time_width, t) + 1))
        t0 = int(rng.integers(0, t - w + 1))
        out[t0:t0 + w] = 0.0
    return out
