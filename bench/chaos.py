"""Chaos campaign: real `gadei train --task probe` jobs under kill -9, SIGSTOP and whole-job
crashes, each one audited for exactly-once, leftover processes and leftover shared memory.

    nice -n 5 python -m bench.chaos --kills 100 --json docs/bench/chaos.json     # documented
    nice -n 5 python -m bench.chaos --quick --json /tmp/chaos.json                   # CI (small)
    nice -n 5 python -m bench.chaos --quick --mpi                                    # + MPI jobs

Scenarios, run in rotation until `--kills` kills were delivered (or `--jobs` jobs ran):

    asgd      SGD lr 1, 2-4 learners: SIGKILL random learners and the PS at random moments
    downpour  DOWNPOUR (DELTA slots), n_push 2: the same kills
    easgd     EASGD (DELTA slots, elastic differences): the same kills
    stop      SIGSTOP a learner (or the PS) past its lease, SIGCONT later: the supervisor must
              SIGKILL and replace it; the stopped process must be dead, the job must pass
    crash     SIGKILL the supervisor (the `gadei train` process) after a checkpoint: every role
              must stop and the arena must go; then `--resume` finishes the job exactly once
    mpi-ps    (--mpi) `mpiexec gadei train --backend mpi`: SIGKILL the node PS subprocess
    mpi-rank  (--mpi) SIGKILL a learner rank: MPICH ends the job; `--resume` finishes it

After every job: `gadei.probe.audit(out)` (the ledger and, where the weights are exact, the
weights), every process the job ever had is dead, and `gadei.shm.segments(job)` is empty.

Kills are SIGKILL of a role whose (pid, start time) is registered in the job's arena, so a
reused pid is never hit. The lease of the `stop` jobs is at least twice the start-up time
measured in the first job: a margin that scales with the machine's load, so that on a busy
machine only the stopped role misses its lease (the lease counts from a role's registration).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import signal
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


# ---- one job -------------------------------------------------------------------------------
class Job:
    """A `gadei train` process and everything it spawns, watched through its arena."""

    def __init__(self, args: list[str], out: Path, job: str, prefix: list[str] | None = None,
                 env: dict | None = None):
        self.out, self.job = out, job
        out.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = [*(prefix or []), sys.executable, "-m", "gadei", "train", *map(str, args),
                    "--out", str(out), "--job", job, "--no-progress"]
        self.log = out.parent / f"{out.name}.log"
        self.t0 = time.monotonic()
        with open(self.log, "wb") as f:
            self.popen = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=ROOT,
                                          env={**os.environ, **(env or {})})
        self.seen: dict[int, tuple[int, str]] = {}      # pid -> (start time, role)
        self._note(self.popen.pid, "launcher")
        self.arena: A.Arena | None = None
        self.finishing = False      # a learner has finished its quota: the job is ending
        self.started_s: float | None = None             # spawn -> every role registered

    def _note(self, pid: int, role: str) -> None:
        if pid > 0 and pid not in self.seen:
            st = proc.start_time(pid)
            if st:
                self.seen[pid] = (st, role)

    def segments(self) -> list[str]:
        """This job's arenas (under MPI, one per node: `<job>-node<k>`)."""
        return [n for n in shm.segments() if (shm.job_of(n) or "") == self.job
                or (shm.job_of(n) or "").startswith(self.job + "-node")]

    def running(self) -> bool:
        return self.popen.poll() is None

    def roles(self) -> list[tuple[str, int, int]]:
        """Live registered roles: [(role, pid, start time)]; records every pid it sees."""
        if self.arena is None:
            names = self.segments()
            if not names:
                return []
            try:
                self.arena = A.Arena.attach(names[0])
            except (FileNotFoundError, ValueError):   # being created or already gone
                return []
        a, out = self.arena, []
        self.finishing = any(a.learner(i).done for i in range(a.layout.learners))
        entries = [("ps", a.job.ps_pid, a.job.ps_start)]
        entries += [(f"learner {i}", a.learner(i).pid, a.learner(i).start)
                    for i in range(a.layout.learners)]
        for role, pid, st in entries:
            if pid and st and proc.alive(pid, st):
                self.seen.setdefault(pid, (st, role))
                out.append((role, pid, st))
        for pid in proc.descendants(self.popen.pid):
            self._note(pid, "child")
        return out

    def wait_running(self, timeout: float) -> bool:
        """Until the PS and every learner registered (True), or the job ended / timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            r = self.roles()
            if self.arena is not None and len(r) == 1 + self.arena.layout.learners:
                if self.started_s is None:
                    self.started_s = time.monotonic() - self.t0
                return True
            time.sleep(0.05)
        return False

    def finish(self, timeout: float) -> int | None:
        """Wait for the job's end (watching its pids); None if it hung past `timeout`."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            self.roles()
            time.sleep(0.2)
        if self.running():
            return None
        return self.popen.returncode

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def leftovers(self, grace: float = 30.0) -> tuple[list[str], list[str]]:
        """(processes still alive, segments still in /dev/shm) after a grace period; both are
        then removed, so that a failing job does not poison the next one."""
        self.close()
        alive, segs = sweep({pid: st for pid, (st, _) in self.seen.items()}, self.segments, grace)
        if self.running():
            self.popen.kill()
        self.popen.wait()
        return [f"pid {pid} ({self.seen[pid][1]})" for pid in alive], segs




def signal_role(pid: int, st: int, sig: int) -> bool:
    """Send `sig` to a role only if it is still the process that registered (pid + start)."""
    if not proc.alive(pid, st):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def ledger_counts(summary: dict) -> dict:
    led = summary["ledger"]
    return {"committed": sum(L.count(e["committed"]) for e in led.values()),
            "applied": sum(L.applied_count(e) for e in led.values()),
            "discarded": sum(len(e["discarded"]) for e in led.values()),
            "rejected": sum(L.rejected_count(e) for e in led.values())}


def check(job: Job, rc: int | None, record: dict, expect_rc: int | None = 0) -> dict:
    """Audit a finished job into `record` (violations, ledger counts, restarts)."""
    v = record.setdefault("violations", [])
    if rc is None:
        v.append("hang: the job did not end within its bound")
    elif expect_rc is not None and rc != expect_rc:
        v.append(f"exit code {rc} (log {job.log}): " + tail(job.log))
    procs, segs = job.leftovers()
    v += [f"process left behind: {p}" for p in procs]
    v += [f"segment left behind: {s}" for s in segs]
    if expect_rc == 0 and rc == 0:
        try:
            s = json.loads((job.out / "summary.json").read_text())
            record.update(ledger_counts(s))
            record["restarts"] = s["restarts"]
            record["updates_applied"] = s["updates_applied"]
            v += audit(job.out)
        except Exception as e:     # a missing or unreadable summary is itself a violation
            v.append(f"no auditable result: {type(e).__name__}: {e}")
    record["wall_s"] = round(time.monotonic() - job.t0, 1)
    return record


def tail(path: Path, n: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


# ---- scenarios -----------------------------------------------------------------------------
def kill_roles(job: Job, kills: int, rng: random.Random, ps_share: float, gap, record: dict,
               stop_when=None) -> None:
    """SIGKILL random live roles (the PS with probability ps_share) until `kills` landed."""
    record.setdefault("kills_ps", 0)
    record.setdefault("kills_learner", 0)
    while record["kills_ps"] + record["kills_learner"] < kills and job.running():
        if stop_when and stop_when():
            return
        time.sleep(rng.uniform(*gap))
        live = job.roles()
        if job.finishing:
            return      # kills from here on would hit roles with no work left: not a test
        if not live:
            continue
        ps = [r for r in live if r[0] == "ps"]
        learners = [r for r in live if r[0] != "ps"]
        if ps_share >= 1.0 and not ps:
            continue            # PS-only kills: wait for the PS to be back
        target = ps[0] if ps and (rng.random() < ps_share or not learners) else rng.choice(learners or ps)
        if signal_role(target[1], target[2], signal.SIGKILL):
            record["kills_ps" if target[0] == "ps" else "kills_learner"] += 1


def probe_args(optimizer: str, learners: int, steps: int, *more) -> list:
    args = ["--task", "probe", "--learners", learners, "--steps", steps]
    if optimizer == "sgd":
        args += ["--lr", 1]
    elif optimizer == "downpour":
        args += ["--optimizer", "downpour", "--n-push", 2, "--n-fetch", 3, "--lr", 1]
    elif optimizer == "easgd":
        args += ["--optimizer", "easgd", "--tau", 2, "--lr", 0.5]
    return args + list(more)


def run_kills(ctx, n: int, optimizer: str) -> dict:
    rng, a = ctx.rng, ctx.args
    learners = rng.randint(2, 4)
    n_push = 2 if optimizer == "downpour" else 1
    steps = learners * n_push * (a.steps_per_learner // n_push)  # DOWNPOUR: weights stay exact
    rec = {"scenario": optimizer if optimizer != "sgd" else "asgd", "learners": learners, "steps": steps}
    job = ctx.job(n, probe_args(optimizer, learners, steps))
    if job.wait_running(ctx.start_timeout):
        ctx.startup(job.started_s)
        kill_roles(job, a.kills_per_job, rng, 0.3, (0.2, 1.5), rec)
    return check(job, job.finish(ctx.job_timeout), rec)


def run_stop(ctx, n: int) -> dict:
    """SIGSTOP a role past its lease; the supervisor must kill (SIGKILL) and replace it."""
    rng, a = ctx.rng, ctx.args
    lease = ctx.lease()
    learners = rng.randint(2, 3)
    target_ps = ctx.stop_jobs % 2 == 1 and not a.quick      # alternate: a learner, then the PS
    ctx.stop_jobs += 1
    rec = {"scenario": "stop", "learners": learners, "lease_s": lease, "stopped": None,
           "kills_ps": 0, "kills_learner": 0, "stops": 0}
    # 4x the steps, and the learner that has done the fewest: a learner that registered first
    # runs while the others still start up, and one stopped after its quota would have nothing
    # left for a replacement to do (the supervisor reaps it as finished, and rightly)
    steps = learners * a.steps_per_learner * 4
    job = ctx.job(n, probe_args("sgd", learners, steps, "--lease", lease))
    if job.wait_running(ctx.start_timeout):
        ctx.startup(job.started_s)
        time.sleep(rng.uniform(0.2, 1.0))
        live = job.roles()
        pick = [r for r in live if (r[0] == "ps") == target_ps]
        if pick and not target_ps:
            done = lambda r: job.arena.ctl.load(job.arena.lw(int(r[0].split()[1]), A.L_STEP))  # noqa: E731
            pick = [min(pick, key=done)]
        if pick:
            role, pid, st = rng.choice(pick)
            if signal_role(pid, st, signal.SIGSTOP):
                rec["stops"] = 1
                t0 = time.monotonic()
                rec["stopped"] = role
                # the supervisor polls every 50 ms; a stopped process dies only by SIGKILL
                while proc.alive(pid, st) and time.monotonic() - t0 < lease + 60:
                    job.roles()
                    time.sleep(0.1)
                rec["replaced_after_s"] = round(time.monotonic() - t0, 2)
                if proc.alive(pid, st):
                    rec.setdefault("violations", []).append(
                        f"stopped {role} (pid {pid}) was not replaced within lease + 60 s")
                    signal_role(pid, st, signal.SIGCONT)
                else:
                    # it is dead: a SIGCONT now must find nothing (pid + start time checked)
                    rec["sigcont_delivered"] = signal_role(pid, st, signal.SIGCONT)
    rc = job.finish(ctx.job_timeout)
    check(job, rc, rec)
    if rec["stops"] and rc == 0:
        r = rec.get("restarts", {})
        key = "ps" if rec["stopped"] == "ps" else "learners"
        if r.get(key, 0) < 1:
            rec["violations"].append(f"the stopped {rec['stopped']} was never replaced (restarts {r})")
    return rec


def run_crash(ctx, n: int) -> dict:
    """SIGKILL the supervisor after a checkpoint (with a few role kills first); --resume."""
    rng, a = ctx.rng, ctx.args
    learners = rng.randint(2, 3)
    steps = learners * a.steps_per_learner * 2
    rec = {"scenario": "crash", "learners": learners, "steps": steps, "kills_ps": 0,
           "kills_learner": 0, "kills_supervisor": 0}
    first = ctx.job(n, probe_args("sgd", learners, steps, "--checkpoint-every", 500))
    ck = first.out / "checkpoint"
    if first.wait_running(ctx.start_timeout):
        ctx.startup(first.started_s)
        kill_roles(first, min(2, a.kills_per_job), rng, 0.5, (0.2, 1.0), rec,
                   stop_when=lambda: ck.exists() and rng.random() < 0.3)
        deadline = time.monotonic() + ctx.job_timeout
        while not ck.exists() and first.running() and time.monotonic() < deadline:
            first.roles()
            time.sleep(0.1)
        time.sleep(rng.uniform(0.1, 1.0))
        if first.running():
            first.roles()
            first.popen.kill()
            rec["kills_supervisor"] = 1
    first.popen.wait()
    rec["violations"] = []
    procs, segs = first.leftovers(grace=60)
    rec["violations"] += [f"after the supervisor's death, process left: {p}" for p in procs]
    rec["violations"] += [f"after the supervisor's death, segment left: {s}" for s in segs]
    if not ck.exists():
        rec["violations"].append("no checkpoint was written before the crash")
        rec["wall_s"] = round(time.monotonic() - first.t0, 1)
        return rec
    resumed = ctx.job(n, probe_args("sgd", learners, steps, "--resume", first.out), suffix="r")
    check(resumed, resumed.finish(ctx.job_timeout), rec)
    if rec.get("updates_applied") is not None and rec["updates_applied"] != steps:
        rec["violations"].append(f"resumed job applied {rec['updates_applied']} updates, not {steps}")
    rec["wall_s"] = round(time.monotonic() - first.t0, 1)
    return rec


def run_mpi(ctx, n: int, what: str) -> dict:
    """Under mpiexec (one node, 3 ranks: leader + 2 learners): kill the node PS subprocess
    (recovered from shared memory), or a learner rank (MPICH ends the job; --resume)."""
    rng, a = ctx.rng, ctx.args
    steps = 2 * a.steps_per_learner
    prefix = [shutil.which("mpiexec"), "-n", "3"]
    rec = {"scenario": f"mpi-{what}", "learners": 2, "steps": steps, "kills_ps": 0, "kills_learner": 0}
    more = ["--backend", "mpi", "--checkpoint-every", 200]
    job = ctx.job(n, probe_args("sgd", 2, steps, *more), prefix=prefix)
    if not job.wait_running(ctx.start_timeout):
        return check(job, job.finish(ctx.job_timeout), rec)
    ctx.startup(job.started_s)
    if what == "ps":
        kill_roles(job, 2, rng, 1.0, (0.3, 1.5), rec)
        return check(job, job.finish(ctx.job_timeout), rec)
    ck = job.out / "checkpoint"
    deadline = time.monotonic() + ctx.job_timeout
    while not ck.exists() and job.running() and time.monotonic() < deadline:
        job.roles()
        time.sleep(0.1)
    kill_roles(job, 1, rng, 0.0, (0.1, 0.5), rec)
    rc = job.finish(120)
    rec["violations"] = []
    if rc is None:
        rec["violations"].append("hang: the MPI job did not end within 120 s of a rank's death")
    procs, segs = job.leftovers(grace=60)
    rec["violations"] += [f"process left: {p}" for p in procs] + [f"segment left: {s}" for s in segs]
    if rc == 0:     # it finished before the kill landed: audit it as it is
        return check(job, 0, rec)
    if not ck.exists():
        rec["violations"].append("no checkpoint to resume from")
        return rec
    resumed = ctx.job(n, probe_args("sgd", 2, steps, *more[:2], "--resume", job.out), prefix=prefix, suffix="r")
    return check(resumed, resumed.finish(ctx.job_timeout), rec)


# ---- the campaign --------------------------------------------------------------------------
class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.tag = secrets.token_hex(3)
        self.work = Path(args.workdir or f"/tmp/gadei-chaos-{self.tag}")
        self.start_timeout = args.start_timeout
        self.job_timeout = args.job_timeout
        self.startups: list[float] = []
        self.stop_jobs = 0

    def job(self, n: int, args: list, prefix=None, suffix: str = "") -> Job:
        name = f"chaos-{self.tag}-{n}{suffix}"
        return Job(args, self.work / name, name, prefix=prefix)

    def startup(self, s: float | None) -> None:
        if s is not None:
            self.startups.append(s)

    def lease(self) -> float:
        """The stop jobs' lease: the requested one, raised to twice the slowest start-up seen
        (a measure of how loaded the machine is)."""
        need = 2 * max(self.startups, default=0.0) + 2
        return float(max(self.args.lease, math.ceil(need)))


def scenarios(args) -> list[str]:
    base = ["asgd", "downpour", "stop", "asgd", "easgd", "crash"]
    if args.mpi:
        base += ["mpi-ps", "mpi-rank"]
    return base


def run_one(ctx: Campaign, n: int, name: str) -> dict:
    if name in ("asgd", "downpour", "easgd"):
        return run_kills(ctx, n, {"asgd": "sgd"}.get(name, name))
    if name == "stop":
        return run_stop(ctx, n)
    if name == "crash":
        return run_crash(ctx, n)
    return run_mpi(ctx, n, name.split("-")[1])


def kills_of(rec: dict) -> int:
    return rec.get("kills_ps", 0) + rec.get("kills_learner", 0) + rec.get("kills_supervisor", 0)


def table(records: list[dict]) -> str:
    head = ("job", "scenario", "L", "kills ps/lrn/sup", "stops", "restarts ps/lrn", "committed",
            "applied", "discarded", "violations", "wall s")
    rows = [head]
    for n, r in enumerate(records):
        rs = r.get("restarts", {})
        rows.append((str(n), r["scenario"], str(r.get("learners", "")),
                     f"{r.get('kills_ps', 0)}/{r.get('kills_learner', 0)}/{r.get('kills_supervisor', 0)}",
                     str(r.get("stops", 0)), f"{rs.get('ps', '-')}/{rs.get('learners', '-')}",
                     str(r.get("committed", "-")), str(r.get("applied", "-")), str(r.get("discarded", "-")),
                     str(len(r.get("violations", []))), str(r.get("wall_s", ""))))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=100, help="stop after this many kills in all")
    p.add_argument("--jobs", type=int, default=200, help="and after at most this many jobs")
    p.add_argument("--kills-per-job", type=int, default=8)
    p.add_argument("--steps-per-learner", type=int, default=3000, help="long enough that the "
                   "kills land while every learner still has work (the probe runs ~700 updates/s)")
    p.add_argument("--lease", type=float, default=3.0, help="lease of the stop jobs (raised to "
                   "twice the measured start-up)")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--job-timeout", type=float, default=600.0, help="bound on one job: past it, a hang")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpi", action="store_true", help="add jobs under mpiexec --backend mpi")
    p.add_argument("--only", help="comma-separated scenarios to rotate through instead of all "
                   "(asgd, downpour, easgd, stop, crash, mpi-ps, mpi-rank)")
    p.add_argument("--quick", action="store_true", help="CI: one job of each kind, small")
    p.add_argument("--workdir", help="where jobs write (default /tmp/gadei-chaos-<tag>, removed "
                   "when nothing failed)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    # A shell starts background jobs (`cmd &` in a script) with SIGINT ignored, and an ignored
    # signal stays ignored across exec: the `gadei train` children could not be stopped with
    # SIGINT. Take the default handler back, so that the children get it too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.mpi and shutil.which("mpiexec") is None:
        p.error("--mpi needs mpiexec (pip install mpi4py mpich)")
    if args.quick:
        args.kills_per_job = min(args.kills_per_job, 3)
        args.steps_per_learner = min(args.steps_per_learner, 1500)
    ctx = Campaign(args)
    names = ["asgd", "downpour", "stop", "crash"] + (["mpi-ps"] if args.mpi else []) if args.quick \
        else scenarios(args)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - set(scenarios(argparse.Namespace(mpi=True)))
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
        if any(n.startswith("mpi") for n in names) and not args.mpi:
            p.error("the mpi scenarios need --mpi")
    records, t0 = [], time.monotonic()
    n = 0
    try:
        while n < args.jobs:
            name = names[n % len(names)]
            if args.quick and n >= len(names):
                break
            if not args.quick and sum(map(kills_of, records)) >= args.kills:
                break
            rec = run_one(ctx, n, name)
            records.append(rec)
            print(f"[{time.monotonic() - t0:7.1f} s] job {n} {name}: kills {kills_of(rec)}, "
                  f"violations {len(rec.get('violations', []))}"
                  + "".join(f"\n    {v}" for v in rec.get("violations", [])), flush=True)
            n += 1
    except KeyboardInterrupt:
        print("interrupted; reporting the jobs so far", flush=True)
    total = {
        "jobs": len(records),
        "kills": sum(map(kills_of, records)),
        "kills_ps": sum(r.get("kills_ps", 0) for r in records),
        "kills_learner": sum(r.get("kills_learner", 0) for r in records),
        "kills_supervisor": sum(r.get("kills_supervisor", 0) for r in records),
        "stops": sum(r.get("stops", 0) for r in records),
        # roles the supervisors replaced (each kill of a role with work left causes one)
        "restarts": sum(sum(r.get("restarts", {}).values()) for r in records),
        "committed": sum(r.get("committed", 0) for r in records),
        "applied": sum(r.get("applied", 0) for r in records),
        "discarded": sum(r.get("discarded", 0) for r in records),
        "rejected": sum(r.get("rejected", 0) for r in records),
        "violations": sum(len(r.get("violations", [])) for r in records),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(table(records))
    print(f"\n{total['jobs']} jobs, {total['kills']} kills survived ({total['kills_ps']} PS, "
          f"{total['kills_learner']} learner, {total['kills_supervisor']} supervisor + resume), "
          f"{total['stops']} SIGSTOPs past the lease, {total['restarts']} roles replaced; gradients committed {total['committed']}, "
          f"applied {total['applied']}, discarded {total['discarded']}, rejected {total['rejected']}; "
          f"violations: {total['violations']}; {total['wall_s']} s")
    result = {"config": vars(args), "tag": ctx.tag, "startup_s": ctx.startups,
              "load_avg_at_end": os.getloadavg(), "cpus": os.cpu_count(),
              "total": total, "jobs": records}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if total["violations"] == 0 and not args.workdir:
        shutil.rmtree(ctx.work, ignore_errors=True)
    elif total["violations"]:
        print(f"job outputs and logs kept in {ctx.work}")
    return 1 if total["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
