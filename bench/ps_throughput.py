"""Gradient-exchange throughput of gadei and of the systems users would pick instead.

Launch (from the repository root; nice it on a shared machine)::

    nice -n 5 python -m bench.ps_throughput --params 1000000,16000000 --learners 1,2,4 \\
        --seconds 5 --json results/ps_throughput.json --plot results/ps_throughput.png
    python -m bench.ps_throughput --quick --json /tmp/ps_throughput.json     # CI: P=100k, 1 s

Each learner repeatedly pushes a precomputed gradient of P float32, has it applied with SGD,
and pulls the weights: one *exchange*. For every setting (P, N learners) every selected system
runs in this same invocation, for ``--seconds`` after ``--warmup``, one after the other, so the
ratios between them hold on a noisy machine (``--repeats K`` runs K rounds, rotating the
order, and keeps the median round). Systems (one module each in ``bench/peers/``):

    gadei    gadei.train on bench.exchange_task.Exchange (shared-memory PS, exactly-once)
    gadei_mpi    the same job on the MPI backend (mpiexec -n N+1: rank 0 hosts the PS)
    mpi_ps   an mpiT-style MPI parameter server: rank 0 applies, mpi4py Send/Recv on numpy
    gloo     torch.distributed gloo all-reduce, synchronous data-parallel (as DDP on CPU)
    hogwild  torch.multiprocessing shared tensor, lock-free add_ and copy out
    queue    a multiprocessing.Queue parameter server (pickled gradients and weights)

Each system runs in a fresh worker process of this module (``--worker SYSTEM``; gadei_mpi
and mpi_ps under ``mpiexec -n N+1``) that writes its result as JSON; the driver adds the
derived numbers.

Byte model (note B): an exchange must at least apply the update (read g and w, write w: 12·P
bytes) and pull the weights (read w, write the copy: 8·P): ``20·P`` bytes. ``gb_per_s`` is
exchanges/s x 20·P, whatever the system really moves (serialising, socket and MPI copies are
its overhead). The bandwidth is a large single-process ``np.copyto`` in this run, counted as
bytes read + written, measured before and after the systems (the better one is used, since noise
only lowers it). ``floor_ratio = gb_per_s / bandwidth``: 1.0 is one core's memory bandwidth; N
learners on several cores can exceed it.

Output: a table, ``--json FILE`` (a list, one record per system and setting, each with the
resolved configuration under ``config``), ``--plot FILE`` (PNG). Systems that fail are reported
and left out of the list (exit status 1).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.peers import ENTRY, MPI_SYSTEMS, SYSTEMS
from bench.ps_apply import memory_bandwidth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTES_PER_WEIGHT = 20        # note B in the module docstring: apply 12 + pull 8
QUICK = {"params": [100_000], "learners": [2], "seconds": 1.0, "warmup": 0.3}
DEFAULTS = {"params": [1_000_000, 16_000_000], "learners": [2], "seconds": 5.0, "warmup": 1.0}


def int_list(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def system_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown system {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(SYSTEMS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int_list, help=f"P, comma list (default "
                    f"{','.join(map(str, DEFAULTS['params']))}; --quick {QUICK['params'][0]})")
    ap.add_argument("--learners", type=int_list, help="N, comma list (default 2)")
    ap.add_argument("--seconds", type=float, help="timed window per system and setting "
                    "(default 5; --quick 1)")
    ap.add_argument("--warmup", type=float,
                    help="warm-up seconds before it (default 1; --quick 0.3)")
    ap.add_argument("--systems", type=system_list,
                    help=f"comma list of {','.join(SYSTEMS)} (default all)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds over all systems (order rotated each round); the record is the "
                         "median round, every round's rate kept (for a noisy machine)")
    ap.add_argument("--lr", type=float, default=1.0, help="SGD learning rate (keep 1: note in "
                    "bench/peers/__init__.py)")
    ap.add_argument("--json", help="write the records here (a JSON list)")
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--quick", action="store_true", help="tiny P, 1 s each (CI)")
    # worker mode (internal): run one system for one setting and write its JSON to --result
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key in ("params", "learners", "seconds", "warmup"):
        if getattr(args, key) is None:          # an explicit value beats --quick
            setattr(args, key, base[key])
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.seconds <= 0 or args.warmup < 0:
        ap.error(f"need --seconds > 0 and --warmup >= 0, got {args.seconds} and {args.warmup}")
    if args.worker and (len(args.params) != 1 or len(args.learners) != 1 or not args.result):
        ap.error("--worker runs one setting: one --params, one --learners and --result")
    return args


# ---------------------------------------------------------------------------- worker side

def worker_main(args: argparse.Namespace) -> None:
    import importlib
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    module, function = ENTRY[args.worker].split(":")
    run = getattr(importlib.import_module(module), function)
    result = run(args.params[0], args.learners[0], args.seconds, args.warmup, args.lr)
    if result is not None:                      # MPI systems: rank 0 only
        with open(args.result, "w") as f:
            json.dump(result, f)


# ---------------------------------------------------------------------------- driver side

def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel's) or the first on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    if not found:
        raise RuntimeError("gadei_mpi and mpi_ps need mpiexec: pip install mpich (or put an "
                           "MPI's mpiexec on PATH)")
    return found


def run_worker(system: str, P: int, N: int, args: argparse.Namespace) -> dict:
    """Run one system for one setting in a fresh process group; its result dict, or raise."""
    with tempfile.TemporaryDirectory(prefix="ps-throughput-") as d:
        result = os.path.join(d, "result.json")
        cmd = [sys.executable, "-m", "bench.ps_throughput", "--worker", system,
               "--params", str(P), "--learners", str(N), "--seconds", str(args.seconds),
               "--warmup", str(args.warmup), "--lr", str(args.lr), "--result", result]
        if system in MPI_SYSTEMS:
            cmd = [mpiexec(), "-n", str(N + 1), *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
        slack = 8 if system.startswith("gadei") else 4   # gadei: up to two runs
        timeout = 120 + slack * (args.seconds + args.warmup) * max(1, N / 2)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
            out, _ = proc.communicate()
            raise RuntimeError(f"{system} P={P} N={N} timed out after {timeout:.0f} s:\n"
                               f"{out[-3000:]}")
        finally:   # whatever the worker left in its group (orphans of a crash, Ctrl-C)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.returncode != 0 or not os.path.exists(result):
            raise RuntimeError(f"{system} P={P} N={N} failed (exit {proc.returncode}):\n"
                               f"{out[-3000:]}")
        with open(result) as f:
            r = json.load(f)
        r["worker_wall_s"] = time.perf_counter() - t0
        return r


def derive(raw: dict, system: str, P: int, N: int, bandwidth: float) -> dict:
    """One output record: the worker's numbers plus the byte model and the floor."""
    rate = raw["exchanges_per_s_total"]
    bytes_per_exchange = BYTES_PER_WEIGHT * P
    floor = bandwidth / bytes_per_exchange
    return {
        "system": system, "params": P, "learners": N,
        "exchanges_per_s_total": rate,
        "exchanges_per_s_per_learner": rate / N,
        "lost_fraction": raw["lost_fraction"],
        "gb_per_s": rate * bytes_per_exchange / 1e9,
        "floor_ratio": rate / floor,
        "floor_exchanges_per_s": floor,
        "bandwidth_gb_per_s": bandwidth / 1e9,
        "bytes_per_exchange_model": bytes_per_exchange,
        **{k: v for k, v in raw.items() if k not in ("exchanges_per_s_total", "lost_fraction")},
    }


def table(records: list[dict]) -> str:
    head = (f"{'system':<9} {'P':>10} {'N':>3} {'exch/s':>10} {'per lrn':>9} {'GB/s':>7} "
            f"{'floor':>6} {'lost %':>7} {'x hogw':>7}")
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(f"{r['system']:<9} {r['params']:>10} {r['learners']:>3} "
                     f"{r['exchanges_per_s_total']:>10.1f} "
                     f"{r['exchanges_per_s_per_learner']:>9.1f} "
                     f"{r['gb_per_s']:>7.2f} {r['floor_ratio']:>6.2f} "
                     f"{100 * r['lost_fraction']:>7.2f} "
                     f"{'' if r.get('vs_hogwild') is None else format(r['vs_hogwild'], '.2f'):>7}")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    """Grouped bars: exchanges/s (log) per setting, one bar per system, the floor as a tick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = sorted({(r["params"], r["learners"]) for r in records})
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in records)]
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6.0, 2 + 0.25 * len(settings) * len(systems)), 4.5))
    for k, s in enumerate(systems):
        xs, ys = [], []
        for i, key in enumerate(settings):
            for r in records:
                if r["system"] == s and (r["params"], r["learners"]) == key:
                    xs.append(i + (k - (len(systems) - 1) / 2) * width)
                    ys.append(r["exchanges_per_s_total"])
        ax.bar(xs, ys, width, label=s)
    for i, key in enumerate(settings):
        floor = next(r["floor_exchanges_per_s"] for r in records
                     if (r["params"], r["learners"]) == key)
        ax.hlines(floor, i - 0.45, i + 0.45, colors="k", linestyles="--",
                  label="floor (20·P B at copy bandwidth)" if i == 0 else None)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([f"P={p:,}\nN={n}" for p, n in settings])
    ax.set_yscale("log")
    ax.set_ylabel("exchanges/s, all learners")
    bw = records[0]["bandwidth_gb_per_s"]
    ax.set_title(f"Gradient exchange throughput (push + apply + pull); copy {bw:.1f} GB/s")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    systems = args.systems or list(SYSTEMS)
    bw_before = memory_bandwidth(reps=10)
    print(f"memory bandwidth (np.copyto, read+write): {bw_before / 1e9:.1f} GB/s; "
          f"{args.seconds:g} s per system after {args.warmup:g} s warm-up", flush=True)
    runs, failed = {}, {}     # (system, P, N) -> the worker results of every repeat
    for rep in range(args.repeats):
        order = systems[rep % len(systems):] + systems[:rep % len(systems)]   # rotate per round
        for P in args.params:
            for N in args.learners:
                for s in order:
                    try:
                        r = run_worker(s, P, N, args)
                    except Exception as e:
                        failed[f"{s} P={P} N={N} round {rep}"] = str(e)
                        print(f"FAILED {s} P={P} N={N}: {e}", file=sys.stderr, flush=True)
                        continue
                    runs.setdefault((s, P, N), []).append(r)
                    print(f"  {s:<9} P={P:<10} N={N:<3} {r['exchanges_per_s_total']:10.1f} "
                          f"exch/s  lost {100 * r['lost_fraction']:.2f} %", flush=True)
    raw = []                  # the median run of each (system, P, N), with all runs' rates
    for P in args.params:
        for N in args.learners:
            for s in systems:
                rs = sorted(runs.get((s, P, N), []), key=lambda r: r["exchanges_per_s_total"])
                if rs:
                    median = dict(rs[(len(rs) - 1) // 2])
                    median["exchanges_per_s_runs"] = [r["exchanges_per_s_total"] for r in rs]
                    median["lost_fraction_runs"] = [r["lost_fraction"] for r in rs]
                    raw.append((s, P, N, median))
    bw_after = memory_bandwidth(reps=10)
    bandwidth = max(bw_before, bw_after)
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("worker", "result")},
        "systems": systems, "failed": failed,
        "bandwidth_before_gb_per_s": bw_before / 1e9, "bandwidth_after_gb_per_s": bw_after / 1e9,
        "byte_model": "20*P bytes per exchange: apply (read g, read w, write w) + pull (read w, "
                      "write copy); bandwidth = np.copyto bytes read+written per second",
        "argv": ["python -m bench.ps_throughput", *sys.argv[1:]],    # no machine path
        "python": sys.version.split()[0], "numpy": np.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    records = [{**derive(r, s, P, N, bandwidth), "config": config} for s, P, N, r in raw]
    hogwild = {(r["params"], r["learners"]): r["exchanges_per_s_total"] for r in records
               if r["system"] == "hogwild"}
    for r in records:   # the unguarded reference: a safe exchange's ceiling is ~0.7-0.8 of it
        ref = hogwild.get((r["params"], r["learners"]))
        r["vs_hogwild"] = r["exchanges_per_s_total"] / ref if ref else None
    print(f"\nbandwidth {bandwidth / 1e9:.1f} GB/s (before {bw_before / 1e9:.1f}, after "
          f"{bw_after / 1e9:.1f}); floor = 20·P bytes per exchange at that bandwidth")
    print(table(records))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot and records:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        plot(records, args.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
