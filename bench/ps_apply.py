"""How fast each server-side update rule applies an update, next to the memory-bandwidth floor.

Launch (from the repository root; the full run takes a few minutes and ~3 GB of memory)::

    nice -n 10 python -m bench.ps_apply --json results/ps_apply.json
    python -m bench.ps_apply --quick                 # CI: P = 1M only, a few seconds

For P float32 weights and every rule in ``algorithms.RULES`` (default hyper-parameters):

1. allocate weights, gradient and state twice, as the double-buffered PS does, and apply the
   rule out of place, A -> B then B -> A, ``reps`` times after one warm-up update;
2. report the median time per update and its rate (updates/s);
3. the floor: ``rule.bytes_per_weight * P`` bytes (e.g. SGD 12: read w, g; write w) over the
   memory bandwidth measured in the same run by ``memory_bandwidth()`` (a large ``np.copyto``,
   bytes read + written over time);
4. efficiency = floor time / measured time (1.0 = at the hardware limit).

``measure_rule(rule, P, reps)`` and ``memory_bandwidth()`` are importable for other benchmarks.
The "PS" columns (``measure_ps``) time the real parameter server's whole update on an arena in
shared memory: pick the slot, apply the rule out of place into the unpublished buffer, write
the ledger, publish, free the slot. ``--compare-torch`` adds, for reference, the same
rule applied in place (A -> A) and ``torch.optim``'s single-tensor step (in place, one whole-vector
op after another). Out of place costs more than in place even at the floor: more streams (the
kernels write them with streaming stores, so no output line is read first). ``measure_rule``
uses plain numpy arrays, which sit at one offset within their pages; the arena staggers its
vectors (Note [staggered regions] in gadei/arena.py), so the PS columns can beat the bare rule's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import algorithms
import algorithms.rule

TORCH_OPTIM = {  # rule name -> (torch.optim class, extra kwargs) for --compare-torch
    "sgd": (torch.optim.SGD, {}), "msgd": (torch.optim.SGD, {"momentum": 0.9}),
    "adagrad": (torch.optim.Adagrad, {}), "adadelta": (torch.optim.Adadelta, {}),
    "rmsprop": (torch.optim.RMSprop, {}), "adam": (torch.optim.Adam, {}),
    "adamax": (torch.optim.Adamax, {}),
}


# what every timing here reads: the wall clock, or with --cpu-time this process's CPU clock
clock = time.perf_counter


def memory_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes per second read + written by a large ``np.copyto`` (the best of `reps`)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)            # touched: no page faults inside the timing
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        np.copyto(dst, src)
        best = min(best, clock() - t0)
    return 2 * nbytes / best


def _buffers(rule, P: int, rng: np.random.Generator):
    w = rng.random(P, dtype=np.float32) - 0.5
    state = rule.init_state(P)
    return w, state


def measure_rule(rule, P: int, reps: int, in_place: bool = False) -> dict:
    """Median seconds per out-of-place update of `rule` on `P` weights, over `reps` updates
    (A -> B, B -> A, as the double-buffered PS does; `in_place`: A -> A instead)."""
    rng = np.random.default_rng(0)
    g = rng.random(P, dtype=np.float32) - 0.5
    (wa, sa) = _buffers(rule, P, rng)
    (wb, sb) = (wa, sa) if in_place else _buffers(rule, P, rng)
    rule.apply(wa, g, sa, out_weights=wb, out_state=sb)     # warm-up: state leaves zero
    rule.apply(wb, g, sb, out_weights=wa, out_state=sa)
    times = []
    for i in range(reps):
        src, dst = ((wa, sa), (wb, sb)) if i % 2 == 0 else ((wb, sb), (wa, sa))
        t0 = clock()
        rule.apply(src[0], g, src[1], out_weights=dst[0], out_state=dst[1])
        times.append(clock() - t0)
    med = statistics.median(times)
    return {"rule": rule.name, "P": P, "reps": reps, "median_s": med, "min_s": min(times),
            "updates_per_s": 1.0 / med, "bytes_per_weight": rule.bytes_per_weight}


def measure_ps(name: str, P: int, reps: int) -> dict:
    """Median seconds per update of the real PS (`Server.step`: pick, compute into the
    unpublished buffer, ledger, publish, release) on an arena of `P` weights, with this
    process committing a ready-made gradient into a slot before each update."""
    from gadei import arena as A
    from gadei.ledger import published_empty
    from gadei.server import Server
    rule = algorithms.get(name)
    state = rule.init_state(P)
    layout = A.Layout(params=(("w", (P,)),), state=tuple((k, v.dtype.name, v.shape) for k, v in state.items()),
                      rule=rule.name, hyper=tuple(sorted(rule.hyper().items())), learners=1, slots=2)
    arena = A.Arena.create("bench-ps-apply", layout, {"config": {}})
    try:
        rng = np.random.default_rng(0)
        arena.weights(0)[:] = rng.random(P, dtype=np.float32) - 0.5
        for k, v in state.items():
            arena.state(0)[k][:] = v
        arena.write_ledger(0, published_empty(1))
        for s in range(2):
            arena.slot(0, s)[:] = rng.random(P, dtype=np.float32) - 0.5
        server = Server(arena, rule, warn=lambda m: None)
        times = []
        for k in range(reps + 2):
            arena.ctl.store(arena.sw(0, k % 2, A.S_CTRL), A.ctrl(A.READY, k))   # a commit
            t0 = clock()
            assert server.step()
            if k >= 2:                 # two warm-up updates
                times.append(clock() - t0)
        med = statistics.median(times)
        return {"median_s": med, "updates_per_s": 1.0 / med}
    finally:
        server = None
        arena.unlink()
        arena.close()


def measure_torch_optim(name: str, P: int, reps: int) -> float:
    """Median seconds per ``torch.optim`` step (single-tensor, in place) for the same rule."""
    cls, kw = TORCH_OPTIM[name]
    p = torch.nn.Parameter(torch.rand(P) - 0.5)
    p.grad = torch.rand(P) - 0.5
    opt = cls([p], foreach=False, **kw)
    opt.step()
    times = []
    for _ in range(reps):
        t0 = clock()
        opt.step()
        times.append(clock() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="P = 1M only, few reps (CI)")
    ap.add_argument("--sizes", default="1000000,10000000,50000000", help="comma-separated P")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--rules", default=",".join(sorted(algorithms.RULES)))
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--no-ps", action="store_true", help="skip the rows through the real PS")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU clock, the bandwidth too: on a shared "
                         "machine the time other processes hold the core is left out (their "
                         "memory traffic is not)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    sizes = [1_000_000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    reps = 5 if args.quick else args.reps
    torch.set_num_threads(args.threads)

    bandwidth = memory_bandwidth(reps=3 if args.quick else 5)
    print(f"memory bandwidth (np.copyto, read+write): {bandwidth / 1e9:.1f} GB/s; "
          f"torch threads {torch.get_num_threads()}, kernels {algorithms.rule.kernels.path()}, "
          f"{'CPU' if args.cpu_time else 'wall'} clock; load average {os.getloadavg()[0]:.2f}")
    print("floor = bytes_per_weight * P / bandwidth; eff = floor / measured (> 1: the vectors "
          "fit in cache)")
    head = (f"{'rule':<9} {'P':>10} {'B/w':>4} {'ms/upd':>9} {'upd/s':>9} {'floor ms':>9} {'eff':>6}"
            + ("" if args.no_ps else f" {'PS ms':>8} {'PS eff':>6}"))
    print(head + ("  in-place ms  torch.optim ms" if args.compare_torch else ""))
    rows = []
    for P in sizes:
        for name in args.rules.split(","):
            r = measure_rule(algorithms.get(name), P, reps)
            r["floor_s"] = r["bytes_per_weight"] * P / bandwidth
            r["efficiency"] = r["floor_s"] / r["median_s"]
            line = (f"{name:<9} {P:>10} {r['bytes_per_weight']:>4} {r['median_s'] * 1e3:>9.2f} "
                    f"{r['updates_per_s']:>9.1f} {r['floor_s'] * 1e3:>9.2f} {r['efficiency']:>6.2f}")
            if not args.no_ps:
                ps = measure_ps(name, P, reps)
                r["ps_median_s"], r["ps_efficiency"] = ps["median_s"], r["floor_s"] / ps["median_s"]
                line += f" {ps['median_s'] * 1e3:>8.2f} {r['ps_efficiency']:>6.2f}"
            if args.compare_torch:
                r["in_place_s"] = measure_rule(algorithms.get(name), P, reps, True)["median_s"]
                r["torch_optim_s"] = measure_torch_optim(name, P, reps)
                line += f"  {r['in_place_s'] * 1e3:>11.2f}  {r['torch_optim_s'] * 1e3:>14.2f}"
            print(line, flush=True)
            rows.append(r)
    # measured again at the end: if it moved, other load on the machine moved the floor too
    bandwidth_end = memory_bandwidth(reps=3 if args.quick else 5)
    print(f"memory bandwidth at the end: {bandwidth_end / 1e9:.1f} GB/s; load average "
          f"{os.getloadavg()[0]:.2f}")
    result = {"config": {**vars(args), "sizes": sizes, "reps": reps,
                         "kernels": algorithms.rule.kernels.path(), "torch": torch.__version__,
                         "numpy": np.__version__, "python": sys.version.split()[0],
                         "machine": platform.machine(), "cpus": os.cpu_count(),
                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
              "bandwidth_Bps": bandwidth, "bandwidth_end_Bps": bandwidth_end,
              "load_average": os.getloadavg(), "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
