"""`nlc`: intent classification with out-of-scope queries, CLINC150, and the structured
self-attentive sentence embedding.

Data: CLINC150 (clinc.py). This copy withholds test and oos_test: select on "valid" (val +
oos_val; CLINC150's own name "val" is accepted too); "test" exists when the file has them.

Model (model="selfattn"): Lin et al., "A Structured Self-Attentive Sentence Embedding", ICLR 2017
(self_attentive.py). model="cnn" is the Kim (2014) CNN of qc (kim_cnn.py), the baseline.

Out-of-scope queries (option `oos`), the two approaches of Larson et al.:
    "class": oos is a 151st class, trained on oos_train.
    "threshold": train on the 150 intents only; predict oos when the top softmax probability is
        below a threshold, the one that maximises (in-scope accuracy + oos recall) / 2 on valid.
Metrics (Larson et al.): in-scope accuracy (an in-scope query predicted oos counts as wrong),
out-of-scope recall, and overall accuracy.

The defaults are the best self-attentive model measured at the base cost; the tuning rounds that
chose them, and the costlier settings that score higher, are in docs/results/text.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gadei.task import option

from ..common import checked_options, data_dir_option, data_option, dataset_dir, use_real_data
from .clinc import DATA_FILE, OOS, generated_clinc, read_clinc
from .kim_cnn import KimCNN
from .self_attentive import SelfAttentiveClassifier, attention_penalty
from .sentence_task import SentenceTask
from .text import PAD_ID, UNK_ID


@dataclass(kw_only=True, eq=False)
class NLC(SentenceTask):
    """CLINC150 intents with out-of-scope detection, self-attentive or CNN.

    The module docstring has the details; each option's help line says what it sets.
    """

    data: str = data_option("clinc150")
    data_dir: str | None = data_dir_option()
    model: str = option("selfattn", '"selfattn" (Lin et al. 2017) or "cnn" (Kim 2014, the baseline)')
    oos: str = option("class", '"class" (oos trained as a class) or "threshold" (on the top '
                               'probability, fitted on valid)')
    min_count: int = option(2, "a training word seen fewer times maps to <unk>")
    embed_dim: int = option(300, "word vector size (both models)")
    hidden: int = option(150, "self-attentive: BiLSTM units per direction (u)")
    attention_dim: int = option(100, "self-attentive: attention hidden size (d_a)")
    hops: int = option(2, "self-attentive: attention hops (r; queries are about 8 words, the "
                          "paper's 30 was for reviews)")
    mlp_hidden: int = option(300, "self-attentive: units of the MLP's hidden layer")
    penalty: float = option(0.0, "self-attentive: coefficient of ||AA^T - I||_F^2 in the loss")
    dropout: float = option(0.5, "dropout before each MLP layer (the CNN: before its output layer)")
    embed_dropout: float = option(0.25, "self-attentive: dropout on the word vectors")
    word_dropout: float = option(0.1, "while training, each word becomes <unk> with this "
                                      "probability (both models)")
    adversarial: float = option(0.0, "adversarial training (Miyato et al. 2017, both models): the "
                                     "loss adds the loss at the word vectors moved by this L2 norm "
                                     "per sentence along the clean loss's gradient; 0: off. Costs a "
                                     "second forward and backward pass; absolute, so it scales with "
                                     "the embeddings (self-attentive N(0, 1), the CNN's U(-0.25, 0.25))")
    filters: int = option(100, "CNN: feature maps per convolution width")
    widths: str = option("3,4,5", "CNN: convolution widths, comma-separated")
    batch: int = option(64, "utterances per batch")

    eval_split = "valid"
    split_aliases: ClassVar[dict[str, str]] = {"val": "valid"}   # CLINC150's name (val + oos_val)

    def __post_init__(self):
        if self.model not in ("selfattn", "cnn"):
            raise ValueError(f"model must be 'selfattn' or 'cnn', not {self.model!r}")
        if self.oos not in ("class", "threshold"):
            raise ValueError(f"oos must be 'class' or 'threshold', not {self.oos!r}")
        if self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, not {self.penalty}")
        fractions = {"dropout": self.dropout, "embed_dropout": self.embed_dropout,
                     "word_dropout": self.word_dropout}
        self._widths = checked_options(self.widths, fractions, embed_dim=self.embed_dim, hidden=self.hidden,
                                       attention_dim=self.attention_dim, hops=self.hops,
                                       mlp_hidden=self.mlp_hidden, filters=self.filters, batch=self.batch)
        self.real = use_real_data(self.data, self.data_dir)
        self._splits = None

    def _load(self):
        raw = read_clinc(dataset_dir(self.data_dir, "clinc150") / DATA_FILE) if self.real else generated_clinc()
        intents = sorted({y for _, y in raw["train"]} - {OOS})
        # oos is always the last label: trained as a class, or (threshold) only ever predicted
        # by the threshold, the model having one output per in-scope intent
        label_names = intents + [OOS]
        train = raw["train"] + (raw["oos_train"] if self.oos == "class" else [])
        splits = {"train": train, "valid": raw["val"] + raw["oos_val"]}
        if "test" in raw:
            splits["test"] = raw["test"] + raw["oos_test"]
        return {name: ([u for u, _ in rows], [y for _, y in rows]) for name, rows in splits.items()}, label_names

    @property
    def oos_id(self) -> int:
        self._ensure_loaded()
        return len(self.label_names) - 1

    def build_model(self) -> nn.Module:
        self._ensure_loaded()
        classes = len(self.label_names) if self.oos == "class" else len(self.label_names) - 1
        if self.model == "cnn":
            return KimCNN(len(self.vocab), classes, embed_dim=self.embed_dim, widths=self._widths,
                          maps=self.filters, dropout=self.dropout)
        return SelfAttentiveClassifier(len(self.vocab), classes, embed_dim=self.embed_dim, hidden=self.hidden,
                                       attention_dim=self.attention_dim, hops=self.hops,
                                       mlp_hidden=self.mlp_hidden, dropout=self.dropout,
                                       embed_dropout=self.embed_dropout)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        model.train()  # dropout on while training, whatever mode the caller left the model in
        if self.word_dropout:  # words become <unk> at random, so <unk> learns what unseen words mean
            tokens = batch["tokens"]
            dropped = (torch.rand(tokens.shape) < self.word_dropout) & (tokens != PAD_ID)
            batch = {**batch, "tokens": tokens.masked_fill(dropped, UNK_ID)}
        if not self.adversarial:
            return self._clean_loss(model, batch)
        # Miyato et al. (2017): also fit the words' vectors moved by `adversarial` (L2 norm per
        # sentence) in the direction that raises the loss most
        seen = {}
        with model.embed.register_forward_hook(lambda m, i, x: seen.setdefault("x", x)):
            clean = self._clean_loss(model, batch)
        g, = torch.autograd.grad(clean, seen["x"], retain_graph=True)
        g = g.masked_fill((batch["tokens"] == PAD_ID)[..., None], 0.0)
        r = self.adversarial * g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        with model.embed.register_forward_hook(lambda m, i, x: x + r):
            return clean + self._clean_loss(model, batch)

    def _clean_loss(self, model: nn.Module, batch) -> torch.Tensor:
        if isinstance(model, SelfAttentiveClassifier):
            logits, A = model.forward_with_attention(batch["tokens"], batch["lengths"])
            return F.cross_entropy(logits, batch["labels"]) + self.penalty * attention_penalty(A)
        return F.cross_entropy(model(batch["tokens"], batch["lengths"]), batch["labels"])

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if split == "test" and "test" not in self.split_names():
            raise ValueError("the CLINC150 data has no test split (this copy withholds test and "
                             "oos_test): evaluate on 'valid' (or 'val'), or point data_dir at the full release")
        logits, labels = self.split_logits(model, split)
        metrics = {}
        if self.oos == "class":
            predicted = logits.argmax(dim=1)
        else:
            threshold = self.fit_threshold(model)
            top, predicted = torch.softmax(logits, dim=1).max(dim=1)
            predicted = torch.where(top < threshold, self.oos_id, predicted)
            metrics["threshold"] = threshold
        return {**oos_metrics(predicted, labels, self.oos_id), **metrics}

    def fit_threshold(self, model: nn.Module) -> float:
        """The top-probability threshold maximising (in-scope accuracy + oos recall) / 2 on valid."""
        logits, labels = self.split_logits(model, "valid")
        top, predicted = torch.softmax(logits, dim=1).max(dim=1)
        best, best_score = 0.0, -1.0
        # candidates: no threshold, and just above each observed top probability
        for t in [0.0] + sorted(set(np.nextafter(top.numpy(), 2.0).tolist())):
            m = oos_metrics(torch.where(top < t, self.oos_id, predicted), labels, self.oos_id)
            score = (m["in_scope_accuracy"] + m["oos_recall"]) / 2
            if score > best_score:
                best, best_score = float(t), score
        return best


def oos_metrics(predicted: torch.Tensor, labels: torch.Tensor, oos_id: int) -> dict[str, float]:
    """In-scope accuracy, out-of-scope recall (Larson et al. 2019) and overall accuracy."""
    in_scope = labels != oos_id
    correct = predicted == labels
    nan = float("nan")
    return {"in_scope_accuracy": float(correct[in_scope].float().mean()) if in_scope.any() else nan,
            "oos_recall": float(correct[~in_scope].float().mean()) if (~in_scope).any() else nan,
            "accuracy": float(correct.float().mean()) if len(labels) else nan}
