"""`csv_text`: a text classifier trained on a customer's CSV (`text,class` per row), the task
behind `gadei serve`.

The file is UTF-8, one example a row, two columns: the text, then its class (the Watson NLC
training format). `gadei serve` validates an upload (gadei/serve/csvdata.py) and stores it
re-written by Python's csv module, so this task only reads what the service has checked; a
file that is not two columns a row is still a ValueError naming the row.

Splits: "train" is the file less a held-out `valid_fraction` (by a fixed permutation, at least
one row), "valid" the held-out rows; with `test_path`, a second CSV of the same format is the
"test" split (the robustness benchmark scores TREC_10 and CLINC150's val this way). Classes:
every class of the file, sorted, so one seen only in "valid" still has an id.

Model: the Kim (2014) CNN of qa_tasks.text (as in `qc`). It is the measured best text model at
this cost: on TREC it reaches 0.90-0.92 in a few epochs, and on CLINC150 it is within a point of
the self-attentive model (docs/results/text.md), which takes 4-5x the time per step.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import checked_options
from .text import KimCNN, SentenceTask, accuracy

VALID_SEED = 20260101  # fixes which rows are held out; never change it silently


def read_csv(path: str | Path) -> list[tuple[str, str]]:
    """(text, class) for each row of a `text,class` CSV (UTF-8, no header)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if len(row) != 2:
                raise ValueError(f"{path}: row {number}: expected 2 columns (text,class), found {len(row)}")
            rows.append((row[0], row[1]))
    if not rows:
        raise ValueError(f"{path}: no rows; expected lines 'text,class'")
    return rows


class CsvText(SentenceTask):
    """A text classifier on `path`, a `text,class` CSV (see the module docstring). Options:

    path: the training CSV. test_path: an optional CSV scored as the "test" split.
    valid_fraction: share of the rows held out as "valid".
    min_count, embed_dim, filters, widths, dropout: the vocabulary and the CNN, as in `qc`.
    batch: texts per batch.
    """

    eval_split = "valid"

    def __init__(self, *, path: str = "", test_path: str = "", valid_fraction: float = 0.1,
                 min_count: int = 2, embed_dim: int = 300, filters: int = 100, widths: str = "3,4,5",
                 dropout: float = 0.5, batch: int = 32):
        if not path:
            raise ValueError("csv_text needs path=<a text,class CSV file>")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), not {valid_fraction}")
        self._widths = checked_options(widths, {"dropout": dropout}, embed_dim=embed_dim, filters=filters,
                                       batch=batch, min_count=min_count)
        # every option is kept as an attribute of its name: gadei rebuilds the task from them
        self.path, self.test_path, self.valid_fraction = path, test_path, valid_fraction
        self.min_count, self.embed_dim, self.filters, self.widths = min_count, embed_dim, filters, widths
        self.dropout, self.batch = dropout, batch
        self._splits = None

    def _load(self):
        rows = read_csv(self.path)
        order = np.random.default_rng(VALID_SEED).permutation(len(rows))
        n_valid = min(len(rows) - 1, max(1, int(round(len(rows) * self.valid_fraction))))
        held = set(order[:n_valid].tolist())
        split_rows = {"train": [r for i, r in enumerate(rows) if i not in held],
                      "valid": [r for i, r in enumerate(rows) if i in held]}
        if self.test_path:
            split_rows["test"] = read_csv(self.test_path)
        labels = sorted({c for _, c in rows})
        return {name: ([t for t, _ in rs], [c for _, c in rs]) for name, rs in split_rows.items()}, labels

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

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        """(B, classes) class probabilities of `model` (in eval mode) for raw texts."""
        return torch.softmax(model(*self.encode_texts(texts)), dim=1)
