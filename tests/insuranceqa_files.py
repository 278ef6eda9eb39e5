"""A tiny InsuranceQA release in the published layout and formats, for the answer selection tests."""
from __future__ import annotations

import gzip
import json

from qa_tasks.answer_selection.insuranceqa import pool_file

VOCAB = {"idx_1": "What", "idx_2": "is", "idx_3": "term", "idx_4": "life", "idx_5": "insurance",
         "idx_6": "?", "idx_7": "Does", "idx_8": "Medicare", "idx_9": "cover", "idx_10": "dental"}


ANSWERS = {"1": " Term life insurance covers you for a term of years.",
           "2": " Medicare does not cover dental care, sadly.",
           "3": " Whole life insurance lasts your whole life.",
           "4": " Renters insurance covers your stuff.",
           "5": " Dental plans are sold separately from Medicare."}


TRAIN = ["life-insurance\tidx_1 idx_2 idx_3 idx_4 idx_5 idx_6\t1\t3 4 1",
         "medicare-insurance\tidx_7 idx_8 idx_9 idx_10 idx_6\t2 5\t4 3"]


VALID = ["life-insurance\tidx_1 idx_2 idx_4 idx_5 idx_6\t3\t1 3 4 2",
         "medicare-insurance\tidx_7 idx_8 idx_9 idx_10 idx_6\t5\t1 2 4"]    # truth 5 not in pool


# train.json.gz (PyPI copy): per train question its ground truth and the top of its 500-pool
# without it; the same questions and truths as TRAIN, in the same order
TRAIN_NEGATIVES = {"0": {"answers": ["1"], "negatives": ["4", "3", "2"]},
                   "1": {"answers": ["2", "5"], "negatives": ["1", "3"]}}


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def write_release(root, *, valid=VALID, test=None, train_negatives=None):
    """A tiny InsuranceQA folder (root/insuranceqa) in the layout and formats of the real one;
    `train_negatives` (e.g. TRAIN_NEGATIVES) adds the PyPI train.json.gz."""
    folder = root / "insuranceqa"
    write_gz(folder / "V2" / "vocabulary.gz", [f"{k}\t{v}" for k, v in VOCAB.items()])
    write_gz(folder / "V2" / pool_file("train", 100), TRAIN)
    write_gz(folder / "V2" / pool_file("valid", 500), valid)
    if test is not None:
        write_gz(folder / "V2" / pool_file("test", 500), test)
    answers = {k: {"en": v, "zh": "..."} for k, v in ANSWERS.items()}
    write_gz(folder / "pypi_insuranceqa_data_1.0" / "answers.json.gz", [json.dumps(answers)])
    if train_negatives is not None:
        entries = {k: {"en": "...", "zh": "...", "domain": "life-insurance", **v} for k, v in train_negatives.items()}
        write_gz(folder / "pypi_insuranceqa_data_1.0" / "train.json.gz", [json.dumps(entries)])
    return folder


def words(corpus, ids):
    return [corpus.vocab[i] for i in ids]
