"""Text helpers the sentence workloads (qc, nlc) share: the tokenizer, the vocabulary, padding and
sharding into batches.

Everything here is deterministic: the same texts give the same tokens, the same vocabulary (ids
assigned by count, ties broken alphabetically, never by hash or set order) and the same batches,
in every process. Nothing is written to disk: a vocabulary of a few thousand words builds in
milliseconds from the training texts, so a cache would cost more than it saves.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch

from ..common import shard


PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# The tokenizer, after lower-casing, takes from left to right the longest match of one of:
#   [a-z0-9]+       a run of ASCII letters and digits           "serfdom", "1969"
#   '[a-z]+         an English clitic, apostrophe first         "'s", "'re", "'t" (don't -> don 't)
#   [^\sa-z0-9]     any other single non-space character        "?", ",", "`", "$", "ð"
# Whitespace separates and is dropped. TREC is already tokenized this way ("Who 's ...", "`` ''"),
# so the regex mostly just splits on spaces there; CLINC150 is lower-case and unpunctuated. Every
# punctuation mark is its own token so that "?" and "." stay informative features.
TOKEN_RE = re.compile(r"[a-z0-9]+|'[a-z]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case `text` and split it with TOKEN_RE (see the comment above it)."""
    return TOKEN_RE.findall(text.lower())


class Vocab:
    """Token <-> id map built from training texts only.

    Ids: <pad> = 0, <unk> = 1, then every token seen at least `min_count` times in the training
    texts, most frequent first, ties in alphabetical order (so the map is the same in every
    process and every run). Tokens outside it map to <unk>.
    """

    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}, not {list(tokens[:2])}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary must not repeat a token")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, tokenized: Iterable[Sequence[str]], min_count: int = 1) -> "Vocab":
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, not {min_count}")
        counts = Counter(t for sentence in tokenized for t in sentence)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in (PAD, UNK)),
                      key=lambda t: (-counts[t], t))
        return cls([PAD, UNK] + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]


def pad_batch(sequences: Sequence[Sequence[int]], min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences with PAD_ID into (B, T) int64 ids and (B,) lengths.

    T is the longest sequence, at least `min_len` (for a model that needs a minimum width). An empty
    sequence gets length 1 (one <pad>), so pooling and attention always have a position to use.
    """
    lengths = [max(len(s), 1) for s in sequences]
    width = max([min_len, *lengths])
    ids = np.full((len(sequences), width), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
    return torch.from_numpy(ids), torch.tensor(lengths, dtype=torch.int64)


def shard_batches(n: int, learner: int, learners: int, seed: int, batch_size: int) -> list[np.ndarray]:
    """Index batches of one learner's shard for one epoch.

    Example i belongs to learner i % learners (disjoint shards covering everything); the shard is
    shuffled by `seed` and cut into batches of `batch_size` (the last may be smaller).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    own = shard(n, learner, learners, np.random.default_rng(seed))
    return [own[i:i + batch_size] for i in range(0, len(own), batch_size)]


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean()) if len(labels) else float("nan")
