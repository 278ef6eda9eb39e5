"""Write the labelled text sets of the data folder as `text,class` CSV files, the upload format of
`gadei serve`:

    python -m bench.to_csv trec --data-dir D --out trec_train.csv --test-out trec_test.csv [--fine]
    python -m bench.to_csv clinc --data-dir D --out clinc_train.csv --test-out clinc_val.csv [--domain banking]
    python -m bench.to_csv insuranceqa --data-dir D --out iqa_train.csv --test-out iqa_valid.csv

TREC: train_5500.label -> --out, TREC_10.label -> --test-out; the class is the coarse label
(ABBR ... NUM) or with --fine the fine one (LOC:city). The one non-UTF-8 byte of train_5500
(0xF0) is read as latin-1 ("ð") and written as UTF-8.
CLINC150: train + oos_train -> --out, val + oos_val -> --test-out (this copy withholds test);
the class is the intent, out-of-scope queries are the class "oos"; with --domain, only that
domain's 15 intents (domains.json), without oos.
InsuranceQA: the question categories (12 insurance domains, e.g. life-insurance) of the
pypi_insuranceqa_data_1.0 copy: train.json.gz -> --out, valid.json.gz -> --test-out (test is
withheld); the question's runs of spaces are collapsed.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

from qa_tasks.common import dataset_dir
from qa_tasks.text_classification.clinc import DATA_FILE, read_clinc
from qa_tasks.text_classification.trec import TEST_FILE, TRAIN_FILE, read_trec


def trec(data_dir, fine: bool) -> tuple[list, list]:
    folder = dataset_dir(data_dir, "trec")
    col = 1 if fine else 0
    return tuple([(q, r[col]) for r in read_trec(folder / name) for q in [r[2]]] for name in (TRAIN_FILE, TEST_FILE))


def clinc(data_dir, domain: str | None) -> tuple[list, list]:
    folder = dataset_dir(data_dir, "clinc150")
    raw = read_clinc(folder / DATA_FILE)
    if domain is None:
        return raw["train"] + raw["oos_train"], raw["val"] + raw["oos_val"]
    domains = json.loads((folder / "domains.json").read_text())
    if domain not in domains:
        raise ValueError(f"no CLINC150 domain {domain!r}; there are {', '.join(sorted(domains))}")
    keep = set(domains[domain])
    return [r for r in raw["train"] if r[1] in keep], [r for r in raw["val"] if r[1] in keep]


def clinc_domains(data_dir) -> list[str]:
    return sorted(json.loads((dataset_dir(data_dir, "clinc150") / "domains.json").read_text()))


def insuranceqa(data_dir) -> tuple[list, list]:
    folder = dataset_dir(data_dir, "insuranceqa") / "pypi_insuranceqa_data_1.0"
    out = []
    for name in ("train.json.gz", "valid.json.gz"):
        with gzip.open(folder / name, "rt", encoding="utf-8") as f:
            out.append([(" ".join(q["en"].split()), q["domain"]) for q in json.load(f).values()])
    return out[0], out[1]


def write(rows: list[tuple[str, str]], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=["trec", "clinc", "insuranceqa"])
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True)
    p.add_argument("--test-out")
    p.add_argument("--fine", action="store_true", help="TREC: the 50 fine classes")
    p.add_argument("--domain", help="CLINC150: one domain's intents only")
    a = p.parse_args(argv)
    train, test = (trec(a.data_dir, a.fine) if a.dataset == "trec" else clinc(a.data_dir, a.domain)
                   if a.dataset == "clinc" else insuranceqa(a.data_dir))
    write(train, a.out)
    if a.test_out:
        write(test, a.test_out)
    print(f"{len(train)} training rows -> {a.out}" + (f", {len(test)} test rows -> {a.test_out}" if a.test_out else ""))


if __name__ == "__main__":
    main()
