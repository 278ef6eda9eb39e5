"""`qc`: TREC question classification with the Kim (2014) CNN.

Data: Li & Roth, "Learning Question Classifiers", COLING 2002 (files `trec/train_5500.label`
and `trec/TREC_10.label` under the data directory). Model: Kim, "Convolutional Neural Networks
for Sentence Classification", EMNLP 2014, CNN-rand (reported TREC test accuracy 91.2).

Splits, as in Kim (2014): "train" is train_5500 less a held-out 10 % ("valid", chosen by a fixed
permutation, the same everywhere, for model selection), "test" is TREC_10 (500 questions, the
number the field reports; hence eval_split = "test"). Labels: the 6 coarse classes, or with
fine=True the 50 fine ones ("LOC:city"). Metric: accuracy.

The generated variant (data="generated") needs no files: questions built from templates in
which a class-specific question phrase ("how many", "where is") sits among shared filler words,
deterministic, learnable in a few epochs.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import checked_options, dataset_dir, use_real_data
from .text import KimCNN, SentenceTask, accuracy

COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TRAIN_FILE, TEST_FILE = "train_5500.label", "TREC_10.label"
# "COARSE:fine question": the coarse label in capitals, a fine label without spaces, one space,
# then a non-empty question.
LINE_RE = re.compile(r"([A-Z]+):(\S+) (.*\S.*)")
VALID_SEED = 20140825  # fixes which training questions are held out; never change it silently


def decode_line(raw: bytes) -> str:
    """One line of a TREC file as text.

    The official files are ASCII except one byte, 0xF0, in train_5500.label ("sister\\xf0city"),
    which is not valid UTF-8. Strict UTF-8 is tried first (so a re-encoded UTF-8 copy reads
    right); a line that is not UTF-8 is read as latin-1, which maps every byte to one character
    and never fails. 0xF0 thus becomes "ð", which the tokenizer keeps as a token of its own.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_trec(path: str | Path) -> list[tuple[str, str, str]]:
    """(coarse, fine, question) for each line of a TREC `.label` file.

    A malformed line raises ValueError naming the file, the line number, what was expected and
    what was found. Blank lines (a trailing newline) are skipped.
    """
    path = Path(path)
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decode_line(raw).rstrip("\r\n")
            if not line.strip():
                continue
            m = LINE_RE.fullmatch(line)
            if m is None:
                raise ValueError(f"{path}:{number}: expected 'COARSE:fine question' such as "
                                 f"'DESC:manner How did serfdom develop ?', got {line[:80]!r}")
            coarse, fine, question = m.groups()
            if coarse not in COARSE:
                raise ValueError(f"{path}:{number}: unknown coarse label {coarse!r}; TREC has "
                                 f"{', '.join(COARSE)}")
            rows.append((coarse, f"{coarse}:{fine}", question))
    if not rows:
        raise ValueError(f"{path}: no questions in the file; expected lines 'COARSE:fine question'")
    return rows


# Generated variant: per fine label, question phrases that mark it. Filler words are shared by
# every class, so only the phrase carries the label.
GENERATED = {
    "ABBR:abb": ["what is the abbreviation for", "what is the acronym of"],
    "ABBR:exp": ["what does the acronym stand for", "what does the letters mean"],
    "DESC:def": ["what is the definition of", "define the meaning of"],
    "DESC:reason": ["why did", "why does"],
    "ENTY:animal": ["what animal", "which creature"],
    "ENTY:color": ["what color is", "which colour"],
    "HUM:ind": ["who was", "who invented"],
    "HUM:gr": ["which company", "what team"],
    "LOC:city": ["which city", "in what town"],
    "LOC:country": ["which country", "what nation"],
    "NUM:count": ["how many", "what number of"],
    "NUM:date": ["when did", "in what year"],
}
FILLER = ("the river old famous first large small king music water paper war film star "
          "island bridge game book red north school ship gold street song machine").split()


def generated_questions(n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` (coarse, fine, question) rows: a class phrase and 2-6 filler words, deterministic."""
    rng = np.random.default_rng(seed)
    fine_labels = list(GENERATED)
    rows = []
    for i in range(n):
        fine = fine_labels[i % len(fine_labels)]
        phrase = GENERATED[fine][rng.integers(len(GENERATED[fine]))]
        words = list(rng.choice(FILLER, size=rng.integers(2, 7)))
        cut = rng.integers(len(words) + 1)
        # the phrase usually opens the question, as in TREC, but not always
        text = " ".join(words[:cut] + [phrase] + words[cut:]) if rng.random() < 0.2 else \
            " ".join([phrase] + words)
        rows.append((fine.split(":")[0], fine, text + " ?"))
    return rows


class QC(SentenceTask):
    """TREC question classification (see the module docstring). Options:

    data: "real" (trec/ under data_dir or $GADEI_DATA), "generated", or "auto" (real when a
        data directory is configured).
    fine: classify into the 50 fine labels instead of the 6 coarse ones.
    valid_fraction: share of train_5500 held out as "valid" (Kim 2014: 10 %).
    min_count: a training word seen fewer times maps to <unk>. With 2, words seen once train the
        <unk> embedding, which test words outside the vocabulary then use; with 1 it stays random
        (measured on TREC: test accuracy 0.89 with 1, 0.90-0.92 with 2).
    embed_dim, filters, widths, dropout: the CNN (Kim: 300, 100 maps per width, "3,4,5", 0.5).
    batch: questions per batch (Kim: 50).
    """

    eval_split = "test"

    def __init__(self, *, data: str = "auto", data_dir: str | None = None, fine: bool = False,
                 valid_fraction: float = 0.1, min_count: int = 2, embed_dim: int = 300,
                 filters: int = 100, widths: str = "3,4,5", dropout: float = 0.5,
                 batch: int = 50):
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), not {valid_fraction}")
        self._widths = checked_options(widths, {"dropout": dropout}, embed_dim=embed_dim, filters=filters,
                                       batch=batch)
        # every option is kept as an attribute of its name: gadei rebuilds the task from them
        self.data, self.data_dir, self.widths = data, data_dir, widths
        self.real = use_real_data(data, data_dir)
        self.fine = fine
        self.valid_fraction = valid_fraction
        self.embed_dim, self.filters, self.dropout = embed_dim, filters, dropout
        self.batch, self.min_count = batch, min_count
        self._splits = None

    def _load(self):
        if self.real:
            folder = dataset_dir(self.data_dir, "trec")
            train_rows, test_rows = read_trec(folder / TRAIN_FILE), read_trec(folder / TEST_FILE)
        else:
            train_rows, test_rows = generated_questions(660, seed=1), generated_questions(240, seed=2)
        column = 1 if self.fine else 0
        # hold out valid_fraction of train by a fixed permutation (the same in every process)
        order = np.random.default_rng(VALID_SEED).permutation(len(train_rows))
        n_valid = int(round(len(train_rows) * self.valid_fraction))
        held = set(order[:n_valid].tolist())
        train = [r for i, r in enumerate(train_rows) if i not in held]
        valid = [r for i, r in enumerate(train_rows) if i in held]
        # fine labels from the whole training file: a rare one may fall entirely into valid
        labels = COARSE if not self.fine else sorted({r[1] for r in train_rows})
        splits = {name: ([r[2] for r in rows], [r[column] for r in rows])
                  for name, rows in (("train", train), ("valid", valid), ("test", test_rows))}
        return splits, labels

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
