"""Leases: a role slow to start (heavy imports, a loaded machine) is not a missed lease; an
interrupted job does not report committed gradients it never applied."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gadei.probe import Probe

ROOT = Path(__file__).resolve().parents[1]


# A task whose module takes a while to import, as a user's module with heavy imports (or any
# module under a loaded machine) does: each role imports it before its first heartbeat.
if os.environ.get("GADEI_TEST_IMPORT_DELAY"):
    time.sleep(float(os.environ["GADEI_TEST_IMPORT_DELAY"]))


@dataclass
class SlowTask(Probe):
    """The probe, in a module that is slow to import (see GADEI_TEST_IMPORT_DELAY above)."""
    probe_size: int = 16




# ---- a lease shorter than start-up ----------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_slow_start_is_not_a_missed_lease(tmp_path):
    out = tmp_path / "slow"
    p = subprocess.Popen([sys.executable, "-m", "gadei", "train", "--task", "tests.test_leases:SlowTask",
                          "--learners", "1", "--steps", "20", "--lr", "1", "--lease", "3", "--out", str(out),
                          "--job", "rel-slow", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "GADEI_TEST_IMPORT_DELAY": "6"})
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
    log, _ = p.communicate(timeout=120)
    s = json.loads((out / "summary.json").read_text())
    assert s["restarts"] == {"ps": 0, "learners": 0}, log[-2000:]
    assert not s["interrupted"]


# ---- an interrupted job must not report committed gradients it never applied ------------------
@pytest.mark.timeout(300)
def test_interrupt_does_not_lose_committed_gradients(tmp_path):
    from gadei import proc
    from gadei.probe import audit
    from tests.helpers import wait_for_job
    out = tmp_path / "intr"
    p = subprocess.Popen([sys.executable, "-m", "gadei", "train", "--task", "probe", "--learners", "2",
                          "--steps", "10000000", "--lr", "1", "--lease", "600", "--out", str(out),
                          "--job", "rel-intr", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        ps, _ = wait_for_job("rel-intr", timeout=180)
        time.sleep(1.0)
        os.kill(ps, signal.SIGSTOP)          # a PS that is slow to drain (descheduled, swapped)
        time.sleep(3.0)                      # the learners fill their slots: committed
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    finally:
        if proc.alive(ps, 0):
            os.kill(ps, signal.SIGCONT)
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert json.loads((out / "summary.json").read_text())["interrupted"]
    assert audit(out) == []
