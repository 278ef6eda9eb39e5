"""The exchange-throughput benchmark runs end to end on the peers and writes sane records."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("mpi_ps", "gloo", "hogwild", "queue")
FIELDS = {"system": str, "params": int, "learners": int, "exchanges_per_s_total": float,
          "lost_fraction": float, "gb_per_s": float, "floor_ratio": float,
          "bandwidth_gb_per_s": float, "config": dict}


@pytest.mark.timeout(300)
def test_quick_run_writes_sane_records(tmp_path):
    out = tmp_path / "throughput.json"
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "bench.ps_throughput", "--quick",
                           "--systems", ",".join(PEERS), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = json.loads(out.read_text())
    assert sorted(r["system"] for r in records) == sorted(PEERS)
    for r in records:
        for key, kind in FIELDS.items():
            value = r.get(key)
            assert isinstance(value, kind) or (kind is float and type(value) is int), (r["system"], key, value)
        name = r["system"]
        assert 0 < r["exchanges_per_s_total"] < math.inf, name
        assert r["gb_per_s"] > 0 and r["floor_ratio"] > 0 and r["bandwidth_gb_per_s"] > 0, name
        # gb_per_s counts 20 P bytes an exchange
        assert math.isclose(r["gb_per_s"], r["exchanges_per_s_total"] * 20 * r["params"] / 1e9, rel_tol=1e-9)
        assert r["learners"] == 2 and r["config"].get("quick") is True, name     # --quick: 2 learners
        if name == "hogwild":
            assert 0.0 <= r["lost_fraction"] <= 1.0
        else:
            assert r["lost_fraction"] == 0.0 and r["applied_total"] == r["pushed_total"], name


def test_unknown_system_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "bench.ps_throughput", "--systems", "nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "mpi_ps" in proc.stderr, proc.stderr[-500:]   # names the known ones


def test_exchange_task_gradient_is_the_constant():
    torch = pytest.importorskip("torch")
    from bench.exchange_task import Exchange
    task = Exchange(params=7, grad_value=2.0)
    model = task.build_model()
    batch = next(iter(task.batches(0, 1, 0)))
    for _ in range(3):
        task.loss(model, batch).backward()
    assert torch.equal(model.w.grad, torch.full((7,), 6.0))     # 3 backward passes: 3 x the constant
    assert torch.equal(task._g, torch.full((7,), 2.0))          # the constant itself is untouched


@pytest.mark.timeout(400)
@pytest.mark.parametrize("system", ["gadei", "gadei_mpi"])
def test_gadei_row_is_exactly_once(tmp_path, system):
    """gadei through the benchmark: every committed update applied, and the weights agree."""
    out = tmp_path / "gadei.json"
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench.ps_throughput", "--quick",
                           "--systems", system, "--json", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [r] = json.loads(out.read_text())
    assert r["exchanges_per_s_total"] > 0
    assert r["lost_fraction"] == 0.0, (r["applied_total"], r["pushed_total"])   # ledger: applied == committed
    assert r["applied_from_weights"] == r["applied_total"]                      # the weights agree
