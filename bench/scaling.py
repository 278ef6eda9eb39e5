"""End-to-end samples/s with 1 and 2 learners on a real workload, and where the time goes.

Launch (from the repository root)::

    python -m bench.scaling --task nlc --steps 600 --json results/scaling.json
    python -m bench.scaling --quick              # CI: generated data, a few seconds of training

Runs the same job (task, optimizer, total steps, seed) with 1 and with 2 learners, one after
the other, and reports samples/s, the speed-up of 2 learners over 1 (the goal on 2 cores:
>= 1.7x), and per learner the seconds spent computing, pulling, pushing and waiting for a free
slot, and the PS's busy and idle seconds (each process counts its own; see `time_split` in
summary.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import bench


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="nlc")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600, help="total steps, all learners together")
    ap.add_argument("--learners", default="1,2")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="CI: generated data, 30 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.data, args.steps = "generated", 30
    rows = []
    base = Path(tempfile.mkdtemp(prefix="gadei-scaling-"))
    print(f"{'learners':>8} {'samples/s':>10} {'speed-up':>8}   per learner: compute / pull / push / wait (s)"
          "   PS busy / idle (s)")
    for n in [int(x) for x in args.learners.split(",")]:
        s = bench.train(args.task, task_options={"data": args.data}, optimizer=args.optimizer,
                        learners=n, steps=args.steps, seed=args.seed, out=base / f"l{n}", lr=args.lr,
                        evaluate=False)
        row = {"learners": n, "samples_per_s": s["samples_per_s"], "train_time_s": s["train_time_s"],
               "time_split": s["time_split"], "staleness": s["staleness"]["mean"]}
        row["speedup"] = row["samples_per_s"] / rows[0]["samples_per_s"] if rows else 1.0
        rows.append(row)
        split = "  ".join(f"{v['compute_s']:.1f}/{v['pull_s']:.2f}/{v['push_s']:.2f}/{v['wait_s']:.2f}"
                          for v in s["time_split"]["learners"].values())
        ps = s["time_split"]["ps"]
        print(f"{n:>8} {row['samples_per_s']:>10.1f} {row['speedup']:>8.2f}   {split}   "
              f"{ps['busy_s']:.2f} / {ps['idle_s']:.1f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        config = {**vars(args), "python": sys.version.split()[0], "machine": platform.machine(),
                  "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        Path(args.json).write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
