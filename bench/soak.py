"""Soak: many learners oversubscribed on few cores for a long time, with the probe task.

    nice -n 5 python -m bench.soak --learners 16 --seconds 3600 --json docs/bench/soak.json   # documented
    nice -n 5 python -m bench.soak --quick --json /tmp/soak.json                                  # CI: 4 x 60 s

The job (`gadei train --task probe --lr 1`, a huge `--steps`) runs until the deadline, then gets
SIGINT, on which it stops its roles, writes its checkpoint and summary and exits. Checked:

    no hang      the job exits within `--stop-timeout` of the SIGINT, and updates never stall
                 for longer than `--max-stall` seconds once they started (OUT/metrics.jsonl)
    steady rate  updates/s per tenth of the run (min / median / max, and their ratio)
    memory       RSS of the supervisor, the PS and the learners sampled from /proc; growth of
                 the last fifth over the first fifth (after warm-up) must stay under a bound
    leases       no role replaced: restarts == {"ps": 0, "learners": 0} in the summary
    exactly-once gadei.probe.audit(OUT) is empty; no process and no segment is left
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gadei import arena as A
from gadei import ledger as L
from gadei import proc, shm
from bench.leftovers import sweep
from gadei.probe import audit

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def roles(arena: A.Arena) -> dict[str, tuple[int, int]]:
    a = arena
    out = {"ps": (a.job.ps_pid, a.job.ps_start)}
    for i in range(a.layout.learners):
        out[f"learner {i}"] = (a.learner(i).pid, a.learner(i).start)
    return {k: v for k, v in out.items() if v[0] and proc.alive(*v)}


def windows(rows: list[dict], parts: int) -> list[dict]:
    """Updates/s in `parts` equal time windows from the first update to the last row."""
    rows = [r for r in rows if r["updates"] > 0]
    if len(rows) < 2:
        return []
    t0, t1 = rows[0]["t"], rows[-1]["t"]
    out, span = [], (t1 - t0) / parts
    for k in range(parts):
        lo, hi = t0 + k * span, t0 + (k + 1) * span
        inside = [r for r in rows if lo <= r["t"] <= hi]
        if len(inside) >= 2:
            du, dt = inside[-1]["updates"] - inside[0]["updates"], inside[-1]["t"] - inside[0]["t"]
            out.append({"from_s": round(lo, 1), "to_s": round(hi, 1), "updates_per_s": round(du / max(dt, 1e-9), 1)})
    return out


def longest_stall(rows: list[dict]) -> float:
    """Longest time between two rows with the same update count, after the first update."""
    best, since = 0.0, None
    prev = None
    for r in rows:
        if prev is not None and prev["updates"] > 0:
            if r["updates"] == prev["updates"]:
                since = prev["t"] if since is None else since
                best = max(best, r["t"] - since)
            else:
                since = None
        prev = r
    return round(best, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learners", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3600.0, help="how long to run after start-up")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--probe-size", type=int, default=1024)
    p.add_argument("--lease", type=float, default=10.0, help="learner/PS lease: seconds without a "
                   "heartbeat before a role is replaced; it counts from the role's registration "
                   "(start-up has its own bound), so oversubscription alone must never trip it")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--stop-timeout", type=float, default=120.0, help="bound on exit after SIGINT")
    p.add_argument("--max-stall", type=float, default=30.0, help="longest tolerated update stall (s)")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="tolerated RSS growth, last "
                   "fifth over first fifth (fraction, plus 16 MB per process)")
    p.add_argument("--quick", action="store_true", help="CI: 4 learners for 60 s")
    p.add_argument("--workdir")
    p.add_argument("--json")
    args = p.parse_args(argv)
    # A shell starts background jobs (`cmd &` in a script) with SIGINT ignored, and an ignored
    # signal stays ignored across exec: the `gadei train` children could not be stopped with
    # SIGINT. Take the default handler back, so that the children get it too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.quick:
        args.learners, args.seconds, args.sample_every = min(args.learners, 4), min(args.seconds, 60), 2.0

    tag = secrets.token_hex(3)
    job = f"soak-{tag}"
    work = Path(args.workdir or f"/tmp/gadei-soak-{tag}")
    out = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gadei", "train", "--task", "probe", "--lr", "1",
           "--optimizer", args.optimizer, "--learners", str(args.learners),
           "--steps", str(10 ** 9), "--probe-size", str(args.probe_size), "--lease", str(args.lease),
           "--out", str(out), "--job", job, "--no-progress"]
    log = work / "job.log"
    t_spawn = time.monotonic()
    with open(log, "wb") as f:
        popen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    seen: dict[int, int] = {popen.pid: proc.start_time(popen.pid)}
    violations: list[str] = []
    samples: list[dict] = []
    arena = None
    started_s = None
    stop_s = None
    rc = None
    try:
        # 1. start-up: every role registered
        deadline = time.monotonic() + args.start_timeout
        while time.monotonic() < deadline and popen.poll() is None:
            if arena is None:
                names = shm.segments(job)
                if names:
                    try:
                        arena = A.Arena.attach(names[0])
                    except (FileNotFoundError, ValueError):
                        arena = None
            if arena is not None and len(roles(arena)) == 1 + args.learners:
                started_s = time.monotonic() - t_spawn
                break
            time.sleep(0.2)
        if started_s is None:
            violations.append(f"the job did not start {args.learners} learners within "
                              f"{args.start_timeout} s (or ended: exit code {popen.poll()})")
        else:
            print(f"started {args.learners} learners + PS in {started_s:.1f} s; soaking "
                  f"{args.seconds:.0f} s", flush=True)
            # 2. soak: sample RSS of every role
            t_end = time.monotonic() + args.seconds
            while time.monotonic() < t_end and popen.poll() is None:
                rs = roles(arena)
                for pid, st in rs.values():
                    seen.setdefault(pid, st)
                row = {"t": round(time.monotonic() - t_spawn, 1),
                       "supervisor": rss_mb(popen.pid),
                       "ps": rss_mb(rs["ps"][0]) if "ps" in rs else None,
                       "learners": [rss_mb(pid) for k, (pid, _) in sorted(rs.items()) if k != "ps"],
                       "version": arena.job.published}
                samples.append(row)
                time.sleep(min(args.sample_every, max(0.0, t_end - time.monotonic())))
            if popen.poll() is not None:
                violations.append(f"the job ended by itself before the deadline (exit code {popen.returncode})")
        # 3. stop: SIGINT, bounded
        if popen.poll() is None:
            t_int = time.monotonic()
            popen.send_signal(signal.SIGINT)
            try:
                rc = popen.wait(timeout=args.stop_timeout)
                stop_s = round(time.monotonic() - t_int, 1)
            except subprocess.TimeoutExpired:
                violations.append(f"hang: the job did not exit within {args.stop_timeout} s of SIGINT")
        else:
            rc = popen.returncode
    finally:
        if arena is not None:
            arena.close()
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    # 4. nothing left behind
    alive, segs = sweep(seen, lambda: shm.segments(job), 30)
    violations += [f"process left behind: pid {pid}" for pid in alive]
    violations += [f"segment left behind: {s}" for s in segs]
    # 5. the job's own account
    summary, rows = {}, []
    if rc not in (0, None):
        violations.append(f"exit code {rc}; log {log}")
    try:
        summary = json.loads((out / "summary.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        violations += audit(out)
        if summary["restarts"] != {"ps": 0, "learners": 0}:
            violations.append(f"a lease was not honoured: restarts {summary['restarts']} with no kill")
    except Exception as e:
        violations.append(f"no auditable result: {type(e).__name__}: {e}")
    win = windows(rows, 10)
    rates = [w["updates_per_s"] for w in win]
    stall = longest_stall(rows)
    if stall > args.max_stall:
        violations.append(f"updates stalled for {stall} s")
    # memory: first fifth (after the first sample, i.e. after warm-up) vs last fifth
    mem = {}
    if len(samples) >= 5:
        fifth = max(1, len(samples) // 5)
        head, tail_ = samples[1:1 + fifth], samples[-fifth:]

        def mean(rows_, key):
            vals = [r[key] for r in rows_ if r[key] is not None]
            return statistics.mean(vals) if vals else None

        def mean_learners(rows_):
            vals = [v for r in rows_ for v in r["learners"] if v is not None]
            return statistics.mean(vals) if vals else None

        for key, get in (("supervisor", lambda rs: mean(rs, "supervisor")), ("ps", lambda rs: mean(rs, "ps")),
                         ("learner_mean", mean_learners)):
            a, b = get(head), get(tail_)
            if a is None or b is None:
                continue
            mem[key] = {"first_mb": round(a, 1), "last_mb": round(b, 1), "growth_mb": round(b - a, 1)}
            if b > a * (1 + args.max_rss_growth) + 16:
                violations.append(f"RSS of the {key} grew from {a:.0f} MB to {b:.0f} MB")
    led = summary.get("ledger", {})
    result = {
        "config": vars(args), "job": job, "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
        "startup_s": None if started_s is None else round(started_s, 1), "stop_s": stop_s,
        "exit_code": rc, "soak_s": args.seconds,
        "updates_applied": summary.get("updates_applied"),
        "updates_per_s_overall": summary.get("updates_per_s"),
        "updates_per_s_windows": win,
        "updates_per_s_min_median_max": [min(rates), statistics.median(rates), max(rates)] if rates else None,
        "longest_stall_s": stall,
        "restarts": summary.get("restarts"),
        "committed": sum(L.count(e["committed"]) for e in led.values()),
        "applied": sum(L.applied_count(e) for e in led.values()),
        "discarded": sum(len(e["discarded"]) for e in led.values()),
        "rss": mem, "rss_samples": samples,
        "violations": violations,
    }
    print(f"{'window':>14}  updates/s")
    for w in win:
        print(f"{w['from_s']:6.0f}-{w['to_s']:<6.0f} s  {w['updates_per_s']:9.1f}")
    print(f"{'process':>14}  RSS first -> last fifth (MB)")
    for k, m in mem.items():
        print(f"{k:>14}  {m['first_mb']:7.1f} -> {m['last_mb']:7.1f}  ({m['growth_mb']:+.1f})")
    print(f"\n{args.learners} learners on {os.cpu_count()} cores for {args.seconds:.0f} s "
          f"(start-up {result['startup_s']} s, exit {stop_s} s after SIGINT): "
          f"{result['updates_applied']} updates, {result['updates_per_s_overall']}/s overall, "
          f"longest stall {stall} s, restarts {result['restarts']}, "
          f"committed {result['committed']} applied {result['applied']}; violations: {len(violations)}"
          + "".join(f"\n    {v}" for v in violations), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not violations and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    elif violations:
        print(f"job output and log kept in {work}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
