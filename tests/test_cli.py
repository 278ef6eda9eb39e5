"""The `gadei` command as a new user meets it."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from gadei import shm
from gadei.probe import audit
from tests.helpers import gadei_cmd, run_gadei, start_gadei, summary, wait_for_job

pytestmark = pytest.mark.timeout(300)


def test_demo_with_no_arguments(tmp_path):
    r = subprocess.run(gadei_cmd("train"), capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "running the demo" in r.stdout and "audit passed" in r.stdout
    assert audit(tmp_path / "runs" / "demo") == []
    metrics = [json.loads(l) for l in (tmp_path / "runs/demo/metrics.jsonl").read_text().splitlines()]
    assert metrics and {"updates", "updates_per_s", "loss", "staleness"} <= set(metrics[-1])


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "probe", "--momentum", "0.9"], "unknown option --momentum"),
    (["train", "--task", "nosuch"], "unknown task"),
    (["train", "--optimizer", "nosuch"], "unknown optimizer"),
    (["train", "--learners", "0"], "at least 1"),
    (["train", "--task", "probe", "--probe-size", "many"], "cannot read 'many'"),
    (["train", "--task", "probe", "--data-dir", "/tmp"], "reads no data"),
    (["eval", "--checkpoint", "/nonexistent"], "no checkpoint"),
])
def test_bad_input_is_a_clear_error(args, message):
    r = run_gadei(*args, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_inspect_shows_a_running_job_and_clean_keeps_it(tmp_path):
    # a job that outlives the test (it ends by the SIGINT below, however fast the PS runs)
    # ASGD: the learners pin the weight buffer they compute on (zero-copy pull), which inspect shows
    p = start_gadei("train", "--task", "probe", "--learners", 2, "--steps", 10**9, "--optimizer", "asgd",
                    "--lr", 1, "--out", tmp_path / "run", "--job", "inspect-cli", "--no-progress")
    try:
        wait_for_job("inspect-cli", timeout=300)
        deadline = time.monotonic() + 300
        while True:             # until both learners have pulled once (and so hold a pin from then on)
            jobs = json.loads(run_gadei("inspect", "inspect-cli", "--json", timeout=60).stdout)
            if all(l["pinned_buffer"] is not None for l in jobs[0]["learners"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(jobs) == 1 and jobs[0]["job"] == "inspect-cli" and jobs[0]["ps"]["alive"]
        assert [l["learner"] for l in jobs[0]["learners"]] == [0, 1]
        assert {s["state"] for l in jobs[0]["learners"] for s in l["slots"]} <= {"FREE", "WRITING", "READY"}
        assert jobs[0]["zero_copy"] and len(jobs[0]["weight_buffers"]) == 4      # learners + 2
        assert all(l["pinned_buffer"] in range(4) for l in jobs[0]["learners"])
        assert any(m is not None for m in jobs[0]["weight_buffers"])             # the published one
        table = run_gadei("inspect", timeout=60).stdout
        assert "inspect-cli" in table and "learner" in table and "weight buffers" in table
        live = shm.segments("inspect-cli")
        cleaned = run_gadei("clean", timeout=60).stdout
        # it may remove another xdist worker's stale segment; never the live job's
        assert re.search(r"^\d+ stale segment\(s\) removed$", cleaned, re.M), cleaned
        assert live and shm.segments("inspect-cli") == live and not any(n in cleaned for n in live)
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    assert summary(tmp_path / "run")["interrupted"]
    assert run_gadei("inspect", "inspect-cli", timeout=60).stdout.strip() == "no running gadei jobs"


def test_eval_and_python_m(tmp_path):
    out = tmp_path / "e"
    r = subprocess.run([sys.executable, "-m", "gadei", "train", "--task", "probe", "--learners", "1",
                        "--steps", "30", "--lr", "1", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "30 updates applied" in r.stdout
    r = run_gadei("eval", "--checkpoint", out, "--split", "train")
    assert r.returncode == 0 and json.loads(r.stdout)["w_finite"] == 1.0
    r = run_gadei("eval", "--checkpoint", out, "--split", "test")    # the probe has no data
    assert r.returncode != 0 and "has no split 'test'" in r.stderr and "'train'" in r.stderr, r.stderr
    # weights trained with other task options are refused with what to do, not half used
    r = run_gadei("eval", "--checkpoint", out, "--split", "train", "--probe-size", "10")
    assert r.returncode != 0 and "do not fit the model" in r.stderr and "of another size: w" in r.stderr, r.stderr
