"""The MPI backend under real `mpiexec`: one node, two virtual nodes, a killed rank, and the
validation of the control messages that cross MPI (docs/mpi.md)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gadei.mpi import wire as W
from gadei import checkpoint
from gadei.probe import audit
from tests.helpers import job_segments, kill, summary, wait_for_job

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec (the mpich wheel) is not installed")


def mpi_cmd(n: int, *args) -> list[str]:
    return [MPIEXEC, "-n", str(n), sys.executable, "-m", "gadei", "train", "--backend", "mpi",
            "--task", "probe", "--lr", "1", "--no-progress", *map(str, args)]


def run_mpi(n, *args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(mpi_cmd(n, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_clean_audit(out):
    problems = audit(out)
    assert not problems, problems


@needs_mpi
@pytest.mark.timeout(240)
def test_one_node_three_ranks_passes_audit(tmp_path):
    out = tmp_path / "one"
    r = run_mpi(3, "--steps", 500, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(out)
    assert s["mpi"]["nodes"] == 1 and s["mpi"]["learners_per_node"] == [2]
    assert s["updates_applied"] == 500
    assert all(e["committed"] == e["applied"] == [[0, 249]] for e in s["ledger"].values())
    assert (out / "metrics.jsonl").stat().st_size > 0
    assert checkpoint.load(out)["meta"]["final"] is True
    assert_clean_audit(out)


@needs_mpi
@pytest.mark.timeout(300)
def test_two_virtual_nodes_pass_audit(tmp_path):
    """GADEI_RANKS_PER_NODE=2: two nodes of (leader, learner); DOWNPOUR deltas over MPI."""
    out = tmp_path / "two"
    r = run_mpi(4, "--steps", 500, "--out", out, "--sync-every", 25, env={"GADEI_RANKS_PER_NODE": "2"})
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(out)
    assert s["mpi"]["nodes"] == 2 and s["mpi"]["cross_node"] == "downpour"
    assert s["mpi"]["syncs"] >= 2 and s["mpi"]["cross_node_bytes"] > 0
    assert s["updates_applied"] == 500
    assert sorted(s["ledger"]) == ["0", "1"]
    assert checkpoint.load(out)["meta"]["mpi_nodes"] == [[0], [1]]
    assert_clean_audit(out)


@needs_mpi
@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks_per_node", [0, 2])
def test_killed_rank_ends_job_then_resume_is_exactly_once(tmp_path, ranks_per_node):
    """kill -9 of a learner rank: MPICH ends every rank (docs/mpi.md); the job ends by itself,
    the PS subprocesses remove the arenas, and --resume finishes exactly once."""
    out, job = tmp_path / "killed", f"mpikill{ranks_per_node}"
    n = 4 if ranks_per_node else 3
    env = {k: v for k, v in os.environ.items() if k != "GADEI_RANKS_PER_NODE"}
    if ranks_per_node:
        env["GADEI_RANKS_PER_NODE"] = str(ranks_per_node)
    p = subprocess.Popen(mpi_cmd(n, "--steps", 1500, "--out", out, "--job", job, "--checkpoint-every", 40,
                                 "--sync-every", 10),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, learners = wait_for_job(job, timeout=120)
        deadline = time.monotonic() + 120
        while not (out / "checkpoint").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "checkpoint").exists(), "no checkpoint written"
        time.sleep(0.5)
        assert kill(learners[0])
        # the job must end by itself; a hang is caught by the generous bound, not timed
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert "BAD TERMINATION" in stdout + stderr or "Killed" in stdout + stderr, stdout + stderr
    deadline = time.monotonic() + 20
    while job_segments(job) and time.monotonic() < deadline:     # the nodes' arenas included
        time.sleep(0.1)
    assert not job_segments(job), "the node PS should remove the arena of its dead leader"
    ck = checkpoint.load(out)
    assert ck["meta"]["version"] >= 1
    out2 = tmp_path / "resumed"
    r = subprocess.run(mpi_cmd(n, "--steps", 1500, "--out", out2, "--resume", out, "--sync-every", 50),
                       capture_output=True, text=True, timeout=420, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_clean_audit(out2)
    s = summary(out2)
    assert s["updates_applied"] + sum(len(e["discarded"]) for e in s["ledger"].values()) == 1500


# ---- control messages (no MPI needed) ---------------------------------------------------
def sync_msg(**over):
    msg = {"op": "sync", "node": 1, "round": 0, "n": 4, "final": False, "kind": "delta",
           "ledger": {"3": {"amax": 4, "horizon": -1, "n_applied": 5, "n_rejected": 0, "rejected": [],
                            "progress": [5, 0, 5],
                            "dropped": 0, "discarded": [], "next_seq": 5, "incarnations": 1}},
           "stats": {"updates": 5, "rejects": 0, "stale_sum": 0, "stale_max": 0,
                     "ps_restarts": 0, "lost": 0, "version": 5}}
    msg.update(over)
    return msg


def test_control_message_round_trip():
    msg = sync_msg()
    assert W.unpack(W.pack(msg), ("sync",)) == msg


@pytest.mark.parametrize("blob, pattern", [
    (msgpack.packb({**sync_msg(), "round": "0"}), "key 'round' must be int, got str"),
    (msgpack.packb({**sync_msg(), "final": 1}), "key 'final' must be bool"),
    (msgpack.packb({**sync_msg(), "node": True}), "key 'node' must be int, got bool"),
    (msgpack.packb({k: v for k, v in sync_msg().items() if k != "ledger"}), "missing key.*ledger"),
    (msgpack.packb({**sync_msg(), "extra": 1}), "unexpected key.*extra"),
    (msgpack.packb({**sync_msg(), "op": "shutdown"}), "op 'shutdown' is not one of"),
    (msgpack.packb([1, 2, 3]), "expected a map"),
    (msgpack.packb({**sync_msg(), "kind": msgpack.ExtType(5, b"x")}), "extension type 5"),
    (msgpack.packb({1: 2}), "not valid msgpack"),                       # strict_map_key
    (b"\xc1", "not valid msgpack"),
    (b"\x00" * (W.CTRL_MAX + 1), "exceeds the"),
    (msgpack.packb(sync_msg(ledger={"3": {"applied": [[0, 4]]}})), "missing key"),
    (msgpack.packb(sync_msg(ledger={"x": {}})), "not a learner id"),
    (msgpack.packb(sync_msg(n=-1)), "bad n"),
])
def test_control_message_validation_rejects(blob, pattern):
    with pytest.raises(W.ProtocolError, match=pattern):
        W.unpack(blob, ("sync", "beat"), "node 1")


VALID = [sync_msg(), sync_msg(n=0, kind="none", ledger={}), {"op": "beat", "node": 2, "round": 7},
         {"op": "reply", "round": 3, "version": 9, "n": 4, "kind": "centre", "finish": False}, {"op": "stop", "reason": "x"},
         {"op": "arena", "name": "gadei_j_00", "error": ""}]
_ANY = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
                    | st.text(max_size=6) | st.binary(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)


def _mutate(msg, data):
    """One random damage to a valid message: a value, a key, or a nested ledger field."""
    msg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in msg.items()}
    where = msg
    if "ledger" in msg and msg["ledger"] and data.draw(st.booleans()):
        gid = next(iter(msg["ledger"]))
        where = msg["ledger"][gid] = dict(msg["ledger"][gid])
    how = data.draw(st.sampled_from(["value", "drop", "add", "rename"]))
    key = data.draw(st.sampled_from(sorted(where)))
    if how == "value":
        where[key] = data.draw(_ANY)
    elif how == "drop":
        del where[key]
    elif how == "add":
        where[data.draw(st.text(max_size=6))] = data.draw(_ANY)
    else:
        where[data.draw(st.text(min_size=1, max_size=6))] = where.pop(key)
    return msg


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_control_message_fuzz(data):
    """Damaged messages and random bytes: a ProtocolError, or a message every reader can use
    (it re-packs, its ledger keys are learner ids). Never another exception."""
    if data.draw(st.booleans()):
        blob = msgpack.packb(_mutate(data.draw(st.sampled_from(VALID)), data), use_bin_type=True)
    else:
        blob = data.draw(st.binary(max_size=64))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    try:
        msg = W.unpack(blob, tuple(W.SCHEMAS), "node 1")
    except W.ProtocolError as e:
        assert "node 1" in str(e)
        return
    assert W.unpack(W.pack(msg), (msg["op"],)) == msg
    for gid in msg.get("ledger", {}):
        assert int(gid) >= 0


def test_pack_refuses_a_malformed_message():
    with pytest.raises(W.ProtocolError, match="must be int"):
        W.pack({"op": "beat", "node": 1, "round": 2.5})
    with pytest.raises(W.ProtocolError, match="exceeds"):
        W.pack({"op": "stop", "reason": "x" * (W.CTRL_MAX + 10)})


@needs_mpi
@pytest.mark.timeout(120)
def test_without_mpiexec_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gadei", "train", "--backend", "mpi", "--task", "probe",
                        "--steps", "10", "--out", str(tmp_path / "x"), "--no-progress"],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 2
    assert "at least 2 ranks" in r.stderr and "mpiexec -n 3" in r.stderr


def _rank_pid(root: int, rank: int) -> int:
    """The pid of world rank `rank`'s `gadei train` under mpiexec `root` (not its PS child)."""
    from gadei import proc
    for pid in sorted(proc.descendants(root)):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env and b"train" in cmd:
            return pid
    raise AssertionError(f"no world rank {rank} under mpiexec {root}")


def _start_two_nodes(out, job, *extra, timeout_s=None):
    """A two-virtual-node probe job that cannot end by itself (10**6 updates), once it has
    checkpointed: progress on both nodes before the test acts, whatever the machine's load."""
    env = {**os.environ, "GADEI_RANKS_PER_NODE": "2"}
    if timeout_s:
        env["GADEI_MPI_TIMEOUT"] = str(timeout_s)
    p = subprocess.Popen(mpi_cmd(4, "--steps", 10 ** 6, "--out", out, "--job", job, "--sync-every", 10,
                                 "--checkpoint-every", 40, *extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while not (out / "checkpoint").exists():
        if p.poll() is not None:
            raise AssertionError("the job ended before its first checkpoint:\n" + "".join(p.communicate()))
        time.sleep(0.1)
    return p


@needs_mpi
@pytest.mark.timeout(600)
@pytest.mark.parametrize("to", ["mpiexec", "rank0"])
def test_ctrl_c_of_a_multi_node_job_keeps_exactly_once(tmp_path, to):
    """SIGINT to mpiexec (what Ctrl-C sends; hydra passes it to every rank) or to world rank 0
    alone (its answers then ask the other nodes to stop): every node makes its final sync
    before it stops, so what each node applied since its last sync reaches the final weights
    (#18 finding 9)."""
    out = tmp_path / "interrupted"
    p = _start_two_nodes(out, f"mpiint{to}")
    try:
        os.kill(p.pid if to == "mpiexec" else _rank_pid(p.pid, 0), signal.SIGINT)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    s = summary(out)
    assert s["interrupted"] is True, stdout + stderr
    assert s["updates_applied"] > 0
    assert_clean_audit(out)


@needs_mpi
@pytest.mark.timeout(600)
def test_a_stopped_node_leader_ends_the_whole_job(tmp_path):
    """SIGSTOP of node 1's leader: the global PS's bounded wait fires, it writes the last
    consistent checkpoint and aborts the MPI job, so mpiexec ends (#18 finding 2); the
    checkpoint resumes exactly once."""
    out, job = tmp_path / "stopped", "mpistop"
    p = _start_two_nodes(out, job, timeout_s=10)
    leader = None
    try:
        leader = _rank_pid(p.pid, 2)            # world rank 2: node 1's leader
        os.kill(leader, signal.SIGSTOP)
        stdout, stderr = p.communicate(timeout=400)
    finally:
        if leader:
            try:
                os.kill(leader, signal.SIGCONT)
                os.kill(leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()
            p.communicate()
    text = stdout + stderr
    assert p.returncode != 0, text
    assert re.search(r"MPI job ends on world rank 0 \(node 0\): .*node 1", text), text
    ck = checkpoint.load(out)
    assert ck["meta"]["final"] is False
    out2 = tmp_path / "resumed"
    r = run_mpi(4, "--steps", ck["meta"]["version"] + 200, "--out", out2, "--resume", out, "--sync-every", 10,
                env={"GADEI_RANKS_PER_NODE": "2"}, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_clean_audit(out2)
