"""Running real jobs from tests: the CLI in a subprocess, killing its roles, auditing."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

from gadei import arena as A
from gadei import shm
from qa_tasks import plain


def gadei_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "gadei", *map(str, args)]


def run_gadei(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(gadei_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def start_gadei(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(gadei_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def job_segments(job: str) -> list[str]:
    """The segments of job `job` and, under MPI, of its nodes' arenas (`<job>-node<k>`). The name
    must match exactly: another xdist worker's job may start with it."""
    return [n for n in shm.segments() if re.fullmatch(rf"{re.escape(job)}(-node\d+)?", shm.job_of(n) or "")]


def job_pids(job: str) -> tuple[int, list[int]] | None:
    """(PS pid, learner pids) of the running job `job` (under MPI: of one of its nodes)."""
    for name in job_segments(job):
        try:
            a = A.Arena.attach(name)
        except (FileNotFoundError, ValueError):
            continue
        try:
            ps = a.job.ps_pid
            learners = [a.learner(i).pid for i in range(a.layout.learners)]
            return ps, learners
        finally:
            a.close()
    return None


def wait_for_job(job: str, timeout=60) -> tuple[int, list[int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = job_pids(job)
        if found and found[0] and all(found[1]):
            return found
        time.sleep(0.05)
    raise TimeoutError(f"job {job} did not start within {timeout} s")


def kill(pid: int) -> bool:
    """SIGKILL `pid` if it is a live process (not a zombie awaiting its reaper)."""
    from gadei import proc
    if not proc.alive(pid, 0):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def chaos(p: subprocess.Popen, job: str, kills: int, rng, ps_share: float = 0.35,
          gap=(0.2, 1.0)) -> int:
    """SIGKILL random learners and the PS of a running job until `kills` hit or it ends."""
    done = 0
    while done < kills and p.poll() is None:
        found = job_pids(job)
        if not found or not found[0] or not all(found[1]):
            time.sleep(0.05)      # starting, or a role is being replaced
            continue
        time.sleep(rng.uniform(*gap))
        ps, learners = found
        done += kill(ps if rng.random() < ps_share else rng.choice(learners))
    return done


def train_under_chaos(args: list, job: str, kills: int, rng, **chaos_args) -> tuple[int, dict]:
    """Run `gadei <args> --job job`, an unbounded job, SIGKILLing its roles `kills` times, then
    stop it with SIGINT (a clean stop: drained, checkpointed); (kills made, summary). The job
    outlasts the kills by construction, however slow the machine. Fails if the job itself did
    not end well."""
    p = start_gadei(*args, "--job", job)
    try:
        made = chaos(p, job, kills, rng, **chaos_args)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    out = Path(args[args.index("--out") + 1])
    return made, summary(out)


def summary(out: Path) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


def plain_train(task, steps: int, lr: float = 5e-3):
    """`steps` Adam steps of `task` in this process (no PS), seed 0, no evaluation:
    (losses, model)."""
    model, record = plain.train(task, steps=steps, lr=lr, eval_every=0, splits=(), log=lambda line: None)
    return record["losses"], model


# hypothesis settings of the fuzzing tests: deterministic, no example database, no deadline
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def small_layout(learners=2, n=8, rule="sgd") -> A.Layout:
    """The layout of a one-parameter model, for tests of the arena itself."""
    return A.Layout(params=(("w", (n,)),), state=(), rule=rule, hyper=(("lr", 1.0),), learners=learners)
