"""What an attack on the running system found (docs/reliability.md, "Second round"): each test
reproduces one finding. Those about /dev/shm run in a private mount namespace with a small
tmpfs on /dev/shm (as root), never on the machine's own."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_gadei, start_gadei, wait_for_job

ROOT = Path(__file__).resolve().parents[1]
UNSHARE = shutil.which("unshare")


def _namespaces_work() -> str | None:
    """None if a private mount namespace with its own /dev/shm can be made here, else why not."""
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=1M tmpfs /dev/shm"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"no private mount namespace here: {r.stderr.strip()}"


def probe(out, steps, *more) -> list:
    return ["train", "--task", "probe", "--learners", 2, "--steps", steps, "--lr", 1, "--out", out,
            "--no-progress", *more]


needs_namespaces = pytest.mark.skipif(_namespaces_work() is not None, reason=str(_namespaces_work()))


def in_private_shm(script: str, size: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a shell script in a new mount namespace whose /dev/shm is a fresh tmpfs of `size`
    (gone, with everything in it, when the script ends)."""
    body = f"mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm || exit 99\n" + textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PY": sys.executable}
    return subprocess.run([UNSHARE, "--mount", "--propagation", "private", "bash", "-c", body],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@needs_namespaces
@pytest.mark.timeout(300)
def test_a_small_dev_shm_is_a_clear_error_and_leaves_nothing(tmp_path):
    """Finding 4: a 16 MiB /dev/shm and a job that needs more. Before: SIGBUS (exit 135), no
    message, the segment left behind. Now: exit 2, how much is needed and how to get it."""
    r = in_private_shm(f"""
        "$PY" -m gadei train --task probe --probe-size 2000000 --steps 4 --out {tmp_path}/small --no-progress
        echo "exit=$?"
        echo "left=$(ls /dev/shm | wc -l)"
    """, "16M", timeout=240)
    assert "exit=2" in r.stdout, r.stdout + r.stderr
    assert "left=0" in r.stdout
    assert "cannot hold this job's arena" in r.stderr and "MiB" in r.stderr and "--shm-size" in r.stderr


@needs_namespaces
@pytest.mark.timeout(400)
def test_clean_from_another_pid_namespace_leaves_a_live_arena(tmp_path):
    """Finding 3: `gadei clean` in another PID namespace sharing /dev/shm judged the live job's
    supervisor dead by its pid and unlinked the arena. Now liveness is the creator's lock on the
    segment; and a segment of another format is left alone."""
    out = tmp_path / "live"
    r = in_private_shm(f"""
        printf 'GADEIPS\\001\\143\\000\\000\\000' > /dev/shm/gadei_other_0123456789abcdef0123456789abcdef
        "$PY" -m gadei train --task probe --steps 1000000000 --out {out} --no-progress 2> {tmp_path}/job.err &
        job=$!
        for i in $(seq 1200); do ls /dev/shm | grep -q '^gadei_live' && break; sleep 0.2; done
        ls /dev/shm | grep -q '^gadei_live' || {{ echo "no arena"; kill -9 $job; exit 1; }}
        unshare --pid --fork --mount-proc "$PY" -m gadei clean
        echo "after-clean=$(ls /dev/shm | grep -c '^gadei_live')"
        echo "other=$(ls /dev/shm | grep -c '^gadei_other')"
        kill -INT $job; wait $job
        echo "job-exit=$?"
        echo "left=$(ls /dev/shm | grep -c '^gadei_live')"
    """, "64M", timeout=360)
    assert "after-clean=1" in r.stdout, r.stdout + r.stderr
    assert "other=1" in r.stdout
    assert "job-exit=0" in r.stdout and "left=0" in r.stdout, r.stdout + (tmp_path / "job.err").read_text()


# ---- locks: the lock folder, symlinks, one job per output folder ------------------------------
def test_a_lock_folder_of_another_user_or_writable_by_others_is_refused(tmp_path):
    """Finding 1: without XDG_RUNTIME_DIR the lock folder was created with exist_ok and its
    owner never checked; a symlink planted at the lock's name made the job overwrite its target."""
    from gadei import locks
    from gadei.job import JobError
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(JobError, match="belongs to uid 65534"):
        locks.private_dir(theirs)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(JobError, match="writable by others"):
        locks.private_dir(open_dir)
    mine = locks.private_dir(tmp_path / "mine")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (mine / "job.lock").symlink_to(victim)
    with pytest.raises(JobError, match="symlink"):
        locks.hold(mine / "job.lock", "busy")
    assert victim.read_text() == "precious"


@pytest.mark.timeout(120)
def test_the_cli_refuses_a_planted_lock_folder(tmp_path):
    run = tmp_path / "run"
    (run / "gadei-locks").mkdir(parents=True)
    os.chown(run / "gadei-locks", 65534, 65534)
    r = run_gadei(*probe(tmp_path / "out", 20), env={"XDG_RUNTIME_DIR": str(run)}, timeout=100)
    assert r.returncode == 2 and "refusing the lock folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_two_jobs_cannot_write_one_output_folder(tmp_path):
    """Finding 8: the lock was the job's name, so a second job with another --job (or another
    XDG_RUNTIME_DIR) wrote the same folder. Now the output folder itself is locked."""
    out = tmp_path / "shared"
    first = start_gadei(*probe(out, 10**9, "--job", "first-writer"))   # ends by the SIGINT below
    try:
        wait_for_job("first-writer")
        r = run_gadei(*probe(out, 20, "--job", "second-writer"), env={"XDG_RUNTIME_DIR": str(tmp_path)},
                      timeout=200)
        assert r.returncode == 2 and "another job writes" in r.stderr, r.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert json.loads((out / "summary.json").read_text())["job"] == "first-writer"


@pytest.mark.timeout(200)
def test_what_a_job_writes_is_private(tmp_path):
    """Finding 11: checkpoints, summaries and logs were created 0644 while the arena is 0600."""
    out = tmp_path / "private"
    r = run_gadei(*probe(out, 20), timeout=180)
    assert r.returncode == 0, r.stderr
    paths = [out, out / "summary.json", out / "metrics.jsonl", out / "checkpoint", out / "logs",
             *(out / "logs").iterdir()]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


# ---- restart loops, failures that end a job ------------------------------------------------------
@pytest.mark.timeout(600)
def test_a_deterministic_failure_ends_the_job_with_its_error_checkpoint_and_summary(tmp_path):
    """Findings 5 and 7: a loss that raises from step 3 on was restarted forever (31 restarts in
    60 s, no message); a job ended by such an error left no checkpoint and no summary."""
    from gadei import checkpoint
    from gadei import ledger as L
    out = tmp_path / "fails"
    r = run_gadei("train", "--task", "tests.tasks:FailsFrom", "--learners", 2, "--steps", 400, "--out", out,
                  "--no-progress", timeout=500)
    assert r.returncode == 2, r.stderr
    assert "learner 1 failed 3 times in a row without making progress" in r.stderr
    assert "RuntimeError: deterministic failure at step 3" in r.stderr       # its own last words
    summary = json.loads((out / "summary.json").read_text())
    # the first incarnation got to step 3 (progress), the next three did not
    assert "learner 1 failed 3 times" in summary["error"] and summary["restarts"]["learners"] == 3
    assert checkpoint.load(out)["meta"]["final"] is False
    assert all(not L.audit(e) for e in summary["ledger"].values()), summary["ledger"]


@pytest.mark.timeout(600)
def test_a_task_that_writes_its_weights_is_told_to_copy(tmp_path):
    """The zero-copy pull maps the published weights read-only, so a task that writes its
    parameters in place crashes its learners (SIGSEGV, not a silent change of the PS's weights);
    the job's error says why and what to do, and with --weight-buffers 3 the same job trains."""
    r = run_gadei("train", "--task", "tests.tasks:WritesWeights", "--learners", 2, "--steps", 40,
                  "--out", tmp_path / "zero-copy", "--no-progress", timeout=500)
    assert r.returncode == 2, r.stderr
    assert "failed 3 times in a row" in r.stderr and "--weight-buffers 3" in r.stderr, r.stderr
    r = run_gadei("train", "--task", "tests.tasks:WritesWeights", "--learners", 2, "--steps", 40,
                  "--out", tmp_path / "copying", "--weight-buffers", 3, "--no-progress", timeout=500)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(400)
def test_a_step_longer_than_the_lease_is_not_a_missed_lease(tmp_path):
    """Finding 5: learners beat only between steps, so a step longer than --lease was killed
    every time: 0 updates, forever. Now a thread beats while the step runs."""
    out = tmp_path / "slow"
    r = run_gadei("train", "--task", "tests.tasks:SlowSteps", "--learners", 1, "--steps", 3, "--lease", 3,
                  "--out", out, "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates_applied"] == 3 and summary["restarts"] == {"ps": 0, "learners": 0}


@pytest.mark.parametrize("lease", ["0", "-1"])
def test_a_lease_that_is_not_positive_is_refused(tmp_path, lease):
    r = run_gadei(*probe(tmp_path / "x", 10, "--lease", lease), timeout=100)
    assert r.returncode == 2 and "--lease must be a positive number of seconds" in r.stderr


@pytest.mark.timeout(300)
def test_an_easgd_learner_recovers_from_a_non_finite_state(tmp_path):
    """Finding 10: EASGD never re-pulls, so one NaN stayed in a learner's weights and 98 of its
    next 100 pushes were rejected. Now it starts again from the centre, and says so."""
    import gadei
    s = gadei.train("tests.tasks:Poisoned", optimizer="easgd", lr=0.05, tau=4, learners=2, steps=400,
                    out=tmp_path / "easgd", progress=False)
    rejected = sum(len(e["rejected"]) for e in s["ledger"].values())
    committed = sum(b - a + 1 for e in s["ledger"].values() for a, b in e["committed"])
    assert committed == 100 and rejected <= 30, (rejected, committed)     # 1 window in 5 is poisoned
    assert s["final_metrics"]["accuracy"] > 0.8
    logs = "".join(p.read_text() for p in (tmp_path / "easgd" / "logs").glob("learner-*.log"))
    assert "it starts again from the centre" in logs


@pytest.mark.timeout(200)
def test_an_evaluate_that_raises_still_leaves_the_summary(tmp_path):
    """Finding 11: a task's evaluate() raising left no summary.json, only a traceback."""
    out = tmp_path / "badeval"
    r = run_gadei("train", "--task", "tests.tasks:BadEvaluate", "--steps", 20, "--out", out, "--no-progress",
                  timeout=180)
    assert r.returncode == 2 and "evaluate() raised KeyError" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates_applied"] == 20 and "evaluate() raised" in summary["error"]


def test_a_checkpoint_without_a_ledger_is_a_clear_error(tmp_path):
    """Finding 11: a checkpoint with a valid checksum but no ledger ended `--resume` in a bare
    KeyError."""
    import numpy as np
    from gadei import checkpoint
    checkpoint.save(tmp_path / "ck", {"w": np.zeros(1024, np.float32)}, {},
                    {"optimizer": "sgd", "learners": 2, "version": 3})
    r = run_gadei(*probe(tmp_path / "out", 10, "--resume", tmp_path / "ck"), timeout=100)
    assert r.returncode == 2 and "holds no readable ledger" in r.stderr and "Traceback" not in r.stderr
