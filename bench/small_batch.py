"""GaDei's regime end to end: small mini-batches through the PS, against the compute-only bound
and Hogwild, on a real task (nlc: CLINC150, the self-attentive model, 1.66M weights).

Launch (from the repository root; the full table takes ~15 minutes)::

    nice -n 5 python -m bench.small_batch --json docs/bench/small_batch.json
    python -m bench.small_batch --quick          # CI: generated data, one small cell per system

For every mini-batch size B (``--batches``, per learner) and learner count N (``--learners``),
in this one run, one after the other:

compute   N forked processes (one torch thread each, as gadei's learners) run the learner's loop
          with no exchange at all: the same task, model, seeds and batches, forward and backward
          into a gradient buffer allocated once and zeroed in place (as gadei's learners do), and
          no update. Their samples/s is the bound: the hardware spends nothing on the exchange.
hogwild   the same N processes on one model in shared memory (torch.multiprocessing,
          ``share_memory()``), each applying its gradient to the shared weights with no lock
          through its own torch.optim twin of the rule (fused where torch has a fused CPU kernel),
          as torch's Hogwild example does: no copy, no PS, updates may race.
gadei     ``gadei.train`` on the same task, rule and hyper-parameters (the PS is one more
          process), with steps enough to fill the window at the compute bound's rate (that of
          its first round).

With ``--repeats K`` every cell runs K rounds of the three, the order rotated each round, and
each system's median round is reported (a burst of load then hits each system in turn).

compute and hogwild count the samples of each process for ``--seconds`` after its data is
loaded and ``--warmup`` seconds of steps, all starting together at a barrier. gadei's rate is
taken from its metrics.jsonl (one row a second): samples between the first and the last row
written while updates were still arriving, so start-up and shut-down are left out.

Reported per cell: samples/s of each system, gadei / compute (how near the exchange comes to the
hardware limit: 1.0 = free), gadei / hogwild, and gadei's time split (learners: computing,
pulling, pushing, waiting for a free slot; the PS's busy fraction), which says where the gap
goes. Output: a table, ``--json FILE`` ({"config", "rows"}).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import algorithms
import bench
from bench.peers import own_session, running
from gadei import task as T

QUICK = {"batches": "4", "learners": "2", "seconds": 1.5, "warmup": 0.5, "data": "generated"}
DEFAULTS = {"batches": "1,4,16", "learners": "1,2,4", "seconds": 8.0, "warmup": 2.0, "data": "real"}
# rule -> its torch.optim class; the fused CPU kernel where torch has one (the fastest Hogwild)
TORCH_OPTIM = {"sgd": "SGD", "msgd": "SGD", "adagrad": "Adagrad", "adadelta": "Adadelta",
               "rmsprop": "RMSprop", "adam": "Adam", "adamax": "Adamax"}
FUSED = {"sgd", "msgd", "adagrad", "adam"}
RESULT_TIMEOUT_S = 600.0
SYSTEMS = ("compute", "gadei", "hogwild")


def torch_optimizer(name: str, hyper: dict, params) -> torch.optim.Optimizer:
    """torch.optim's optimizer for rule `name` with gadei's hyper-parameters (and defaults)."""
    kw = algorithms.get(name, **hyper).hyper()
    if "beta1" in kw:
        kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
    cls = getattr(torch.optim, TORCH_OPTIM[name])
    return cls(params, **kw, **({"fused": True} if name in FUSED else {}))


def epochs_of_batches(task, learner: int, learners: int, seed: int):
    """The batches learner `learner` sees in gadei, epoch after epoch (gadei/role.py's seeds for
    a learner's first incarnation)."""
    epoch = 0
    while True:
        got = False
        for batch in task.batches(learner, learners, seed + 1_000_003 * epoch + 101 * learner):
            got = True
            yield batch
        if not got:
            raise ValueError(f"learner {learner} of {learners} got no batches: use fewer learners")
        epoch += 1


def timed_samples(step, seconds: float, warmup: float, barrier) -> dict:
    """Run `step()` (returns the samples it took) for `warmup` s, wait at `barrier`, then for
    `seconds` s; the samples and steps of the timed window and its length."""
    step()
    start = time.perf_counter()
    while time.perf_counter() - start < warmup:
        step()
    barrier.wait(RESULT_TIMEOUT_S)
    t0 = time.perf_counter()
    samples = steps = 0
    while True:
        samples += step()
        steps += 1
        t = time.perf_counter()
        if t >= t0 + seconds:
            return {"samples": samples, "steps": steps, "elapsed_s": t - t0}


def _learner(i: int, args: argparse.Namespace, opts: dict, shared, barrier, results) -> None:
    """One compute-only (`shared` None) or Hogwild (`shared`: the model in shared memory)
    learner process."""
    own_session()
    torch.set_num_threads(1)
    try:
        task = T.build(args.task, opts)
        if shared is None:
            torch.manual_seed(args.seed)
            model = task.build_model()
        else:
            model = shared
        model.train()
        params = list(model.parameters())
        # gradients in one buffer allocated once, zeroed in place (gadei/worker.py's reason: a
        # fresh gradient per step costs page faults)
        flat = torch.zeros(sum(p.numel() for p in params))
        off = 0
        for p in params:
            p.grad = flat[off:off + p.numel()].view_as(p)
            off += p.numel()
        opt = None if shared is None else torch_optimizer(args.optimizer, {"lr": args.lr}, params)
        batches = epochs_of_batches(task, i, args.n, args.seed)

        def step() -> int:
            batch = next(batches)
            flat.zero_()
            task.loss(model, batch).backward()
            if opt is not None:
                opt.step()        # lock-free, on the shared weights
            return T.batch_size(task, batch)

        results.put((i, timed_samples(step, args.seconds, args.warmup, barrier)))
    except BaseException as e:
        results.put((i, {"error": f"{type(e).__name__}: {e}"}))
        raise


def run_processes(args: argparse.Namespace, opts: dict, hogwild: bool) -> dict:
    """samples/s over N forked learner processes, compute-only or Hogwild."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("fork")     # the parent has imported torch once; as torch's example
    shared = None
    if hogwild:
        torch.manual_seed(args.seed)
        shared = T.build(args.task, opts).build_model()
        shared.share_memory()
    barrier, results = ctx.Barrier(args.n), ctx.Queue()
    procs = [ctx.Process(target=_learner, args=(i, args, opts, shared, barrier, results), daemon=True)
             for i in range(args.n)]
    with running(procs):
        per = dict(results.get(timeout=RESULT_TIMEOUT_S) for _ in procs)
    errors = [r["error"] for r in per.values() if "error" in r]
    if errors or any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"{'hogwild' if hogwild else 'compute'} learners failed: {errors} "
                           f"(exit codes {[p.exitcode for p in procs]})")
    rows = [per[i] for i in range(args.n)]
    return {"samples_per_s": sum(r["samples"] / r["elapsed_s"] for r in rows),
            "steps_per_s": sum(r["steps"] / r["elapsed_s"] for r in rows), "per_learner": rows}


def steady_samples_rate(metrics_path: Path, applied: int) -> dict | None:
    """Samples/s between the first and the last metrics row with 0 < updates < applied."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    inner = [(r["t"], r["samples"]) for r in rows if 0 < r.get("updates", 0) < applied]
    if len(inner) < 2 or inner[-1][0] <= inner[0][0]:
        return None
    (t0, s0), (t1, s1) = inner[0], inner[-1]
    return {"samples_per_s": (s1 - s0) / (t1 - t0), "window_s": t1 - t0}


def run_gadei(args: argparse.Namespace, opts: dict, steps_per_s: float, out: Path) -> dict:
    """gadei.train on the cell, sized to run `--warmup + --seconds` (+2 s for the rows that the
    steady window drops) at the compute bound's step rate: at least that long."""
    steps = max(4 * args.n, math.ceil(steps_per_s * (args.seconds + args.warmup + 2)))
    s = bench.train(args.task, task_options=opts, optimizer=args.optimizer, lr=args.lr,
                    learners=args.n, steps=steps, seed=args.seed, out=out, evaluate=False,
                    progress=False)
    steady = steady_samples_rate(out / "metrics.jsonl", s["updates_applied"])
    split = s["time_split"]
    learners = split["learners"].values()
    ps = split["ps"]
    return {"samples_per_s": steady["samples_per_s"] if steady else float(s["samples_per_s"]),
            "rate_from": "metrics.jsonl steady window" if steady else "summary (no steady window)",
            "window_s": steady["window_s"] if steady else None, "steps": steps,
            "updates_applied": s["updates_applied"], "train_time_s": s["train_time_s"],
            "staleness": s["staleness"]["mean"],
            "time_split": split,
            # fractions of the learners' time, summed over learners
            "learner_split": {k: sum(v[f"{k}_s"] for v in learners) /
                              max(1e-9, sum(v["compute_s"] + v["pull_s"] + v["push_s"] + v["wait_s"]
                                            for v in learners))
                              for k in ("compute", "pull", "push", "wait")},
            "ps_busy": ps["busy_s"] / max(1e-9, ps["busy_s"] + ps["idle_s"])}


def table(rows: list[dict]) -> str:
    head = (f"{'B':>3} {'N':>2} {'compute':>9} {'gadei':>9} {'hogwild':>9} {'g/comp':>7} "
            f"{'g/hogw':>7} {'hogw/comp':>9}   gadei learners: compute/pull/push/wait  PS busy")
    lines = [head, "-" * len(head)]
    for r in rows:
        ls = r["gadei"]["learner_split"]
        lines.append(f"{r['batch']:>3} {r['learners']:>2} {r['compute']['samples_per_s']:>9.1f} "
                     f"{r['gadei']['samples_per_s']:>9.1f} {r['hogwild']['samples_per_s']:>9.1f} "
                     f"{r['gadei_vs_compute']:>7.2f} {r['gadei_vs_hogwild']:>7.2f} "
                     f"{r['hogwild_vs_compute']:>9.2f}   "
                     f"{ls['compute']:.2f}/{ls['pull']:.2f}/{ls['push']:.2f}/{ls['wait']:.2f}"
                     f"{'':>10}{r['gadei']['ps_busy']:.2f}")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="nlc", help="a task with a `batch` option (default nlc)")
    ap.add_argument("--data", help="the task's data option: real | generated (default real; "
                                   "--quick generated)")
    ap.add_argument("--data-dir", help="the task's data folder (default: $GADEI_DATA's)")
    ap.add_argument("--batches", help="mini-batch sizes per learner, comma list (default 1,4,16)")
    ap.add_argument("--learners", help="learner counts, comma list (default 1,2,4)")
    ap.add_argument("--seconds", type=float, help="timed window per system and cell (default 8)")
    ap.add_argument("--warmup", type=float, help="seconds of steps before it (default 2)")
    ap.add_argument("--optimizer", default="adam", choices=sorted(TORCH_OPTIM),
                    help="the PS's rule, and Hogwild's torch.optim twin (default adam)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds per cell, the systems' order rotated each round; each system's "
                         "median round is reported, every round's rate kept (a noisy machine)")
    ap.add_argument("--json", help="write {config, rows} here")
    ap.add_argument("--quick", action="store_true", help="CI: generated data, batch 4, 2 learners")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key in ("batches", "learners", "seconds", "warmup", "data"):
        if getattr(args, key) is None:          # an explicit value beats --quick
            setattr(args, key, base[key])
    args.batches, args.learners = int_list(str(args.batches)), int_list(str(args.learners))
    if args.seconds <= 0 or args.warmup < 0:
        ap.error(f"need --seconds > 0 and --warmup >= 0, got {args.seconds} and {args.warmup}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if "batch" not in T.options(args.task):
        ap.error(f"task {args.task!r} has no `batch` option")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = os.getloadavg()
    print(f"{args.task}, {args.optimizer} lr {args.lr}, data {args.data}; {args.seconds:g} s per "
          f"system and cell after {args.warmup:g} s; load average {load[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gadei-small-batch-") as d:   # gadei's job folders
        rows = run_cells(args, Path(d))
    print()
    print(table(rows))
    config = {**{k: v for k, v in vars(args).items() if k != "n"},
              "load_average_start": load, "load_average_end": os.getloadavg(),
              "torch": torch.__version__, "python": sys.version.split()[0],
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result = {"config": config, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def run_cells(args: argparse.Namespace, base: Path) -> list[dict]:
    """Every (batch, learners) cell, each system `--repeats` times; one row per cell."""
    rows = []
    for b in args.batches:
        for n in args.learners:
            args.n = n
            opts = T.with_data_dir(args.task, args.data_dir, {"data": args.data, "batch": b})
            runs = {s: [] for s in SYSTEMS}
            for rep in range(args.repeats):
                # rotated per round, so that a burst of load on the machine hits each in turn
                for system in SYSTEMS[rep % 3:] + SYSTEMS[:rep % 3]:
                    if system == "gadei":      # round 0 ran compute first: its rate sizes the job
                        r = run_gadei(args, opts, runs["compute"][0]["steps_per_s"],
                                      base / f"b{b}-n{n}-{rep}")
                    else:
                        r = run_processes(args, opts, hogwild=system == "hogwild")
                    r["load_average"] = os.getloadavg()[0]
                    runs[system].append(r)
                    print(f"  B={b:<3} N={n} {system:<8} {r['samples_per_s']:8.1f} samples/s "
                          f"(load {r['load_average']:.2f})", flush=True)
            row = {"batch": b, "learners": n}
            for system, rs in runs.items():     # the median round, with every round's rate
                rs = sorted(rs, key=lambda r: r["samples_per_s"])
                row[system] = {**rs[(len(rs) - 1) // 2],
                               "samples_per_s_runs": [r["samples_per_s"] for r in rs]}
            rate = {system: row[system]["samples_per_s"] for system in SYSTEMS}
            row["gadei_vs_compute"] = rate["gadei"] / rate["compute"]
            row["gadei_vs_hogwild"] = rate["gadei"] / rate["hogwild"]
            row["hogwild_vs_compute"] = rate["hogwild"] / rate["compute"]
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
