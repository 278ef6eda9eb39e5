"""Recordings in FSDD's layout and format, and a tiny encoder's sizes, for the speech tests."""
from __future__ import annotations

import io
import tarfile
import wave
from pathlib import Path

import numpy as np

from qa_tasks.speech import fsdd

# a small encoder for tests (an ASR task's or CTCSkipEncoder's options)
VOICES = ("ann", "bob", "cid")       # write_recordings' speakers
TINY = dict(d_model=32, heads=2, layers=4, inter_layer=2, ff_dim=64, conv_channels=16, dropout=0.0)


def wav_bytes(x: np.ndarray, rate: int = 8000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())
    return buf.getvalue()


def write_recordings(folder: Path, speakers: tuple[str, ...] = ("ann", "bob")) -> Path:
    """Speakers (by default 2) x 10 digits x indices 0..11 of generated tones, as real WAV files
    in `folder`; each speaker of VOICES has its own seed and pitch."""
    folder.mkdir()
    for speaker in speakers:
        s = VOICES.index(speaker)
        for d in range(10):
            for i in range(12):
                x = fsdd.synth_digit(d, np.random.default_rng([s, d, i]), pitch=1 + 0.1 * s)
                (folder / f"{d}_{speaker}_{i}.wav").write_bytes(wav_bytes(x))
    return folder


def make_tar(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="recordings")
    return path
