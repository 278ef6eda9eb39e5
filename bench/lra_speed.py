"""Training speed and peak memory of the Transformer and the Fourier Transformer vs sequence length.

For each (model, length) a fresh subprocess builds the model (qa_tasks/listops/fourier.py, the `lra`
task's classifier) and a batch of random ListOps token ids of exactly that length, runs warm-up
steps, then times `--steps` training steps (forward, backward, Adam step). Memory is the
process's peak resident set size (getrusage ru_maxrss), taken once before the first step
("base": interpreter, torch, model, optimizer, batch) and once after the last ("peak"); the
difference is the working memory of training (activations, attention, gradients, Adam state).
RSS includes what the allocator and the thread pools keep, so two tensor-level measures follow
the timed steps, free of allocator effects:
- "step": one more training step under the profiler (profile_memory), whose allocation and free
  events give the peak of tensor bytes allocated during the step above those live before it
  (activations, gradients, temporaries; the CPU counterpart of CUDA's max_memory_allocated
  minus the weights, Adam state and batch, which are the same for both models);
- "saved": one more forward pass counting the bytes of the tensors autograd saves for backward
  (each storage once, the weights included): the activation memory itself.
A fresh process per configuration keeps one run's peak out of the next one's. Time is reported
both as wall time and as the process's CPU time (time.process_time): on a shared machine the
wall time of a single-threaded run includes waiting for a core, its CPU time does not.

    python -m bench.lra_speed                      # lengths 512, 1024, 2048, 4096
    python -m bench.lra_speed --quick              # seconds: short lengths, tiny model (CI)
    python -m bench.lra_speed --fourier 1,2:0.5 --fourier 1:0.25 --json runs/lra_speed/results.json

`--fourier LAYERS:RATIO` (repeatable; default 1:0.25, the `lra` task's default) is a Fourier
Transformer that shortens the sequence by RATIO before each of LAYERS; every variant is compared
with the same Transformer.

Writes the table to stdout, and the JSON (results plus the resolved configuration) and the PNG
(steps/s and working memory vs length; matplotlib Agg) to the paths given (default
runs/lra_speed/). Threads: torch.set_num_threads(--threads), 1 by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def worker(cfg: dict) -> dict:
    """One (model, length) measurement in this process; returns the numbers."""
    import torch
    import torch.nn.functional as F

    from qa_tasks.listops import dataset as listops
    from qa_tasks.listops.fourier import ModelConfig, build

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    T, B = cfg["length"], cfg["batch"]
    variant = cfg["variant"]                                       # None for the Transformer
    mcfg = ModelConfig(vocab_size=len(listops.VOCAB), n_classes=listops.N_CLASSES, max_len=T,
                       d_model=cfg["d_model"], n_heads=cfg["n_heads"], n_layers=cfg["n_layers"],
                       d_ff=cfg["d_ff"], fourier_layers=tuple(variant["layers"]) if variant else (),
                       fourier_ratio=variant["ratio"] if variant else 0.5)
    model = build(mcfg, "fourier" if variant else "transformer")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ids = torch.randint(2, len(listops.VOCAB), (B, T))             # (B, T) no padding
    labels = torch.randint(0, listops.N_CLASSES, (B,))             # (B,)

    def step():
        loss = F.cross_entropy(model(ids), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    for _ in range(cfg["warmup"]):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(cfg["steps"]):
        step()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # what autograd keeps for backward: the activation memory without allocator effects
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(ids), labels)
    return {"model": cfg["model"], "length": T, "steps_per_s": cfg["steps"] / seconds,
            "s_per_step": seconds / cfg["steps"], "cpu_s_per_step": cpu_seconds / cfg["steps"],
            "base_mib": base_kb / 1024, "peak_mib": peak_kb / 1024, "work_mib": (peak_kb - base_kb) / 1024,
            "saved_mib": sum(storages.values()) / 2**20, "step_mib": step_peak_bytes(step) / 2**20}


def step_peak_bytes(step) -> int:
    """Peak of tensor bytes allocated by `step()` above those live when it starts, from the
    profiler's raw allocation (+nbytes) and free (-nbytes) events in time order. (torch has no
    max_memory_allocated for the CPU; the profiler's own memory timeline export is deprecated.)"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    if not events:
        raise RuntimeError("the profiler recorded no memory events: this torch build does not report "
                           "CPU allocations (the bench expects torch 2.13 as pinned)")
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def parse_variant(text: str) -> dict:
    """"1,2:0.5" -> {"name": "fourier 1,2:0.5", "layers": [1, 2], "ratio": 0.5}."""
    try:
        layers, ratio = text.split(":")
        return {"name": f"fourier {text}", "layers": [int(s) for s in layers.split(",")], "ratio": float(ratio)}
    except ValueError:
        raise SystemExit(f"--fourier {text!r}: expected LAYERS:RATIO, e.g. 1,2:0.5") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048,4096", help="comma-separated sequence lengths")
    p.add_argument("--quick", action="store_true", help="lengths 128,256, a tiny model, 1 step: seconds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--fourier", action="append", help="LAYERS:RATIO, repeatable (default 1:0.25)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="runs/lra_speed/results.json")
    p.add_argument("--png", default="runs/lra_speed/speed.png")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement, JSON config
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.quick:
        args.lengths, args.steps, args.warmup = "128,256", 1, 1
        args.d_model, args.n_heads, args.n_layers, args.d_ff = 32, 2, 3, 64
    variants = [parse_variant(v) for v in (args.fourier or ["1:0.25"])]
    config = {
        "lengths": [int(s) for s in args.lengths.split(",")], "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "d_model": args.d_model,
        "n_heads": args.n_heads, "n_layers": args.n_layers, "d_ff": args.d_ff,
        "fourier": variants, "threads": args.threads, "quick": args.quick,
        "optimizer": "adam",
        "memory": "peak RSS (ru_maxrss) of a fresh process per configuration; step: the profiler's "
                  "allocation events of one step; saved: autograd's saved tensors",
        "torch": __import__("torch").__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    models = [("transformer", None)] + [(v["name"], v) for v in variants]

    results = []
    print(f"{'model':<18} {'length':>7} {'steps/s':>9} {'s/step':>8} {'cpu s/step':>10} {'base MiB':>9} "
          f"{'peak MiB':>9} {'work MiB':>9} {'step MiB':>9} {'saved MiB':>10}")
    for length in config["lengths"]:
        for model, variant in models:
            cfg = {**config, "model": model, "variant": variant, "length": length}
            run = subprocess.run([sys.executable, "-m", "bench.lra_speed", "--worker", json.dumps(cfg)],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"measuring {model} at length {length} failed "
                                   f"(exit {run.returncode}):\n{run.stderr[-2000:]}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{model:<18} {length:>7} {r['steps_per_s']:>9.3f} {r['s_per_step']:>8.3f} "
                  f"{r['cpu_s_per_step']:>10.3f} {r['base_mib']:>9.0f} {r['peak_mib']:>9.0f} "
                  f"{r['work_mib']:>9.0f} {r['step_mib']:>9.1f} {r['saved_mib']:>10.1f}", flush=True)

    print("\nFourier vs Transformer (speed-up: Transformer time / Fourier time; memory: Fourier / Transformer)")
    print(f"{'model':<18} {'length':>7} {'speed-up':>9} {'cpu speed-up':>13} {'peak ratio':>11} {'work ratio':>11} "
          f"{'step ratio':>11} {'saved ratio':>12}")
    ratios = []
    for model, _ in models[1:]:
        for length in config["lengths"]:
            t, f = (next(r for r in results if r["model"] == m and r["length"] == length)
                    for m in ("transformer", model))
            ratio = {"model": model, "length": length, "speedup": f["steps_per_s"] / t["steps_per_s"],
                     "cpu_speedup": t["cpu_s_per_step"] / f["cpu_s_per_step"],
                     "peak_ratio": f["peak_mib"] / t["peak_mib"],
                     "work_ratio": f["work_mib"] / max(t["work_mib"], 1e-9),
                     "step_ratio": f["step_mib"] / t["step_mib"],
                     "saved_ratio": f["saved_mib"] / t["saved_mib"]}
            ratios.append(ratio)
            print(f"{model:<18} {length:>7} {ratio['speedup']:>8.2f}x {ratio['cpu_speedup']:>12.2f}x "
                  f"{ratio['peak_ratio']:>11.2f} {ratio['work_ratio']:>11.2f} {ratio['step_ratio']:>11.2f} "
                  f"{ratio['saved_ratio']:>12.2f}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "results": results, "ratios": ratios}, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for model, _ in models:
        rs = [r for r in results if r["model"] == model]
        ax1.plot([r["length"] for r in rs], [1 / r["cpu_s_per_step"] for r in rs], "o-", label=model)
        ax2.plot([r["length"] for r in rs], [r["step_mib"] for r in rs], "o-", label=model)
    for ax, label in ((ax1, "training steps per CPU second"), (ax2, "peak tensor MiB allocated in a step")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"d_model {config['d_model']}, {config['n_layers']} layers, batch {config['batch']}, "
                 f"{config['threads']} thread(s), Adam")
    fig.tight_layout()
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
