"""Small files in the TREC and CLINC150 formats, for the text classification tests."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

TREC_TRAIN = [
    b"DESC:manner How did serfdom develop in and then leave Russia ?",
    b"ENTY:cremat What films featured the character Popeye Doyle ?",
    b"LOC:city Which city has the oldest relationship as a sister\xf0city with Los Angeles ?",  # latin-1
    "HUM:ind Who was Jos\u00e9 Mart\u00ed ?".encode("utf-8"),                                   # utf-8
    b"NUM:date When was Ozzy Osbourne born ?",
    b"ABBR:exp What does the abbreviation AIDS stand for ?",
    b"HUM:ind Who killed Gandhi ?",
    b"LOC:country What country 's flag is red and white ?",
    b"NUM:count How many people live in Chile ?",
    b"DESC:def What is a `` fear of heights '' ?",
]


TREC_TEST = [b"NUM:dist How far is it from Denver to Aspen ?", b"LOC:city What city is the Alamo in ?"]


def write_trec(root: Path, train=TREC_TRAIN, test=TREC_TEST) -> Path:
    folder = root / "trec"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_5500.label").write_bytes(b"\n".join(train) + b"\n")
    (folder / "TREC_10.label").write_bytes(b"\n".join(test) + b"\n")
    return root


CLINC = {
    "train": [["what is my balance", "balance"], ["how much money do i have", "balance"],
              ["set an alarm for seven", "alarm"], ["wake me up at six", "alarm"],
              ["how do you say hello in french", "translate"], ["translate thanks to german", "translate"]],
    "val": [["tell me my balance", "balance"], ["set alarm for noon", "alarm"], ["say cat in spanish", "translate"]],
    "oos_train": [["who won the game last night", "oos"], ["tell me a fun fact", "oos"]],
    "oos_val": [["what is the meaning of life", "oos"]],
}


def write_clinc(root: Path, data=None, raw: bytes | None = None) -> Path:
    folder = root / "clinc150"
    folder.mkdir(parents=True, exist_ok=True)
    payload = raw if raw is not None else json.dumps(CLINC if data is None else data).encode()
    (folder / "data_full.json.gz").write_bytes(gzip.compress(payload))
    return root
