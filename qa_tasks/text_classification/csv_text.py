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

Model: the Kim (2014) CNN (kim_cnn.py, as in `qc`). It is the measured best text model at this
cost: docs/results/text.md and docs/results/taas.md.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from gadei.task import option

from .sentence_task import KimCNNTask

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


@dataclass(kw_only=True, eq=False)
class CsvText(KimCNNTask):
    """A text classifier on a `text,class` CSV (the task behind `gadei serve`)."""

    path: str = option("", "the training CSV: `text,class` per row, UTF-8, no header")
    test_path: str = option("", "an optional CSV of the same format, scored as the 'test' split")
    valid_fraction: float = option(0.1, "share of the rows held out as 'valid'")
    batch: int = option(32, "texts per batch")

    eval_split = "valid"

    def __post_init__(self):
        if not self.path:
            raise ValueError("csv_text needs path=<a text,class CSV file>")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), not {self.valid_fraction}")
        self.check_model_options()
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

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        """(B, classes) class probabilities of `model` (in eval mode) for raw texts."""
        return torch.softmax(model(*self.encode_texts(texts)), dim=1)
