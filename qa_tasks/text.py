"""Text helpers shared by the sentence workloads (qc, nlc): tokenizer, vocabulary, batching, and
the CNN sentence classifier of

    Yoon Kim. "Convolutional Neural Networks for Sentence Classification." EMNLP 2014.

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
import torch.nn as nn
import torch.nn.functional as F

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
    if learners < 1 or not 0 <= learner < learners:
        raise ValueError(f"learner must be in [0, learners), got learner={learner}, learners={learners}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    shard = np.arange(learner, n, learners)
    shard = shard[np.random.default_rng(seed).permutation(len(shard))]
    return [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean()) if len(labels) else float("nan")


class KimCNN(nn.Module):
    """CNN sentence classifier, Kim (2014), the CNN-rand variant.

    Word embeddings (random init, trained) -> for each filter width w in `widths`, `maps`
    feature maps c_i = relu(W . x_{i:i+w-1} + b) -> max-over-time pooling c^ = max_i c_i ->
    concatenate -> dropout -> linear layer to the classes. Kim: widths 3/4/5, 100 maps each,
    dropout 0.5, 300-dimensional embeddings (CNN-rand initialises them uniform in [-0.25, 0.25]).

    As in Kim's code, every sentence is padded with w - 1 zero vectors on both sides, so the
    first and last words (the "what" / "who" of a question) fill every position of a filter.
    Difference from the paper (on purpose): windows made of padding only are left out of the
    max (Kim pads every sentence to the longest in the corpus and lets the padding compete), so
    a sentence's prediction does not depend on the sentences it is batched with.
    """

    def __init__(self, vocab_size: int, classes: int, *, embed_dim: int = 300,
                 widths: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"filter widths must be a non-empty list of positive ints, not {widths}")
        self.widths = tuple(widths)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        nn.init.uniform_(self.embed.weight, -0.25, 0.25)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        # padding w - 1 on both sides: a "wide" convolution, windows (B, maps, T + w - 1)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, w, padding=w - 1) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(maps * len(self.widths), classes)

    def features(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B,) lengths -> (B, maps * len(widths)) pooled features."""
        x = self.embed(tokens).transpose(1, 2)                     # (B, E, T)
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            c = F.relu(conv(x))                                    # (B, maps, T + w - 1)
            # window i covers padded positions i..i+w-1, i.e. words i-w+1..i: it touches the
            # sentence iff i < len + w - 1 (the trailing batch padding adds windows past that)
            valid = torch.arange(c.shape[2]) < (lengths + w - 1)[:, None]              # (B, T+w-1)
            pooled.append(c.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=2))  # (B, maps)
        return torch.cat(pooled, dim=1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B,) lengths -> (B, classes) logits."""
        return self.out(self.dropout(self.features(tokens, lengths)))


class SentenceTask:
    """The parts of a sentence-classification task that qc and nlc share.

    A subclass sets `self.batch` (sentences per batch) and `self.min_count` (vocabulary cut-off)
    in its constructor and implements
    `_load() -> ({split: (texts, label names)}, label_names)`, the splits including "train" and
    label_names fixing the class ids (index = id). The data is loaded, tokenized and encoded on first use, once per
    process; the vocabulary comes from the training split alone.

    Batches are dicts of tensors: "tokens" (B, T) int64 ids, "lengths" (B,), "labels" (B,).
    """

    batch: int
    min_count: int
    eval_split = "valid"

    def _load(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # -- data, encoded once ------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if getattr(self, "_splits", None) is not None:
            return
        splits, label_names = self._load()
        label_id = {name: i for i, name in enumerate(label_names)}
        tokenized = {name: [tokenize(t) for t in texts] for name, (texts, _) in splits.items()}
        vocab = Vocab.build(tokenized["train"], min_count=self.min_count)
        encoded = {}
        for name, (_, labels) in splits.items():
            unknown = sorted(set(labels) - set(label_id))
            if unknown:
                raise ValueError(f"split {name!r} has labels the training split lacks: {unknown[:10]}; "
                                 "the classifier can only predict labels it was trained on")
            encoded[name] = ([vocab.encode(t) for t in tokenized[name]],
                             torch.tensor([label_id[y] for y in labels], dtype=torch.int64))
        # set only once everything has succeeded: a failed load leaves the task unloaded
        self._vocab, self._label_names = vocab, list(label_names)
        self._texts = {name: list(texts) for name, (texts, _) in splits.items()}
        self._splits = encoded

    @property
    def vocab(self) -> Vocab:
        """The vocabulary, built from the training split."""
        self._ensure_loaded()
        return self._vocab

    @property
    def label_names(self) -> list[str]:
        """Class names; a class's id is its index."""
        self._ensure_loaded()
        return self._label_names

    def split_names(self) -> list[str]:
        self._ensure_loaded()
        return list(self._splits)

    def texts(self, split: str) -> list[str]:
        self._ensure_loaded()
        self._check_split(split)
        return self._texts[split]

    def _check_split(self, split: str) -> None:
        if split not in self._splits:
            raise ValueError(f"{type(self).__name__} has no split {split!r}; it has "
                             f"{', '.join(self._splits)}")

    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw sentences -> (B, T) ids and (B,) lengths with this task's tokenizer and vocabulary."""
        self._ensure_loaded()
        return pad_batch([self.vocab.encode(tokenize(t)) for t in texts])

    # -- the task interface ------------------------------------------------------------------
    def batches(self, learner: int, learners: int, seed: int):
        self._ensure_loaded()
        ids, labels = self._splits["train"]
        for index in shard_batches(len(ids), learner, learners, seed, self.batch):
            tokens, lengths = pad_batch([ids[i] for i in index])
            yield {"tokens": tokens, "lengths": lengths, "labels": labels[torch.from_numpy(index)]}

    def batch_size(self, batch) -> int:
        return len(batch["labels"])

    @torch.no_grad()
    def split_logits(self, model: nn.Module, split: str, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, classes) logits of `model` in eval mode on a whole split, and the (N,) labels."""
        self._ensure_loaded()
        self._check_split(split)
        ids, labels = self._splits[split]
        was_training = model.training
        model.eval()
        try:
            out = [model(*pad_batch(ids[i:i + chunk])) for i in range(0, len(ids), chunk)]
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, len(self.label_names)), labels
