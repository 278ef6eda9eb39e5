"""The `lra` workload: ListOps at long range, with a Transformer or a Fourier Transformer.

Data (see dataset.py for the generator and the formats):
- "generated" (the default with no data directory): ListOps generated to the Long Range Arena
  specification with this task's length / depth / size options, cached as LRA TSV files under
  the gadei cache (`cache_dir("lra")` of qa_tasks.common). The defaults are small and short (10..100
  tokens) so tests and demos run in seconds; LRA's setting is
  `--min-length 500 --max-length 2000 --n-train 96000 --n-valid 2000 --n-test 2000`.
- "real": `<data dir>/listops/` holding LRA's files (`basic_{train,val,test}.tsv`, splits
  train, valid or val, test) or the original ListOps release of Nangia and Bowman
  (`train_d20s.tsv`, `test_d20s.tsv`: `label<TAB>expression`, no header; splits train, test),
  or both (`dataset.splits_in`: every file is also its own stem, e.g. `--split test_d20s`).
  Sequences longer than max_length are cut to max_length, as LRA's input pipeline does; pass
  `--max-length 2000` for LRA's setting. The final metrics are on valid, or on test where the
  folder has no validation file (the original release has none).

    gadei eval --task lra --checkpoint runs/lra --data-dir D --split test    # D/listops/test_d20s.tsv

Model (`--model transformer | fourier`): see fourier.py. `--fourier-layers` and
`--fourier-ratio` choose before which layers and by how much the Fourier Transformer shortens the
sequence; the default, 1 and 0.25 (one full-length layer, then the rest at a quarter of the
length), was chosen by measurement (docs/results/lra.md).
Both models have the same parameters, so `--init-from DIR` starts a Fourier Transformer from a
trained Transformer's checkpoint (the paper's inherit-then-fine-tune recipe) or the reverse.

Metric: accuracy over the 10 classes (LRA reports 36-37 % for the vanilla Transformer on its
2,000-token ListOps).

    gadei train --task lra --model fourier --learners 2 --out runs/lra    # the recipe: Adam, cosine, 4,000 steps

`python -m qa_tasks.listops.lra` trains in one process with a plain Adam loop (no parameter server): the
reference the PS runs are compared with, and how docs/results/lra.md was measured.

    python -m qa_tasks.listops.lra --model transformer --steps 1500 --save runs/lra/t.npz --json runs/lra/t.json
    python -m qa_tasks.listops.lra --model fourier --init-from runs/lra/t.npz --steps 300   # inherit, fine-tune
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from gadei.task import option

from .. import plain
from ..common import cache_dir, check_learner, evaluating, data_dir_option, dataset_dir, shard, use_real_data
from . import dataset as listops
from .fourier import ModelConfig, TransformerClassifier, build


BUCKET_WINDOW = 50   # batches per length-sorted window (see LRA.batches)


@dataclass(kw_only=True, eq=False)
class LRA:
    """ListOps at long range with a Transformer or a Fourier Transformer.

    The module docstring has the details; each option's help line says what it sets.
    """

    data: str = option("auto", '"real" (listops/ under data_dir or $GADEI_DATA: LRA\'s basic_*.tsv or '
                               'the original train_d20s.tsv, test_d20s.tsv), "generated" (with the '
                               'options below, cached) or "auto" (real when a data directory is configured)')
    data_dir: str | None = data_dir_option()
    model: str = option("transformer", '"transformer" or "fourier" (He et al. 2023)')
    min_length: int = option(10, "generated: fewest tokens in an example (LRA: 500)")
    max_length: int = option(100, "generated: most tokens in an example (LRA: 2000); real sequences "
                                  "are cut to it, as LRA's input pipeline does")
    max_depth: int = option(10, "generated: deepest nesting, the root being depth 1 (LRA: 10)")
    max_args: int = option(10, "generated: most operands of an operator (LRA: 10)")
    n_train: int = option(2000, "generated: training examples (LRA: 96000)")
    n_valid: int = option(200, "generated: validation examples (LRA: 2000)")
    n_test: int = option(200, "generated: test examples (LRA: 2000)")
    data_seed: int = option(0, "generated: the generator's seed")
    batch: int = option(32, "examples per training batch")
    eval_batch: int = option(64, "examples per batch in evaluate")
    d_model: int = option(64, "model width")
    n_heads: int = option(4, "attention heads per layer")
    n_layers: int = option(4, "encoder layers")
    d_ff: int = option(128, "feed-forward size of each layer")
    dropout: float = option(0.0, "dropout in the encoder")
    positions: str = option("learned", '"learned" or "sinusoidal" position vectors')
    pooling: str = option("mean", '"mean" over tokens or "cls" (a token put first)')
    fourier_layers: str = option("1", "fourier: comma-separated indices of the layers before which the "
                                      "sequence is shortened")
    fourier_ratio: float = option(0.25, "fourier: the share of the length each shortening keeps")
    init_from: str | None = option(None, "start from these weights: a gadei job folder or checkpoint, "
                                         "or an .npz from qa_tasks.plain --save")

    # Adam at lr 1e-3 as in every measurement of docs/results/lra.md; cosine over 4,000 updates:
    # on 10,000 examples 41.2 % test against 36.4 % at 2,000 (docs/results/lra.md, section 4)
    recipe: ClassVar[dict] = {"optimizer": "adam", "lr": 1e-3, "lr_schedule": "cosine", "steps": 4000}

    def __post_init__(self):
        if self.model not in ("transformer", "fourier"):
            raise ValueError(f"model must be 'transformer' or 'fourier', not {self.model!r}")
        if self.batch < 1 or self.eval_batch < 1:
            raise ValueError(f"batch sizes must be >= 1, got batch={self.batch}, eval_batch={self.eval_batch}")
        self.real = use_real_data(self.data, self.data_dir)
        # generated data: validated now (bad lengths fail at construction, not mid-run)
        self.spec = listops.ListOpsSpec(min_length=self.min_length, max_length=self.max_length,
                                        max_depth=self.max_depth, max_args=self.max_args,
                                        n_train=self.n_train, n_valid=self.n_valid, n_test=self.n_test,
                                        seed=self.data_seed)
        try:
            layers = tuple(int(s) for s in str(self.fourier_layers).split(",") if s.strip())
        except ValueError:
            raise ValueError(f"fourier_layers must be comma-separated layer indices like '1,2', "
                             f"not {self.fourier_layers!r}") from None
        self.cls = cls = self.pooling == "cls"
        self.cfg = ModelConfig(vocab_size=len(listops.VOCAB), n_classes=listops.N_CLASSES,
                               max_len=self.max_length + cls, d_model=self.d_model, n_heads=self.n_heads,
                               n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
                               positions=self.positions, pooling=self.pooling, pad_id=listops.PAD,
                               fourier_layers=layers if self.model == "fourier" else (),
                               fourier_ratio=self.fourier_ratio)
        if self.model == "fourier" and not layers:
            raise ValueError("--model fourier needs --fourier-layers (e.g. 1)")
        self._splits: dict[str, list[list[int]] | None] = {}
        self._labels: dict[str, np.ndarray] = {}
        self.truncated = 0  # real sequences cut to max_length

    # ---- data -----------------------------------------------------------------------------------

    def splits(self) -> dict[str, tuple[Path, bool]]:
        """Split name -> (file, in LRA's format?) of the data this task reads (dataset.splits_in)."""
        if self.real:
            folder = dataset_dir(self.data_dir, "listops")
        else:
            folder = listops.generated_files(self.spec, cache_dir("lra"))
        found = listops.splits_in(folder)
        if not found:
            raise FileNotFoundError(
                f"{folder} holds no ListOps file: expected LRA's {', '.join(listops.LRA_FILES.values())} "
                f"(a Source<TAB>Target header, then expression<TAB>label lines) or the original "
                f"{', '.join(listops.ORIGINAL_FILES.values())} (label<TAB>expression lines, no header)")
        return found

    @property
    def eval_split(self) -> str:
        """The split of the final metrics: valid, or test where the data has no validation file."""
        return "valid" if "valid" in self.splits() else "test"

    def _load(self, split: str) -> tuple[list[list[int]], np.ndarray]:
        if split not in self._splits:
            found = self.splits()
            if split not in found:
                names = sorted(found, key=lambda n: (n not in ("train", "valid", "val", "test"), n))
                raise ValueError(f"no split {split!r} in this ListOps data ({next(iter(found.values()))[0].parent}): "
                                 f"it has {', '.join(names)}")
            path, lra = found[split]
            rows = listops.read_lra_tsv(path) if lra else listops.read_original_tsv(path)
            seqs = []
            for tokens, _ in rows:
                ids = ([listops.CLS] if self.cls else []) + listops.encode(tokens)
                if len(ids) > self.cfg.max_len:
                    ids, self.truncated = ids[: self.cfg.max_len], self.truncated + 1
                seqs.append(ids)
            self._splits[split] = seqs
            self._labels[split] = np.array([label for _, label in rows], dtype=np.int64)
        return self._splits[split], self._labels[split]

    @staticmethod
    def _collate(seqs: list[list[int]], labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(seqs), max(len(s) for s in seqs)), listops.PAD, dtype=torch.long)  # (B, T)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, torch.from_numpy(labels)

    def batches(self, learner: int, learners: int, seed: int):
        """One epoch of this learner's shard (every learners-th example, a fixed split that does
        not depend on seed, so shards never overlap), shuffled by seed; (ids (B, T), labels (B,)).

        Batches hold examples of similar length: the shuffled shard is cut into windows of
        BUCKET_WINDOW batches, each window sorted by length and cut into batches, and the batches
        are shuffled. At LRA's lengths (500-2,000) a batch of random lengths pads every example
        to ~1,900 tokens, and attention costs T^2."""
        check_learner(learner, learners)
        seqs, labels = self._load("train")
        rng = np.random.default_rng(seed)
        order = shard(len(seqs), learner, learners, rng)
        batches = []
        for w in range(0, len(order), BUCKET_WINDOW * self.batch):
            window = order[w: w + BUCKET_WINDOW * self.batch]
            window = window[np.argsort([len(seqs[i]) for i in window], kind="stable")]
            batches += [window[s: s + self.batch] for s in range(0, len(window), self.batch)]
        for j in rng.permutation(len(batches)):
            yield self._collate([seqs[i] for i in batches[j]], labels[batches[j]])

    def batch_size(self, batch) -> int:
        return int(batch[0].shape[0])

    # ---- model ----------------------------------------------------------------------------------

    def build_model(self) -> TransformerClassifier:
        model = build(self.cfg, self.model)
        if self.init_from:
            model.load_state_dict(load_weights(self.init_from), strict=True)
        return model

    def loss(self, model, batch) -> torch.Tensor:
        ids, labels = batch
        return F.cross_entropy(model(ids), labels)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        seqs, labels = self._load(split)
        order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths batch together
        correct, loss_sum = 0, 0.0
        with evaluating(model):
            for start in range(0, len(order), self.eval_batch):
                idx = order[start: start + self.eval_batch]
                ids, y = self._collate([seqs[i] for i in idx], labels[idx])
                logits = model(ids)                                     # (B, 10)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
        n = max(len(seqs), 1)
        return {"accuracy": correct / n, "loss": loss_sum / n}


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights for `--init-from`: a gadei job folder or checkpoint file, or an .npz written by
    qa_tasks.plain.save_weights. Neither format uses pickle."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            weights = {k: f[k] for k in f.files}
    elif path.exists():  # a gadei job folder or its checkpoint file
        try:
            from gadei import checkpoint  # only for gadei checkpoints; the task works without it
        except ImportError as e:
            raise ValueError(f"{path} is not an .npz and gadei.checkpoint is unavailable ({e}); "
                             "pass an .npz written by qa_tasks.plain --save instead") from e
        weights = checkpoint.load(path)["weights"]
    else:
        raise FileNotFoundError(f"init_from {path} does not exist: expected a gadei job folder, its "
                                "checkpoint file, or an .npz of weights (from qa_tasks.plain --save)")
    return {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}


def main(argv=None) -> dict:
    """Single-process training (qa_tasks.plain): every LRA option as --flag, plus the loop's own."""
    return plain.main(argv, task="lra", splits="valid,test")


if __name__ == "__main__":
    main()
