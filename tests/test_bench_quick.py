"""The benchmarks' quick modes run and their output parses (the full runs are in docs/)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(600)


def run(module: str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", module, "--quick", *args], capture_output=True,
                       text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_ps_apply_quick(tmp_path):
    run("bench.ps_apply", "--rules", "sgd,adam", "--json", tmp_path / "a.json")
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert {r["rule"] for r in rows} == {"sgd", "adam"}
    assert all(r["updates_per_s"] > 0 and r["ps_median_s"] > 0 and 0 < r["efficiency"] for r in rows)


def test_optimizers_quick(tmp_path):
    run("bench.optimizers", "--json", tmp_path / "o.json", "--md", tmp_path / "o.md",
        "--plot", tmp_path / "o.png")
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert [(r["optimizer"], r["learners"]) for r in rows] == [("adam", 1), ("adam", 2),
                                                                ("easgd", 1), ("easgd", 2)]
    assert all(r["samples_per_s"] > 0 and r["curve"] for r in rows)
    assert (tmp_path / "o.png").stat().st_size > 1000 and "| adam | 2 |" in (tmp_path / "o.md").read_text()


def test_scaling_quick(tmp_path):
    run("bench.scaling", "--json", tmp_path / "s.json")
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["learners"] for r in rows] == [1, 2]
    assert all(set(r["time_split"]["learners"]) == {str(i) for i in range(r["learners"])} for r in rows)


def test_lra_speed_quick(tmp_path):
    run("bench.lra_speed", "--json", tmp_path / "l.json", "--png", tmp_path / "l.png")
    out = json.loads((tmp_path / "l.json").read_text())
    assert {(r["model"], r["length"]) for r in out["results"]} == {
        (m, n) for m in ("transformer", "fourier 1:0.25") for n in (128, 256)}
    # the shortened model allocates less in a step at every length (1 full-length layer of 3)
    assert all(0 < r["step_ratio"] < 0.8 and r["cpu_speedup"] > 0 for r in out["ratios"])
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_asr_layerskip_quick(tmp_path):
    run("bench.asr_layerskip", "--json", tmp_path / "a.json")
    out = json.loads((tmp_path / "a.json").read_text())
    plain, *skipping = out["rows"]
    assert plain["threshold"] is None and plain["skipped_fraction"] == 0 and plain["speedup"] == 1
    assert [r["threshold"] for r in skipping] == [0.5, 0.8, 0.9, 0.95, 0.99]
    assert all(0 <= r["skipped_fraction"] <= 0.5 and r["cpu_ms_per_utt"] > 0 for r in out["rows"])
    assert out["train_log"][-1]["step"] == 100


def test_small_batch_quick(tmp_path):
    run("bench.small_batch", "--json", tmp_path / "b.json")
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["batch"], r["learners"]) for r in rows] == [(4, 2)]
    for r in rows:
        assert all(r[s]["samples_per_s"] > 0 for s in ("compute", "gadei", "hogwild"))
        assert r["gadei"]["updates_applied"] >= 8 and 0 <= r["gadei"]["ps_busy"] <= 1
        assert abs(sum(r["gadei"]["learner_split"].values()) - 1) < 1e-6
