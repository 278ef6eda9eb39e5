"""CLINC150 intents with out-of-scope queries: Larson et al., "An Evaluation Dataset for Intent
Classification and Out-of-Scope Prediction", EMNLP-IJCNLP 2019.

`clinc150/data_full.json.gz` under the data directory: a JSON object whose keys are splits
(train, val, oos_train, oos_val; the full release adds test, oos_test), each a list of
[utterance, intent] pairs; 150 intents plus "oos". And a small generated variant of the same
shape (marker phrases per intent; out-of-scope queries are filler words only).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from ..common import reading

DATA_FILE = "data_full.json.gz"
OOS = "oos"
REQUIRED_SPLITS = ("train", "val", "oos_train", "oos_val")
TEST_SPLITS = ("test", "oos_test")


def read_clinc(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The splits of a CLINC150 `data_full.json(.gz)`: {split: [(utterance, intent), ...]}.

    Requires train, val, oos_train, oos_val; reads test and oos_test when present (both or
    neither). Other keys are ignored. Every record must be a pair of strings, and every record
    of an oos_* split must have intent "oos"; a violation names the file, split and index.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with reading(path, "a (gzip-compressed) UTF-8 JSON file"), opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of splits, found a {type(data).__name__}")
    missing = [k for k in REQUIRED_SPLITS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing split(s) {', '.join(missing)}; a CLINC150 data_full.json "
                         f"has {', '.join(REQUIRED_SPLITS)} (and test, oos_test in the full release)")
    present_test = [k for k in TEST_SPLITS if k in data]
    if len(present_test) == 1:
        raise ValueError(f"{path}: has {present_test[0]} but not the other of test / oos_test; "
                         "the full release has both")
    splits = {}
    for name in REQUIRED_SPLITS + tuple(present_test):
        records = data[name]
        if not isinstance(records, list):
            raise ValueError(f"{path}: split {name!r} must be a list of [utterance, intent] pairs, "
                             f"found a {type(records).__name__}")
        rows = []
        for i, rec in enumerate(records):
            if not (isinstance(rec, list) and len(rec) == 2 and all(isinstance(x, str) for x in rec)):
                raise ValueError(f"{path}: split {name!r} record {i}: expected [utterance, intent] "
                                 f"(two strings), found {json.dumps(rec)[:80]}")
            if name.startswith("oos_") and rec[1] != OOS:
                raise ValueError(f"{path}: split {name!r} record {i}: intent must be {OOS!r} in an "
                                 f"out-of-scope split, found {rec[1]!r}")
            rows.append((rec[0], rec[1]))
        splits[name] = rows
    return splits


# Generated variant: each intent has marker phrases; out-of-scope queries are filler words only.
GENERATED_INTENTS = {
    "balance": ["what is my balance", "how much money do i have"],
    "transfer": ["send money to", "transfer funds to"],
    "weather": ["what is the weather", "will it rain"],
    "alarm": ["set an alarm for", "wake me up at"],
    "translate": ["how do you say", "translate this into"],
    "timer": ["start a timer for", "count down"],
    "play_music": ["play some songs by", "put on music from"],
    "book_flight": ["book a flight to", "find me a plane ticket to"],
}
GENERATED_FILLER = ("the my a please now today tomorrow john paris french jazz seven minutes "
                    "morning account friend savings city quickly again later").split()


def generated_clinc(seed: int = 0, per_intent: tuple[int, int, int] = (40, 10, 10),
                    oos: tuple[int, int, int] = (40, 20, 20)) -> dict[str, list[tuple[str, str]]]:
    """A small CLINC-shaped data set with all six splits, deterministic given `seed`."""
    rng = np.random.default_rng(seed)

    def filler(lo: int, hi: int) -> list[str]:
        return list(rng.choice(GENERATED_FILLER, size=rng.integers(lo, hi)))

    splits = {}
    for k, name in enumerate(("train", "val", "test")):
        rows = []
        for intent, phrases in GENERATED_INTENTS.items():
            for _ in range(per_intent[k]):
                words = filler(1, 5)
                cut = int(rng.integers(len(words) + 1))
                rows.append((" ".join(words[:cut] + [phrases[rng.integers(len(phrases))]] + words[cut:]), intent))
        splits[name] = rows
        splits[f"oos_{name}"] = [(" ".join(filler(3, 8)), OOS) for _ in range(oos[k])]
    return splits
