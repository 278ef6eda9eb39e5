"""What an attack on the running system found (docs/reliability.md, "Second round"): each test
reproduces one finding. Those about /dev/shm run in a private mount namespace with a small
tmpfs on /dev/shm (as root), never on the machine's own."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNSHARE = shutil.which("unshare")


def _namespaces_work() -> str | None:
    """None if a private mount namespace with its own /dev/shm can be made here, else why not."""
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=1M tmpfs /dev/shm"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"no private mount namespace here: {r.stderr.strip()}"


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
        for i in $(seq 600); do ls /dev/shm | grep -q '^gadei_live' && break; sleep 0.2; done
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
