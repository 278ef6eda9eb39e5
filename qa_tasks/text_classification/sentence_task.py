"""What qc, nlc and csv_text share as tasks: data loaded, tokenized and encoded once; batches; logits of a split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gadei.task import option

from ..common import checked_options, evaluating
from .kim_cnn import KimCNN
from .text import Vocab, accuracy, pad_batch, shard_batches, tokenize


class SentenceTask:
    """The parts of a sentence-classification task that qc and nlc share.

    A subclass has the options `batch` (sentences per batch) and `min_count` (vocabulary cut-off)
    and implements `_load() -> ({split: (texts, label names)}, label_names)`, the splits including
    "train" and label_names fixing the class ids (index = id). The data is loaded, tokenized and
    encoded on first use, once per process; the vocabulary comes from the training split alone.

    Batches are dicts of tensors: "tokens" (B, T) int64 ids, "lengths" (B,), "labels" (B,).
    """

    batch: int
    min_count: int
    eval_split = "valid"
    # the data set's own names of this task's splits, accepted as well: {"val": "valid"}
    split_aliases: ClassVar[dict[str, str]] = {}

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
        return self._texts[self._split(split)]

    def _split(self, split: str) -> str:
        """This task's name of `split` (which may be the data set's own name: `split_aliases`);
        an unknown split is an error listing both."""
        name = self.split_aliases.get(split, split)
        if name not in self._splits:
            own = {v: k for k, v in self.split_aliases.items()}
            names = [f"{n} (or {own[n]})" if n in own else n for n in self._splits]
            raise ValueError(f"{type(self).__name__} has no split {split!r}; it has {', '.join(names)}")
        return name

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
        ids, labels = self._splits[self._split(split)]
        with evaluating(model):
            out = [model(*pad_batch(ids[i:i + chunk])) for i in range(0, len(ids), chunk)]
        return torch.cat(out) if out else torch.empty(0, len(self.label_names)), labels


@dataclass(kw_only=True, eq=False)
class KimCNNTask(SentenceTask):
    """A sentence task classified by the Kim (2014) CNN (qc, csv_text): the model's options, one
    declaration for both; a subclass adds its data options and `batch`, and calls
    `check_model_options` in its `__post_init__`."""

    min_count: int = option(2, "a training word seen fewer times maps to <unk> (with 2, words seen "
                               "once train the <unk> vector that unseen test words use)")
    embed_dim: int = option(300, "word vector size (Kim: 300)")
    filters: int = option(100, "feature maps per convolution width (Kim: 100)")
    widths: str = option("3,4,5", "convolution widths, comma-separated (Kim: 3,4,5)")
    dropout: float = option(0.5, "dropout before the output layer (Kim: 0.5)")

    def check_model_options(self) -> None:
        """A clear error for a model option out of range; parse the widths into `_widths`."""
        self._widths = checked_options(self.widths, {"dropout": self.dropout}, embed_dim=self.embed_dim,
                                       filters=self.filters, batch=self.batch, min_count=self.min_count)

    def build_model(self) -> nn.Module:
        self._ensure_loaded()
        return KimCNN(len(self.vocab), len(self.label_names), embed_dim=self.embed_dim,
                      widths=self._widths, maps=self.filters, dropout=self.dropout)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        model.train()  # dropout on while training, whatever mode the caller left the model in
        return F.cross_entropy(model(batch["tokens"], batch["lengths"]), batch["labels"])

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        logits, labels = self.split_logits(model, split)
        return {"accuracy": accuracy(logits.argmax(dim=1), labels),
                "loss": float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")}
