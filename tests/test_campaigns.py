"""The chaos and soak campaigns in small (bench/chaos.py, bench/soak.py; docs/reliability.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


# ---- the campaigns, small ---------------------------------------------------------------------
def _bench(module: str, tmp_path: Path, *args, timeout: int) -> dict:
    out = tmp_path / f"{module}.json"
    r = subprocess.run([sys.executable, "-m", f"bench.{module}", "--quick", "--json", str(out), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return result


@pytest.mark.timeout(900)
def test_chaos_quick_has_no_violation(tmp_path):
    """Kills of learners and the PS (ASGD and DOWNPOUR), SIGSTOP past the lease, a killed
    supervisor then --resume: every job audited, nothing left behind."""
    res = _bench("chaos", tmp_path, "--workdir", str(tmp_path / "work"), timeout=850)
    t = res["total"]
    assert t["violations"] == 0, [r.get("violations") for r in res["jobs"]]
    assert t["jobs"] >= 4 and t["kills"] >= 2 and t["kills_supervisor"] == 1
    assert t["committed"] == t["applied"] + t["rejected"]
    assert {r["scenario"] for r in res["jobs"]} >= {"asgd", "downpour", "stop", "crash"}
    stop = next(r for r in res["jobs"] if r["scenario"] == "stop")
    assert stop["stops"] == 1 and stop["replaced_after_s"] >= stop["lease_s"] * 0.9
    assert stop["sigcont_delivered"] is False     # the stopped process was dead (SIGKILLed)


@pytest.mark.timeout(600)
def test_soak_quick_is_steady_and_clean(tmp_path):
    res = _bench("soak", tmp_path, "--seconds", "30", "--workdir", str(tmp_path / "work"), timeout=550)
    assert res["violations"] == []
    assert res["restarts"] == {"ps": 0, "learners": 0}
    assert res["updates_applied"] > 0 and res["committed"] == res["applied"]
    assert res["stop_s"] is not None and res["stop_s"] < 120
