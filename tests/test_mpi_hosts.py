"""The MPI backend across real hosts: network namespaces as hosts, TCP between them
(bench/hosts.py), a host lost mid-run, and --resume on the survivor (docs/mpi.md, "Several
hosts"). Needs root; skips with the reason where namespaces cannot be made."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.hosts import PREFIX, Hosts, sweep_stale, unavailable
from gadei import checkpoint, proc
from gadei.probe import audit

ROOT = Path(__file__).resolve().parents[1]
WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"namespaces as hosts: {WHY}")

PROBE = 262144          # float32 per probe gradient: 1 MiB, so a sync is far above MPI's chatter


def env(**extra) -> dict:
    """The environment of mpiexec and, through hydra, of every rank on every host."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GADEI_")}
    return {**base, "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in extra.items()}}


def train(*args) -> list[str]:
    return [sys.executable, "-m", "gadei", "train", "--backend", "mpi", "--task", "probe",
            "--probe-size", PROBE, "--lr", "1", "--no-progress", *args]


def assert_clean_audit(out: Path) -> None:
    problems = audit(out)
    assert not problems, problems


def gadei_segments(hosts: Hosts, host: int) -> list[str]:
    return [n for n in hosts.shm(host) if n.startswith("gadei_")]


@pytest.fixture
def make_hosts():
    made = []

    def make(n: int) -> Hosts:
        made.append(Hosts(n).start())
        return made[-1]
    yield make
    for h in made:
        h.close()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("nodes, learners, optimizer, cross", [
    (2, 2, "sgd", "downpour"),        # local ASGD, DOWNPOUR across hosts: the weights audit
    (3, 3, "downpour", "downpour"),   # local and cross-node DOWNPOUR: the weights audit
    (3, 3, "easgd", "easgd"),         # local and cross-node EASGD: the ledger audit
])
def test_probe_audit_across_hosts(make_hosts, tmp_path, nodes, learners, optimizer, cross):
    """Every host a node of its own (MPICH's COMM_TYPE_SHARED split, by hostname), syncs over
    TCP between the hosts' addresses, exactly once."""
    hosts = make_hosts(nodes)
    out = tmp_path / "run"
    steps = nodes * learners * 4 * 10           # divides by learners * n_push: DOWNPOUR's audit
    before = [hosts.link_bytes(h) for h in range(nodes)]
    r = hosts.run(hosts.mpiexec(learners + 1, *train("--optimizer", optimizer, "--cross-node", cross,
                                                     "--steps", steps, "--sync-every", 10, "--out", out)),
                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["mpi"]["nodes"] == nodes and s["mpi"]["learners_per_node"] == [learners] * nodes
    assert s["mpi"]["cross_node"] == cross
    assert sorted(s["ledger"], key=int) == [str(g) for g in range(nodes * learners)]
    assert checkpoint.load(out)["meta"]["mpi_nodes"] == [
        list(range(n * learners, (n + 1) * learners)) for n in range(nodes)]
    assert_clean_audit(out)
    # every other node's final sync (1 MiB up, 1 MiB down at least) crossed its host's eth0
    for h in range(1, nodes):
        rx, tx = (a - b for a, b in zip(hosts.link_bytes(h), before[h]))
        assert rx >= 4 * PROBE and tx >= 4 * PROBE, (h, rx, tx)
    for h in range(nodes):      # a clean end leaves nothing, MPICH's own segments included
        assert hosts.processes(h) == [], f"host{h} keeps processes after the job"
        assert hosts.shm(h) == [], f"host{h}'s /dev/shm"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["kill", "link"])
def test_lost_host_stops_job_then_resume_on_survivor(make_hosts, tmp_path, how):
    """Host 1 lost after the job has checkpointed: the job ends with an error naming host1, host
    0 is left with no gadei segment and no process, and --resume of the last checkpoint on host
    0 alone (the same four learners) finishes exactly once."""
    hosts = make_hosts(2)
    out, timeout = tmp_path / "lost", 10
    # 10**6 updates: the job cannot end before the host is lost, whatever the machine's load
    p = hosts.popen(hosts.mpiexec(3, *train("--steps", 10 ** 6, "--sync-every", 10,
                                            "--checkpoint-every", 40, "--out", out)),
                    cwd=ROOT, env=env(GADEI_MPI_TIMEOUT=timeout), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    try:
        while not _checkpointed(out, p):        # progress across both hosts, then the loss
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        hosts.lose(1, how)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    text = stdout + stderr
    assert p.returncode != 0, text
    if how == "kill":   # the connections close: hydra ends the job at once, the launcher names the host
        assert "connection to host1 lost" in text, text
    else:   # no packet gets through: one of the global PS's bounded waits on node 1 fires (its
            # silence, the answer it does not take, or a tensor stuck mid-transfer), names host1
            # and aborts the job
        assert re.search(r"MPI job ends on world rank 0 \(node 0\): .*world rank 3 on host1", text), text
        assert "MPI_Abort" in text, text
    # host 0: its PS subprocesses removed the arenas of their dead leaders and exited
    deadline = time.monotonic() + 60
    while (hosts.processes(0) or gadei_segments(hosts, 0)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hosts.processes(0) == [], "host0 keeps processes after the job ended"
    assert gadei_segments(hosts, 0) == [], hosts.shm(0)

    ck = checkpoint.load(out)["meta"]
    assert ck["mpi_nodes"] == [[0, 1], [2, 3]] and ck["version"] >= 1
    done = max(a + 1 for a in ck["ledger"]["amax"])
    steps = 4 * (done + 30)         # every learner has at least 30 updates left to do
    out2 = tmp_path / "resumed"
    r = hosts.run(hosts.mpiexec([5], *train("--steps", steps, "--resume", out, "--out", out2)),
                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out2 / "summary.json").read_text())
    assert s["mpi"]["nodes"] == 1 and s["mpi"]["learners_per_node"] == [4]
    assert_clean_audit(out2)
    assert s["updates_applied"] + sum(len(e["discarded"]) for e in s["ledger"].values()) == steps
    for g, entry in s["ledger"].items():      # the cut's updates are kept, none redone twice
        cut = ck["ledger"]["applied"][int(g)]
        assert not cut or entry["applied"][0][0] == 0, (g, cut, entry)


def _checkpointed(out: Path, p: subprocess.Popen) -> bool:
    """A checkpoint holds updates of both nodes (or the job ended, which the caller reports)."""
    if p.poll() is not None:
        return True
    try:
        meta = checkpoint.load(out)["meta"]
    except Exception:        # noqa: BLE001 - not written yet (written atomically: whole or absent)
        return False
    return all(meta["ledger"]["applied"][g] for g in (0, 2))


@pytest.mark.timeout(300)
def test_mpi_path_bench_over_tcp(make_hosts, tmp_path):
    """bench.mpi_path with its two ranks on two hosts: the bytes it reports crossed eth0."""
    hosts = make_hosts(2)
    before = hosts.link_bytes(1)
    rec = tmp_path / "path.json"
    r = hosts.run(hosts.mpiexec(1, sys.executable, "-m", "bench.mpi_path", "--quick", "--out", rec),
                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(rec.read_text())["results"]
    rx, tx = (a - b for a, b in zip(hosts.link_bytes(1), before))
    moved = sum(x["mbytes_per_round"] * 1e6 * (x["rounds"] + 1) for x in res)   # gadei rounds
    moved += sum(x["mbytes_per_round"] * 1e6 * (x["rounds"] + 1) for x in res)  # raw ping-pong
    assert rx + tx >= moved, (rx, tx, moved)
    assert all(x["bytes_per_s"] > 0 and x["raw_mpi_bytes_per_s"] > 0 for x in res)


@pytest.mark.timeout(120)
def test_teardown_leaves_nothing_also_on_failure():
    names = []
    with pytest.raises(RuntimeError, match="fails inside"):
        with Hosts(2) as hosts:
            names = [h.netns for h in hosts.hosts] + [hosts.switch]
            keepers = [h.pid for h in hosts.hosts]
            assert hosts.run(["hostname"], host=1, capture_output=True, text=True).stdout.strip() == "host1"
            assert hosts.shm(1) == []
            hosts.popen(["sleep", "600"], host=1)       # a process the teardown must kill
            raise RuntimeError("the run fails inside the hosts")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in left for n in names), left
    assert not any(Path(f"/proc/{k}").exists() for k in keepers)
    assert not any(d.name.startswith(PREFIX + str(os.getpid())) for d in Path("/run").iterdir())


@pytest.mark.alone      # any Hosts.start() sweeps: another worker's could take these hosts first
@pytest.mark.timeout(420)   # it may first wait for the other workers' tests to end
def test_hosts_of_a_killed_harness_are_swept():
    """A harness killed before its teardown leaves its hosts; the next start removes them."""
    code = ("import time; from bench.hosts import Hosts; h = Hosts(2).start(); "
            "print(h.hosts[1].netns, h.hosts[1].pid, h.dir, flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        netns, keeper, rundir = p.stdout.readline().split()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert Path(f"/proc/{keeper}").exists() and Path(rundir).exists()
    assert netns in sweep_stale()
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not Path(rundir).exists()
    assert not proc.alive(int(keeper), 0)    # SIGKILLed (a zombie until init reaps it)
