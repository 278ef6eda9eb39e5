"""Which optimizer, with how many learners: the comparison of Feng et al., "Distributed deep
learning for question answering" (CIKM 2016), run through gadei's parameter server.

Launch (from the repository root)::

    python -m bench.optimizers --task qc --learners 1,2,4 --epochs 8 \\
        --json results/optimizers.json --md results/optimizers.md --plot results/optimizers.png
    python -m bench.optimizers --quick          # CI: generated data, 2 optimizers, seconds

For every optimizer (hyper-parameters in bench/optimizer_settings.py, with their sources) and
every learner count, one job with the same sample budget (`--epochs` of the training data, all
learners together) and the same seed, evaluated every `--eval-every` seconds into its
metrics.jsonl. Reported: the final validation metric, the time to reach `--target`, samples/s,
mean staleness (versions between a gradient's pull and its application), and the speed-up in
samples/s over 1 learner. Output: a table (printed, Markdown, JSON) and plots (the metric
against wall time per optimizer; speed-up against learners).
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
from bench.optimizer_settings import SETTINGS, TASKS


def time_to_target(metrics_file: Path, metric: str, target: float) -> float | None:
    """Seconds from the job's start until an evaluation first reached `target`."""
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        if metric in row.get("eval", {}) and row["eval"][metric] >= target:
            return row["t"]
    return None


def curve(metrics_file: Path, metric: str) -> list[tuple[float, float]]:
    rows = [json.loads(l) for l in metrics_file.read_text().splitlines()]
    return [(r["t"], r["eval"][metric]) for r in rows if metric in r.get("eval", {})]


def run_one(task: str, options: dict, optimizer: str, learners: int, epochs: int, seed: int,
            eval_every: float, out: Path) -> dict:
    t0 = time.monotonic()
    s = bench.train(task, task_options=options, optimizer=optimizer, learners=learners,
                    epochs=epochs, seed=seed, out=out, eval_every=eval_every, **SETTINGS[optimizer])
    return {"summary": s, "wall_s": time.monotonic() - t0}


def plot(rows: list[dict], path: str, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = sorted({r["learners"] for r in rows})
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    # 11 optimizers: the default cycle's 10 colours would repeat
    color = {o: plt.cm.tab20(k % 20) for k, o in enumerate(names)}
    fig, axes = plt.subplots(1, len(counts) + 1, figsize=(5 * (len(counts) + 1), 4))
    for ax, n in zip(axes, counts):
        for r in rows:
            if r["learners"] == n and r["curve"]:
                t, m = zip(*r["curve"])
                ax.plot(t, m, label=r["optimizer"], color=color[r["optimizer"]])
        ax.set(title=f"{n} learner(s)", xlabel="wall time (s)", ylabel=metric)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for opt in names:
        pts = sorted((r["learners"], r["speedup"]) for r in rows if r["optimizer"] == opt and r["speedup"])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=opt, color=color[opt])
    ax.plot(counts, counts, "k:", label="linear")
    ax.set(title="speed-up in samples/s", xlabel="learners", ylabel="x over 1 learner")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict], metric: str, target: float) -> str:
    lines = [f"| optimizer | learners | final {metric} | time to {target} (s) | samples/s | "
             "staleness | speed-up | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ttt = f"{r['time_to_target_s']:.1f}" if r["time_to_target_s"] is not None else "not reached"
        lines.append(f"| {r['optimizer']} | {r['learners']} | {r['final_metric']:.4f} | {ttt} | "
                     f"{r['samples_per_s']:.0f} | {r['staleness']:.2f} | "
                     f"{r['speedup']:.2f} | {r['wall_s']:.0f} |" if r["speedup"] else
                     f"| {r['optimizer']} | {r['learners']} | {r['final_metric']:.4f} | {ttt} | "
                     f"{r['samples_per_s']:.0f} | {r['staleness']:.2f} | - | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="qc", choices=sorted(TASKS))
    ap.add_argument("--optimizers", default=",".join(SETTINGS))
    ap.add_argument("--learners", default="1,2,4")
    ap.add_argument("--epochs", type=int, default=8, help="sample budget: epochs of the training data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=float, default=5.0)
    ap.add_argument("--target", type=float, help="metric value for time-to-target (default per task)")
    ap.add_argument("--data", default="auto", help="task data: auto | real | generated")
    ap.add_argument("--json"), ap.add_argument("--md"), ap.add_argument("--plot")
    ap.add_argument("--out", help="keep each job's output folder here (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="CI: generated data, 2 optimizers, 1-2 learners")
    args = ap.parse_args(argv)
    if args.quick:
        args.data, args.optimizers, args.learners, args.epochs, args.eval_every = \
            "generated", "adam,easgd", "1,2", 1, 1.0
    metric, target = TASKS[args.task]["metric"], args.target or TASKS[args.task]["target"]
    options = {"data": args.data}
    counts = [int(n) for n in args.learners.split(",")]
    base = Path(args.out or tempfile.mkdtemp(prefix="gadei-optimizers-"))
    rows = []
    print(f"{'optimizer':<10} {'L':>2} {metric:>18} {'to target s':>11} {'samples/s':>9} "
          f"{'stale':>6} {'speed-up':>8}")
    for opt in args.optimizers.split(","):
        single = None
        for n in counts:
            out = base / f"{opt}-{n}"
            r = run_one(args.task, options, opt, n, args.epochs, args.seed, args.eval_every, out)
            s = r["summary"]
            row = {"optimizer": opt, "learners": n, "hyper": SETTINGS[opt],
                   "final_metric": s["final_metrics"].get(metric, float("nan")),
                   "final_metrics": s["final_metrics"],
                   "time_to_target_s": time_to_target(out / "metrics.jsonl", metric, target),
                   "samples_per_s": s["samples_per_s"], "staleness": s["staleness"]["mean"],
                   "updates": s["updates_applied"], "wall_s": r["wall_s"],
                   "time_split": s["time_split"], "curve": curve(out / "metrics.jsonl", metric)}
            if n == 1:
                single = row["samples_per_s"]
            row["speedup"] = row["samples_per_s"] / single if single else None
            rows.append(row)
            ttt = f"{row['time_to_target_s']:.1f}" if row["time_to_target_s"] is not None else "-"
            sp = f"{row['speedup']:.2f}" if row["speedup"] else "-"
            print(f"{opt:<10} {n:>2} {row['final_metric']:>18.4f} {ttt:>11} "
                  f"{row['samples_per_s']:>9.0f} {row['staleness']:>6.2f} {sp:>8}", flush=True)
    config = {**vars(args), "metric": metric, "target": target, "settings": SETTINGS,
              "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown(rows, metric, target))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot, metric)
    return rows


if __name__ == "__main__":
    main()
