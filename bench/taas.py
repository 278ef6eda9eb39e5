"""The robustness table (GaDei's claim, measured): the service's one fixed recipe against the best
of a small per-data-set search, on every labelled text set of the data folder.

    python -m bench.taas --data-dir D [--sets trec,trec-fine,clinc,clinc-domains,insuranceqa]
                         [--out docs/results/taas.json]

Each run goes through `gadei serve`'s own training path: the CSV is checked and stored by the
service's parser (gadei/serve/csvdata.py) and trained by the `gadei train` command the service's
queue runs (gadei/serve/runner.py, Recipe.command), with only the mini-batch size and the
learning rate changed for the search: batch 16 / 64 at the fixed lr, lr half / double at the
fixed batch (the fixed recipe: batch 32, Adam lr 1e-3, 6 epochs). Every setting trains the same
number of epochs. The tuned setting is the one with the best accuracy on the held-out
validation split (the service's own 10 %), and the table reports the test accuracy of both:
TREC_10 for TREC, `val` + `oos_val` for CLINC150 (this copy withholds its test split),
`valid` for InsuranceQA's question categories. Results are appended to --out as each run ends,
so an interrupted run keeps what it finished; a run already in --out is not repeated.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import to_csv
from gadei.serve.csvdata import parse_training_csv
from gadei.serve.runner import TRAINING_CSV, Recipe, _child_env

FIXED = Recipe()
SEARCH = [("fixed", FIXED), ("batch 16", replace(FIXED, batch=16)), ("batch 64", replace(FIXED, batch=64)),
          ("lr 5e-4", replace(FIXED, lr=5e-4)), ("lr 2e-3", replace(FIXED, lr=2e-3))]


def data_sets(names: list[str], data_dir) -> list[tuple[str, list, list]]:
    out = []
    for name in names:
        if name == "trec":
            out.append(("TREC coarse (6)", *to_csv.trec(data_dir, fine=False)))
        elif name == "trec-fine":
            out.append(("TREC fine (50)", *to_csv.trec(data_dir, fine=True)))
        elif name == "clinc":
            out.append(("CLINC150 (150 + oos)", *to_csv.clinc(data_dir, None)))
        elif name == "clinc-domains":
            out += [(f"CLINC150 {d} (15)", *to_csv.clinc(data_dir, d)) for d in to_csv.clinc_domains(data_dir)]
        elif name == "insuranceqa":
            out.append(("InsuranceQA categories (12)", *to_csv.insuranceqa(data_dir)))
        else:
            raise SystemExit(f"unknown set {name!r}")
    return out


def train_and_score(train: list, test: list, recipe: Recipe, work: Path) -> dict:
    """Train like the service does, then score the test CSV with gadei's loader (`gadei eval`)."""
    work.mkdir(parents=True)
    data = parse_training_csv(to_csv_bytes(train))             # the service's checks
    (work / TRAINING_CSV).write_text(data.to_csv(), encoding="utf-8")
    to_csv.write(test, work / "test.csv")
    updates = recipe.planned_updates(len(data.rows))
    cmd = recipe.command(work, f"taas-{work.name}", updates, resume=False) + ["--test-path", str(work / "test.csv")]
    t0 = time.monotonic()
    subprocess.run(["nice", "-n", "10", *cmd], check=True, env=_child_env(), stdout=subprocess.DEVNULL,
                   stderr=open(work / "train.log", "wb"))
    wall = time.monotonic() - t0
    summary = json.loads((work / "summary.json").read_text())
    ev = subprocess.run(["nice", "-n", "10", *cmd[:3], "eval", "--checkpoint", str(work), "--split", "test"],
                        check=True, env=_child_env(), capture_output=True, text=True)
    return {"valid_accuracy": summary["final_metrics"]["accuracy"], "test_accuracy": json.loads(ev.stdout)["accuracy"],
            "updates": summary["updates_applied"], "wall_s": round(wall, 1), "rows": len(data.rows),
            "classes": len(data.classes)}


def to_csv_bytes(rows) -> bytes:
    import csv
    import io
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode()


def table(results: list[dict]) -> str:
    lines = ["| data set | rows | classes | fixed: test (valid) | tuned setting | tuned: test (valid) | fixed - tuned (test) |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["set"] for r in results):
        runs = {r["setting"]: r for r in results if r["set"] == name}
        if "fixed" not in runs:
            continue
        f = runs["fixed"]
        best = max(runs.values(), key=lambda r: r["valid_accuracy"])
        done = "" if len(runs) == len(SEARCH) else f" ({len(runs)} of {len(SEARCH)} settings run)"
        lines.append(f"| {name} | {f['rows']} | {f['classes']} | {f['test_accuracy']:.3f} ({f['valid_accuracy']:.3f}) | "
                     f"{best['setting']}{done} | {best['test_accuracy']:.3f} ({best['valid_accuracy']:.3f}) | "
                     f"{100 * (f['test_accuracy'] - best['test_accuracy']):+.1f} points |")
    return "\n".join(lines)


def every_run(results: list[dict]) -> str:
    names = [n for n, _ in SEARCH]
    lines = ["| data set | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             ]
    for name in dict.fromkeys(r["set"] for r in results):
        runs = {r["setting"]: r for r in results if r["set"] == name}
        cells = [f"{runs[n]['test_accuracy']:.3f} / {runs[n]['valid_accuracy']:.3f} ({runs[n]['wall_s']:.0f} s)"
                 if n in runs else "" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("GADEI_DATA"))
    p.add_argument("--sets", default="trec,trec-fine,clinc,insuranceqa,clinc-domains")
    p.add_argument("--out", default="taas.json")
    a = p.parse_args(argv)
    out = Path(a.out)
    results = json.loads(out.read_text())["results"] if out.exists() else []
    scratch = Path(tempfile.mkdtemp(prefix="gadei-taas-"))
    for name, train, test in data_sets(a.sets.split(","), a.data_dir):
        for setting, recipe in SEARCH:
            if any(r["set"] == name and r["setting"] == setting for r in results):
                continue
            res = train_and_score(train, test, recipe, scratch / f"{len(results)}")
            results.append({"set": name, "setting": setting, "batch": recipe.batch, "lr": recipe.lr, **res})
            print(json.dumps(results[-1]), flush=True)
            out.write_text(json.dumps({"recipe": FIXED.to_dict(), "results": results}, indent=1))
    print(table(results))
    print()
    print(every_run(results))


if __name__ == "__main__":
    main()
