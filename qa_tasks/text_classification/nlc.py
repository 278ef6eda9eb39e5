"""`nlc`: intent classification with out-of-scope queries, CLINC150, and the structured
self-attentive sentence embedding.

Data: CLINC150 (clinc.py). This copy withholds test and oos_test: select on "valid" (val +
oos_val; CLINC150's own name "val" is accepted too); "test" exists when the file has them.

Model (model="selfattn"): Lin et al., "A Structured Self-Attentive Sentence Embedding", ICLR 2017
(self_attentive.py). model="cnn" is the Kim (2014) CNN of qc (kim_cnn.py), the baseline.

Out-of-scope queries (option `oos`), the two approaches of Larson et al.:
    "class": oos is a 151st class, trained on oos_train (`oos_weight` weighs its queries in the
        loss); predict oos where the oos logit's margin over the best in-scope one reaches a cut-off.
    "threshold": train on the 150 intents only; predict oos where the top softmax probability is
        below a threshold (a cut-off on minus it).
Either cut-off is fitted on valid: the highest oos recall whose in-scope accuracy on valid stays
within `oos_tolerance` of the rule without it (the plain argmax; oos never predicted). Every split,
test included, is scored with the cut-off fitted on valid; evaluate() reports it as "oos_cutoff".
It is recomputed from the weights and valid when evaluating, so a checkpoint needs nothing more.
Metrics (Larson et al.): in-scope accuracy (an in-scope query predicted oos counts as wrong),
out-of-scope recall, and overall accuracy.

The defaults and the recipe (Adam 2e-3, cosine decay, 16 epochs) are the best setting measured
whose default run with two learners takes under 20 minutes on two CPU cores; the tuning rounds
that chose them are in docs/results/text.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
    hidden: int = option(300, "self-attentive: BiLSTM units per direction (u)")
    attention_dim: int = option(100, "self-attentive: attention hidden size (d_a)")
    hops: int = option(2, "self-attentive: attention hops (r; queries are about 8 words, the "
                          "paper's 30 was for reviews)")
    mlp_hidden: int = option(300, "self-attentive: units of the MLP's hidden layer")
    penalty: float = option(0.0, "self-attentive: coefficient of ||AA^T - I||_F^2 in the loss")
    dropout: float = option(0.5, "dropout before each MLP layer (the CNN: before its output layer)")
    embed_dropout: float = option(0.25, "self-attentive: dropout on the word vectors")
    word_dropout: float = option(0.1, "while training, each word becomes <unk> with this "
                                      "probability (both models)")
    adversarial: float | None = option(None, "adversarial training (Miyato et al. 2017): the loss adds "
                                             "the loss at the word vectors moved by this L2 norm per "
                                             "sentence along the clean loss's gradient; 0: off. Costs a "
                                             "second forward and backward pass. Absolute, so it scales "
                                             "with the embeddings: default 7 for the self-attentive "
                                             "model (N(0, 1) vectors), 2 for the CNN (U(-0.25, 0.25)), "
                                             "each one's best measured")
    oos_weight: float = option(1.0, "oos as a class: the weight of an out-of-scope query in the loss, "
                                    "against 1 for an in-scope one")
    oos_tolerance: float = option(0.003, "the in-scope accuracy on valid that the oos cut-off may give "
                                         "up for recall (fitted on valid, applied to every split)")
    filters: int = option(100, "CNN: feature maps per convolution width")
    widths: str = option("3,4,5", "CNN: convolution widths, comma-separated")
    batch: int = option(64, "utterances per batch")

    eval_split = "valid"
    split_aliases: ClassVar[dict[str, str]] = {"val": "valid"}   # CLINC150's name (val + oos_val)
    # 16 epochs (3,776 batches of 64) of Adam with a cosine decay, the setting the model options'
    # defaults were measured with (docs/results/text.md)
    recipe: ClassVar[dict] = {"optimizer": "adam", "lr": 2e-3, "lr_schedule": "cosine", "steps": 3776}

    def __post_init__(self):
        if self.model not in ("selfattn", "cnn"):
            raise ValueError(f"model must be 'selfattn' or 'cnn', not {self.model!r}")
        if self.oos not in ("class", "threshold"):
            raise ValueError(f"oos must be 'class' or 'threshold', not {self.oos!r}")
        if self.adversarial is not None and self.adversarial < 0:
            raise ValueError(f"adversarial must be >= 0, not {self.adversarial}")
        self._adversarial = (7.0 if self.model == "selfattn" else 2.0) if self.adversarial is None else self.adversarial
        if not self.oos_weight > 0:
            raise ValueError(f"oos_weight must be > 0, not {self.oos_weight}")
        if not 0 <= self.oos_tolerance <= 1:
            raise ValueError(f"oos_tolerance must be in [0, 1], not {self.oos_tolerance}")
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
        if not self._adversarial:
            return self._clean_loss(model, batch)
        # Miyato et al. (2017): also fit the words' vectors moved by `adversarial` (L2 norm per
        # sentence) in the direction that raises the loss most
        seen = {}
        with model.embed.register_forward_hook(lambda m, i, x: seen.setdefault("x", x)):
            clean = self._clean_loss(model, batch)
        g, = torch.autograd.grad(clean, seen["x"], retain_graph=True)
        g = g.masked_fill((batch["tokens"] == PAD_ID)[..., None], 0.0)
        r = self._adversarial * g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        with model.embed.register_forward_hook(lambda m, i, x: x + r):
            return clean + self._clean_loss(model, batch)

    def _clean_loss(self, model: nn.Module, batch) -> torch.Tensor:
        penalty = 0.0
        if isinstance(model, SelfAttentiveClassifier):
            logits, A = model.forward_with_attention(batch["tokens"], batch["lengths"])
            penalty = self.penalty * attention_penalty(A)
        else:
            logits = model(batch["tokens"], batch["lengths"])
        weight = None
        if self.oos == "class" and self.oos_weight != 1.0:
            weight = torch.ones(logits.shape[1])
            weight[self.oos_id] = self.oos_weight
        return F.cross_entropy(logits, batch["labels"], weight=weight) + penalty

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if split == "test" and "test" not in self.split_names():
            raise ValueError("the CLINC150 data has no test split (this copy withholds test and "
                             "oos_test): evaluate on 'valid' (or 'val'), or point data_dir at the full release")
        cutoff = self.fit_cutoff(model)
        logits, labels = self.split_logits(model, split)
        return {**oos_metrics(self.predict(logits, cutoff), labels, self.oos_id), "oos_cutoff": cutoff}

    def oos_score(self, logits: torch.Tensor) -> torch.Tensor:
        """How out-of-scope each query looks (higher: more): "class", the oos logit's margin over
        the best in-scope one (0: where the plain argmax flips); "threshold", minus the top
        probability."""
        if self.oos == "class":
            return logits[:, self.oos_id] - logits[:, :self.oos_id].max(dim=1).values
        return -torch.softmax(logits, dim=1).max(dim=1).values

    def predict(self, logits: torch.Tensor, cutoff: float) -> torch.Tensor:
        """Label ids: oos where the oos score reaches `cutoff`, else the best in-scope intent."""
        in_scope = logits[:, :self.oos_id].argmax(dim=1)
        return torch.where(self.oos_score(logits) >= cutoff, self.oos_id, in_scope)

    def fit_cutoff(self, model: nn.Module) -> float:
        """The cut-off on the oos score, fitted on valid (so every split is scored by a rule chosen
        on valid alone; it is a function of the weights and valid, so no checkpoint needs to hold
        it): the highest oos recall whose in-scope accuracy is within `oos_tolerance` of the
        accuracy without it (the plain argmax; "threshold": oos never predicted)."""
        logits, labels = self.split_logits(model, "valid")
        score = self.oos_score(logits)
        in_scope = labels != self.oos_id
        correct = logits[:, :self.oos_id].argmax(dim=1) == labels     # never true for an oos query
        if self.oos == "class":
            base = float((correct & (score < 0))[in_scope].float().mean()) if in_scope.any() else 1.0
        else:
            base = float(correct[in_scope].float().mean()) if in_scope.any() else 1.0
        return fit_cutoff(score, correct, ~in_scope, base - self.oos_tolerance)


def fit_cutoff(score: torch.Tensor, correct: torch.Tensor, is_oos: torch.Tensor, floor: float) -> float:
    """The cut-off c (oos predicted where score >= c) with the highest out-of-scope recall whose
    in-scope accuracy is at least `floor`; of those, the one losing the fewest in-scope queries.

    `correct`: the query's in-scope prediction is right (false for every oos query); `is_oos`: the
    query is out of scope. The cut-off lies halfway between two adjacent distinct scores, or 1
    beyond the extreme ones (oos never / always predicted).
    """
    n_in, n_oos = int((~is_oos).sum()), int(is_oos.sum())
    if n_in == 0 or n_oos == 0:
        raise ValueError(f"fitting the oos cut-off needs in-scope and out-of-scope queries in valid; "
                         f"it has {n_in} and {n_oos}")
    s, order = torch.sort(score.double(), descending=True)
    # flagging the top k queries as oos: the oos found and the right in-scope answers lost
    found = torch.cat([torch.zeros(1), torch.cumsum(is_oos[order].double(), 0)])
    lost = torch.cat([torch.zeros(1), torch.cumsum(correct[order].double(), 0)])
    accuracy = (int(correct.sum()) - lost) / n_in
    # k = 0 and k = N always, else only between distinct scores (ties flag together)
    allowed = torch.cat([torch.tensor([True]), s[:-1] > s[1:], torch.tensor([True])])
    feasible = allowed & (accuracy >= floor - 1e-12)
    if not feasible.any():   # not even flagging nothing reaches the floor: flag nothing
        return float(s[0]) + 1.0
    # recall rises with k and accuracy falls: the first k of the highest feasible recall
    k = int(torch.nonzero(feasible & (found == found[feasible].max()))[0])
    if k == 0:
        return float(s[0]) + 1.0
    if k == len(s):
        return float(s[-1]) - 1.0
    return float((s[k - 1] + s[k]) / 2)


def oos_metrics(predicted: torch.Tensor, labels: torch.Tensor, oos_id: int) -> dict[str, float]:
    """In-scope accuracy, out-of-scope recall (Larson et al. 2019) and overall accuracy."""
    in_scope = labels != oos_id
    correct = predicted == labels
    nan = float("nan")
    return {"in_scope_accuracy": float(correct[in_scope].float().mean()) if in_scope.any() else nan,
            "oos_recall": float(correct[~in_scope].float().mean()) if (~in_scope).any() else nan,
            "accuracy": float(correct.float().mean()) if len(labels) else nan}
