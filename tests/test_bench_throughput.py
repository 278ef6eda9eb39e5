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


def check(what: str, ok: bool, got) -> None:
    """One place for every check: say what was compared and what came back."""
    assert ok, f"{what}: got {got!r}"


@pytest.mark.timeout(300)
def test_quick_run_writes_sane_records(tmp_path):
    out = tmp_path / "throughput.json"
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "bench.ps_throughput", "--quick",
                           "--systems", ",".join(PEERS), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    check("exit status (stdout/stderr tail follows)", proc.returncode == 0,
          (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    records = json.loads(out.read_text())
    check("records is a list with one record per peer", isinstance(records, list)
          and sorted(r["system"] for r in records) == sorted(PEERS), records)
    for r in records:
        for key, kind in FIELDS.items():
            value = r.get(key)
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int)
                                              and not isinstance(value, bool))
            check(f"{r.get('system')}: field {key} of type {kind.__name__}", ok, value)
        name = r["system"]
        check(f"{name}: exchanges/s positive and finite",
              r["exchanges_per_s_total"] > 0 and math.isfinite(r["exchanges_per_s_total"]),
              r["exchanges_per_s_total"])
        check(f"{name}: GB/s and floor ratio positive", r["gb_per_s"] > 0 and r["floor_ratio"] > 0,
              (r["gb_per_s"], r["floor_ratio"]))
        check(f"{name}: bandwidth positive", r["bandwidth_gb_per_s"] > 0, r["bandwidth_gb_per_s"])
        check(f"{name}: gb_per_s = exchanges/s x 20 P bytes",
              math.isclose(r["gb_per_s"], r["exchanges_per_s_total"] * 20 * r["params"] / 1e9,
                           rel_tol=1e-9), r["gb_per_s"])
        check(f"{name}: learners as asked (--quick: 2)", r["learners"] == 2, r["learners"])
        check(f"{name}: config saved", r["config"].get("quick") is True, r["config"])
        if name == "hogwild":
            check("hogwild: lost_fraction in [0, 1]", 0.0 <= r["lost_fraction"] <= 1.0,
                  r["lost_fraction"])
        else:
            check(f"{name}: loses nothing (lost_fraction == 0)", r["lost_fraction"] == 0.0,
                  r["lost_fraction"])
            check(f"{name}: applied == pushed", r["applied_total"] == r["pushed_total"],
                  (r["applied_total"], r["pushed_total"]))


def test_unknown_system_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "bench.ps_throughput", "--systems", "nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    check("exit status 2 with the known systems named", proc.returncode == 2
          and "mpi_ps" in proc.stderr, (proc.returncode, proc.stderr[-500:]))


def test_exchange_task_gradient_is_the_constant():
    torch = pytest.importorskip("torch")
    from bench.exchange_task import Exchange
    task = Exchange(params=7, grad_value=2.0)
    model = task.build_model()
    batch = next(iter(task.batches(0, 1, 0)))
    for _ in range(3):
        task.loss(model, batch).backward()
    check("w.grad after 3 backward passes = 3 x the constant",
          torch.equal(model.w.grad, torch.full((7,), 6.0)), model.w.grad)
    check("the constant is not modified by accumulation",
          torch.equal(task._g, torch.full((7,), 2.0)), task._g)


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
    check("exit status (stdout/stderr tail follows)", proc.returncode == 0,
          (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    [r] = json.loads(out.read_text())
    check("gadei: exchanges/s positive", r["exchanges_per_s_total"] > 0, r["exchanges_per_s_total"])
    check("gadei: lost_fraction == 0 (ledger: applied == committed)", r["lost_fraction"] == 0.0,
          (r["applied_total"], r["pushed_total"]))
    check("gadei: applied read off the weights == applied in the ledger",
          r["applied_from_weights"] == r["applied_total"],
          (r["applied_from_weights"], r["applied_total"]))
