"""The MPI backend: `mpiexec -n N gadei train --backend mpi ...` (docs/mpi.md).

Roles, from the ranks' placement alone::

    node       the ranks that share memory: comm.Split_type(COMM_TYPE_SHARED), or, to test
               several nodes on one machine, GADEI_RANKS_PER_NODE=k: k consecutive world ranks
    leader     node rank 0: owns the node's arena, runs its PS as a subprocess (restarted like
               the local backend's), watches the node's learner ranks' leases, and is the node's
               "uplink" to the global PS (one extra learner slot ring in the arena)
    learner    every other rank: learner (node rank - 1) of its node's arena; its global id is
               its place among the non-leader ranks in world-rank order
    global PS  world rank 0 (also node 0's leader): keeps the centre; writes the checkpoint,
               summary.json and metrics.jsonl of the job

One node is exactly the local backend with MPI ranks for learner processes. Across nodes, every
`sync_every` node updates a leader sends the global PS its DOWNPOUR delta W_node - W_base (or its
weights, for the EASGD elastic difference) and gets the centre (or the elastic step) back, which
it commits into its own arena as a DELTA through its uplink slot ring, so the node's PS applies it
under the ledger like any other update. No shared-memory segment is used across nodes; nothing
crosses MPI pickled (gadei.mpi_wire).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gadei import arena as A
from gadei import checkpoint, proc
from gadei import ledger as L
from gadei import mpi_wire as W
from gadei.job import JobConfig
from gadei.server import empty_ledger
from gadei.supervisor import JobError, Supervisor, discard_writing, interruptible, write_json

NAME_BUF = 4096           # bytes of the arena-name broadcast
HOST_BUF = 256            # bytes of a rank's host name (MPI_MAX_PROCESSOR_NAME is 128 in MPICH)
BEAT_S = 2.0              # a leader with nothing to sync says it is alive this often
START_TIMEOUT = 300.0     # seconds for start-up exchanges (model building happens before them)


def _MPI():
    from mpi4py import MPI
    return MPI


@dataclass
class Settings:
    """The MPI backend's knobs: explicit option, then GADEI_* variable, then default."""
    sync_every: int = 20        # node updates between exchanges with the global PS
    cross_node: str = "downpour"
    easgd_beta: float = 0.9     # EASGD: alpha = beta / nodes
    timeout: float = 60.0       # seconds any cross-node wait may take
    ranks_per_node: int = 0     # 0: the real nodes (COMM_TYPE_SHARED)

    @classmethod
    def resolve(cls, cfg: JobConfig) -> "Settings":
        env = os.environ
        try:
            s = cls(sync_every=cfg.sync_every or int(env.get("GADEI_SYNC_EVERY", 20)),
                    cross_node=cfg.cross_node or env.get("GADEI_CROSS_NODE", "downpour"),
                    easgd_beta=float(env.get("GADEI_EASGD_BETA", 0.9)),
                    timeout=float(env.get("GADEI_MPI_TIMEOUT", 60)),
                    ranks_per_node=int(env.get("GADEI_RANKS_PER_NODE", 0) or 0))
        except ValueError as e:
            raise ValueError(f"bad GADEI_* setting for the MPI backend: {e}") from None
        if s.sync_every < 1:
            raise ValueError(f"--sync-every must be at least 1, not {s.sync_every}")
        if s.cross_node not in ("downpour", "easgd"):
            raise ValueError(f"--cross-node must be 'downpour' or 'easgd', not {s.cross_node!r}")
        if not 0 < s.easgd_beta <= 1:
            raise ValueError(f"GADEI_EASGD_BETA must be in (0, 1], not {s.easgd_beta}")
        if s.timeout <= 0 or s.ranks_per_node < 0:
            raise ValueError(f"bad GADEI_MPI_TIMEOUT {s.timeout} or GADEI_RANKS_PER_NODE {s.ranks_per_node}")
        return s


# ---- topology ---------------------------------------------------------------------------
@dataclass
class Topology:
    world: object
    node_comm: object
    rank: int
    size: int
    node_rank: int
    node: int                   # this rank's node index (nodes ordered by their leader's rank)
    leaders: list[int]          # world rank of each node's leader
    node_gids: list[list[int]]  # per node: its learners' global ids, in node-rank order
    table: np.ndarray           # per world rank: leader's world rank, node rank, pid, start time
    gid: int | None             # this rank's global learner id (None for a leader)
    hosts: list[str] = dataclasses.field(default_factory=list)   # per world rank: its host's name

    def where(self, rank: int) -> str:
        """'world rank r on HOST': errors name the machine, the thing an operator can look at."""
        return f"world rank {rank} on {self.hosts[rank]}" if self.hosts else f"world rank {rank}"

    @property
    def nodes(self) -> int:
        return len(self.leaders)

    @property
    def learners(self) -> int:
        return sum(map(len, self.node_gids))

    @property
    def leader(self) -> bool:
        return self.node_rank == 0

    def node_ranks(self, node: int) -> list[int]:
        """World ranks of `node`'s learners, in node-rank order."""
        lead = self.leaders[node]
        return sorted((int(r) for r in np.flatnonzero(self.table[:, 0] == lead) if self.table[r, 1] != 0),
                      key=lambda r: self.table[r, 1])


def topology(world, settings: Settings) -> Topology:
    """Split the world into nodes and number the learners (start-up collectives, bounded)."""
    MPI = _MPI()
    rank, size = world.Get_rank(), world.Get_size()
    if size < 2:
        raise JobError("the MPI backend needs at least 2 ranks (a PS host and a learner): launch it as "
                       "`mpiexec -n 3 gadei train --backend mpi ...`")
    if settings.ranks_per_node:
        node_comm = world.Split(color=rank // settings.ranks_per_node, key=rank)
    else:
        node_comm = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    deadline = time.monotonic() + START_TIMEOUT
    lead = np.array([rank], np.int64)
    W.wait(node_comm.Ibcast(lead, root=0), deadline, "the node leader's rank")
    pid, started = proc.me()
    mine = np.array([lead[0], node_comm.Get_rank(), pid, started], np.int64)
    table = np.empty((size, 4), np.int64)
    W.wait(world.Iallgather(mine, table), deadline, "every rank's placement")
    host = np.zeros(HOST_BUF, np.uint8)
    name = MPI.Get_processor_name().encode()[:HOST_BUF]
    host[:len(name)] = np.frombuffer(name, np.uint8)
    hosts = np.empty((size, HOST_BUF), np.uint8)
    W.wait(world.Iallgather(host, hosts), deadline, "every rank's host name")
    leaders = sorted({int(x) for x in table[:, 0]})
    if leaders[0] != 0:
        raise JobError("world rank 0 must lead its node (it hosts the global PS)")
    node_gids, gid, mine_gid = [[] for _ in leaders], 0, None
    for r in range(size):
        if table[r, 1] != 0:
            node_gids[leaders.index(int(table[r, 0]))].append(gid)
            if r == rank:
                mine_gid = gid
            gid += 1
    lonely = [n for n, g in enumerate(node_gids) if not g]
    if lonely:
        raise JobError(f"node(s) {lonely} have a single rank, which would host a PS with no learner: "
                       "start at least two ranks per node (or set GADEI_RANKS_PER_NODE >= 2)")
    return Topology(world, node_comm, rank, size, node_comm.Get_rank(), leaders.index(int(lead[0])),
                    leaders, node_gids, table, mine_gid,
                    [bytes(h).rstrip(b"\0").decode(errors="replace") for h in hosts])


def _bcast_name(topo: Topology, msg: dict | None) -> dict:
    """The leader's {"op": "arena", ...} message to its node, as a msgpack buffer (no pickle)."""
    buf = np.zeros(NAME_BUF, np.uint8)
    if msg is not None:
        blob = W.pack(msg)
        if len(blob) > NAME_BUF - 4:
            raise ValueError("arena message too long")
        buf[:4] = np.frombuffer(np.uint32(len(blob)).tobytes(), np.uint8)
        buf[4:4 + len(blob)] = np.frombuffer(blob, np.uint8)
    W.wait(topo.node_comm.Ibcast(buf, root=0), time.monotonic() + START_TIMEOUT,
           "the node leader's arena name (the leader died or is stuck building the model)")
    n = int(buf[:4].view(np.uint32)[0])
    if n > NAME_BUF - 4:
        raise W.ProtocolError(f"arena message from the node leader claims {n} bytes")
    return W.unpack(buf[4:4 + n].tobytes(), ("arena",), "the node leader")


def _all_ok(topo: Topology, ok: bool) -> bool:
    """Every rank's start-up verdict (so one failed node ends the job everywhere, at once)."""
    MPI = _MPI()
    got = np.zeros(1, np.int64)
    W.wait(topo.world.Iallreduce(np.array([int(ok)], np.int64), got, op=MPI.MIN),
           time.monotonic() + START_TIMEOUT, "the other ranks' start-up")
    return bool(got[0])


# ---- learner ranks as the supervisor's children -----------------------------------------
class _RankProc:
    """A learner rank seen like a Popen: done when it set L_DONE, dead when its pid is gone.

    A rank is not our child: we cannot reap it, so it counts as gone once /proc says so (then
    it can no longer write its slots). Killing it makes MPICH end the whole job (docs/mpi.md).
    """

    def __init__(self, arena: A.Arena, i: int, pid: int, started: int):
        self.arena, self.i, self.pid, self.started = arena, i, pid, started

    def poll(self) -> int | None:
        if self.arena.ctl.load(self.arena.lw(self.i, A.L_DONE)):
            return 0
        if not proc.alive(self.pid, self.started):
            return -signal.SIGKILL
        return None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"learner rank pid {self.pid}", timeout)
            time.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class RankChild:
    def __init__(self, arena: A.Arena, i: int, gid: int, rank: int, pid: int, started: int):
        self.i, self.gid, self.rank = i, gid, rank
        self.popen = _RankProc(arena, i, pid, started)
        self.log = Path(f"(world rank {rank}: see mpiexec's output)")
        self.started = time.monotonic()

    def kill(self) -> int:
        self.popen.kill()
        deadline = time.monotonic() + 5
        while (code := self.popen.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return -signal.SIGKILL if code is None else code

    def tail(self, n: int = 15) -> str:
        return ""


class NodeSupervisor(Supervisor):
    """The supervisor of one node: its learners are MPI ranks (never restarted: MPI cannot),
    plus, with several nodes, the uplink slot ring (the last learner index) it drives itself."""

    def __init__(self, cfg: JobConfig, topo: Topology, gcfg: JobConfig, log=None):
        super().__init__(cfg, log)
        self.topo, self.gcfg = topo, gcfg
        self.gids = topo.node_gids[topo.node]
        self.ranks = topo.node_ranks(topo.node)
        self.local = len(self.gids)
        self.multi = topo.nodes > 1
        self.lost: list[int] = []
        self.uplink: Uplink | None = None

    # -- learners are ranks: started by mpiexec, watched here, never restarted
    def start_learner(self, i: int) -> None:
        a = self.arena
        r = self.ranks[i]
        a.ctl.store(a.lw(i, A.L_BEAT), A.now_ns())     # its lease runs from now
        self.learners[i] = RankChild(a, i, self.gids[i], r, int(self.topo.table[r, 2]),
                                     int(self.topo.table[r, 3]))

    def reap_learner(self, i: int, child, code: int) -> None:
        a = self.arena
        for k in discard_writing(a, i):
            self.discarded[i].append(k)
            self.log(f"gadei: learner {self.gids[i]} died while writing seq {k}: discarded")
        del self.learners[i]
        if a.ctl.load(a.lw(i, A.L_DONE)):
            return
        self.lost.append(i)
        self.log(f"gadei: learner {self.gids[i]} (world rank {child.rank}, pid {child.popen.pid}) died; "
                 f"MPI cannot restart a rank, so node {self.topo.node} goes on with "
                 f"{len(self.learners)} learner(s)")

    def _from_checkpoint(self, ck: dict, params, state0):
        if not self.multi and "mpi_nodes" not in ck["meta"]:
            return super()._from_checkpoint(ck, params, state0)
        meta, cfg = ck["meta"], self.cfg
        got = [(k, tuple(v.shape)) for k, v in ck["weights"].items()]
        if got != list(params):
            raise JobError(f"cannot resume from {cfg.resume}: its model differs from task {cfg.task!r}'s")
        if meta.get("optimizer") != cfg.optimizer or meta.get("learners") != self.gcfg.learners:
            raise JobError(f"cannot resume from {cfg.resume}: it ran {meta.get('optimizer')!r} with "
                           f"{meta.get('learners')} learners, this job {cfg.optimizer!r} with "
                           f"{self.gcfg.learners}")
        flat = np.concatenate([v.reshape(-1) for v in ck["weights"].values()]).astype(np.float32)
        gl, recs = meta["ledger"], meta["learner_records"]
        ledger = empty_ledger(cfg.learners)
        out_recs = []
        for i, g in enumerate(self.gids):
            for key in ("applied", "rejected", "amax", "progress"):
                ledger[key][i] = gl[key][g]
            out_recs.append(recs[g])
        for _ in range(cfg.learners - self.local):      # the uplink starts afresh
            out_recs.append({"next_seq": 0, "discarded": [], "step": 0, "epoch": 0, "incarnations": 0})
        # node optimizer state is not carried across nodes' checkpoints: it restarts (docs/mpi.md)
        return flat, state0, ledger, 0, out_recs

    # -- what this node reports to the global PS (and to the summary)
    def wire_ledger(self, ledger: dict) -> dict:
        recs = self.learner_records(ledger, cut=False)
        out = {}
        for i, g in enumerate(self.gids):
            out[str(g)] = {"applied": ledger["applied"][i], "rejected": ledger["rejected"][i],
                           "amax": ledger["amax"][i], "progress": ledger["progress"][i],
                           "discarded": recs[i]["discarded"], "incarnations": recs[i]["incarnations"],
                           "next_seq": recs[i]["next_seq"], "lost": i in self.lost}
        return out

    def wire_stats(self, ledger: dict, version: int) -> dict:
        applied = sum(L.count(ledger["applied"][i]) for i in range(self.local))
        return {"updates": applied, "rejects": sum(len(ledger["rejected"][i]) for i in range(self.local)),
                "stale_sum": int(ledger["stale_sum"]), "stale_max": int(ledger["stale_max"]),
                "samples": int(sum(ledger["progress"][i][2] for i in range(self.local))),
                "ps_restarts": self.restarts["ps"], "lost": len(self.lost), "version": version}

    poll_s = 0.02

    def tick(self) -> bool:
        if self.uplink is None:
            return super().tick()
        a = self.arena
        a.ctl.store(a.lw(self.local, A.L_BEAT), A.now_ns())   # the uplink's lease: this process
        self.uplink.tick(self.finished())
        return self.uplink.done


# ---- the cross-node path ----------------------------------------------------------------
class LocalLink:
    """Node 0's link to the global PS, which lives in the same process."""

    def __init__(self, gps: "GlobalPS", node: int):
        self.gps, self.node, self._got = gps, node, None

    def post(self, msg: dict, vec: np.ndarray | None) -> None:
        self._got = self.gps.handle(self.node, W.unpack(W.pack(msg), ("sync", "beat"), "node 0"), vec)

    def poll(self):
        got, self._got = self._got, None
        return got


class MPILink:
    """A node leader's link to the global PS (world rank 0): one exchange in flight at a time,
    posted without waiting and polled from the supervisor's loop, bounded by the timeout."""

    def __init__(self, world, n: int, timeout: float, peer: str = "world rank 0"):
        self.world, self.n, self.timeout, self.peer = world, n, timeout, peer
        self._reqs = None
        self._rbuf = bytearray(W.CTRL_MAX)
        self._down = np.empty(n, np.float32)    # reused: a fresh buffer costs its page faults
        self.bytes_up = self.bytes_down = 0

    def post(self, msg: dict, vec: np.ndarray | None) -> None:
        MPI = _MPI()
        blob = W.pack(msg)
        self._keep = (blob, vec)        # Isend buffers must live until the sends complete
        self._status = MPI.Status()
        self._rreq = self.world.Irecv(self._rbuf, 0, W.TAG_DOWN)
        self._rvec = None
        sends = [self.world.Isend(blob, 0, W.TAG_UP)]
        if vec is not None:
            self._rvec = self._down
            self._dreq = self.world.Irecv(self._rvec, 0, W.TAG_DOWN_DATA)
            sends.append(self.world.Isend(vec, 0, W.TAG_UP_DATA))
            self.bytes_up += vec.nbytes
        self.bytes_up += len(blob)
        self._sends = sends
        self._what = f"{msg['op']} round {msg['round']}"
        self._deadline = time.monotonic() + self.timeout
        self._ctrl = None

    def poll(self):
        """(reply, tensor or None) once the global PS answered; None while waiting."""
        if self._ctrl is None:
            if self._rreq.Test(self._status):
                size = self._status.Get_count(_MPI().BYTE)
                self._ctrl = W.unpack(bytes(self._rbuf[:size]), ("reply", "stop"), "the global PS")
                self.bytes_down += size
                if self._ctrl["op"] == "stop":
                    self._cancel()
                    raise JobError(f"the global PS stopped the job: {self._ctrl['reason']}")
        done = self._ctrl is not None and all(r.Test() for r in self._sends) and \
            (self._rvec is None or self._dreq.Test())
        if done:
            if self._rvec is not None:
                self.bytes_down += self._rvec.nbytes
            return self._ctrl, self._rvec
        if time.monotonic() > self._deadline:
            self._cancel()
            raise W.MPITimeout(f"the global PS ({self.peer}) did not answer {self._what} within "
                               f"{self.timeout:.0f} s: it died, hangs, or the network is down "
                               "(GADEI_MPI_TIMEOUT sets this bound)")
        return None

    def _cancel(self) -> None:
        for r in [self._rreq, *self._sends] + ([self._dreq] if self._rvec is not None else []):
            try:
                r.Cancel()
            except Exception:
                pass


class Uplink:
    """The node's side of the cross-node path, as learner `U` (the last slot ring) of its arena.

    DOWNPOUR (per sync round, docs/mpi.md)::

        snapshot  (v, W) of the node, with its ledger           (after our last DELTA applied)
        send      delta = W - B                                  the node's updates since B
        receive   C, the centre after adding delta
        commit    DELTA = C - W into slot ring U; B = C          (the node PS applies it: the
                                                                 node is now C + what came after v)

    EASGD sends W and gets e = alpha (W - C) back (C += e there); the node commits -e.
    """

    def __init__(self, sup: NodeSupervisor, link, settings: Settings):
        from gadei.worker import Worker
        self.sup, self.link, self.settings = sup, link, settings
        a = self.arena = sup.arena
        self.U = sup.local
        pid, started = proc.me()
        a.ctl.store(a.lw(self.U, A.L_PID), pid)           # the uplink is the leader itself
        a.ctl.store(a.lw(self.U, A.L_START), started)
        self.worker = Worker(a, self.U, None, ps_timeout=sup.cfg.ps_timeout)
        self.w = np.empty(a.layout.n, np.float32)
        self.st = {k: np.empty(s, dt) for k, dt, s in a.layout.state}
        self.snap_v, _ = a.pull(self.w, state=self.st, timeout=300)
        self.base = self.w.copy()
        self.round, self.injected, self.pending, self.done = 0, None, None, False
        self.last = time.monotonic()

    def _injection_applied(self) -> bool:
        if self.injected is None:
            return True
        a = self.arena
        return not any(a.ctl.load(a.sw(self.U, s, A.S_CTRL)) == A.ctrl(A.READY, self.injected)
                       for s in range(a.layout.slots))

    def tick(self, finishing: bool) -> None:
        if self.pending is not None:
            got = self.link.poll()
            if got is not None:
                self._receive(*got)
            return
        if self.done or not self._injection_applied():
            return
        if finishing:
            self._send(final=True)
        elif self.arena.published() - self.snap_v > self.settings.sync_every:
            self._send(final=False)
        elif time.monotonic() - self.last > BEAT_S:
            self.pending = ("beat", None)
            self.link.post({"op": "beat", "node": self.sup.topo.node, "round": self.round}, None)

    def _send(self, final: bool) -> None:
        v, ledger = self.arena.pull(self.w, state=self.st, timeout=300)
        if self.settings.cross_node == "downpour":
            vec, kind = self.w - self.base, "delta"
        else:
            vec, kind = self.w.copy(), "weights"
        msg = {"op": "sync", "node": self.sup.topo.node, "round": self.round, "n": int(vec.size),
               "final": final, "kind": kind, "ledger": self.sup.wire_ledger(ledger),
               "stats": self.sup.wire_stats(ledger, v)}
        self.pending = ("final" if final else "sync", v)
        self.link.post(msg, vec)

    def _receive(self, reply: dict, vec) -> None:
        what, v = self.pending
        self.pending, self.last = None, time.monotonic()
        if reply["round"] != self.round:
            raise W.ProtocolError(f"the global PS answered round {reply['round']}, not {self.round}")
        if what == "beat":
            return
        self.round += 1
        if what == "final":
            self.done = True
            return
        if vec is None or vec.size != self.w.size:
            raise W.ProtocolError("the global PS's answer to a sync carries no tensor of the model's size")
        if reply["kind"] == "centre":
            delta = vec - self.w
            self.base = vec.copy()
        else:
            delta = -vec
        self.injected = self.worker.push_delta(torch.from_numpy(delta), samples=0, steps=0)
        self.snap_v = v


class GlobalPS:
    """World rank 0's centre: every node's deltas (or elastic steps) applied in arrival order.

    Holds, per node, the ledger of the snapshot whose delta it applied last: with DOWNPOUR the
    centre is the initial weights plus exactly those nodes' applied updates, a consistent cut
    that `checkpoint` writes and `--resume` continues from exactly once.
    """

    def __init__(self, topo: Topology, gcfg: JobConfig, settings: Settings, params, w0: np.ndarray,
                 resume_meta: dict | None, log):
        self.topo, self.gcfg, self.settings, self.params, self.log = topo, gcfg, settings, params, log
        self.C = w0.astype(np.float32).copy()
        self.version = 0
        self.alpha = settings.easgd_beta / topo.nodes
        self.synced: list[dict] = [{} for _ in range(topo.nodes)]
        self.stats: list[dict | None] = [None] * topo.nodes
        self.final: set[int] = set()
        self.heard = [time.monotonic()] * topo.nodes
        self.sends: list = []
        self._up = np.empty(self.C.size, np.float32)                   # reused receive buffer
        self._down = [np.empty(self.C.size, np.float32) for _ in range(topo.nodes)]  # per node
        self.syncs = 0
        self.bytes = 0
        self.ckpt_updates = -1
        if resume_meta is not None:
            self.version = int(resume_meta.get("version", 0))
            gl, recs = resume_meta["ledger"], resume_meta["learner_records"]
            for n, gids in enumerate(topo.node_gids):
                for g in gids:
                    self.synced[n][str(g)] = {
                        "applied": gl["applied"][g], "rejected": gl["rejected"][g], "amax": gl["amax"][g],
                        "progress": gl["progress"][g], "discarded": recs[g]["discarded"],
                        "incarnations": recs[g]["incarnations"], "next_seq": recs[g]["next_seq"],
                        "lost": False}

    def handle(self, node: int, msg: dict, vec: np.ndarray | None):
        """Apply one message of `node`; return the (reply, tensor) to send back."""
        self.heard[node] = time.monotonic()
        if msg["op"] == "beat":
            return {"op": "reply", "round": msg["round"], "version": self.version, "n": 0, "kind": "none"}, None
        if vec is None or vec.size != self.C.size:
            raise W.ProtocolError(f"node {node}'s sync carries {None if vec is None else vec.size} "
                                  f"values, the model has {self.C.size}")
        out = self._down[node]       # free: the node took our last answer before asking again
        if msg["kind"] == "delta":
            self.C += vec
            np.copyto(out, self.C)
            kind = "centre"
        else:
            np.subtract(vec, self.C, out=out)
            out *= np.float32(self.alpha)
            self.C += out
            kind = "elastic"
        self.version += 1
        self.syncs += 1
        self.bytes += 2 * vec.nbytes
        self.synced[node] = msg["ledger"]
        self.stats[node] = msg["stats"]
        if msg["final"]:
            self.final.add(node)
        return {"op": "reply", "round": msg["round"], "version": self.version, "n": int(out.size),
                "kind": kind}, out

    def serve(self) -> None:
        """Answer every leader message waiting now; raise if a node has gone silent."""
        MPI = _MPI()
        world, status = self.topo.world, MPI.Status()
        while world.Iprobe(MPI.ANY_SOURCE, W.TAG_UP, status):
            src, size = status.Get_source(), status.Get_count(MPI.BYTE)
            if src not in self.topo.leaders[1:]:
                raise W.ProtocolError(f"world rank {src} is not a node leader but sent a control message")
            node = self.topo.leaders.index(src)
            who = f"node {node} ({self.topo.where(src)})"
            if size > W.CTRL_MAX:
                raise W.ProtocolError(f"control message from {who} of {size} bytes exceeds the "
                                      f"{W.CTRL_MAX}-byte limit")
            deadline = time.monotonic() + self.settings.timeout
            buf = bytearray(size)
            W.wait(world.Irecv(buf, src, W.TAG_UP), deadline, f"a control message from {who}")
            msg = W.unpack(bytes(buf), ("sync", "beat"), who)
            if msg["node"] != node:
                raise W.ProtocolError(f"{who} says it is node {msg['node']}")
            vec = None
            if msg["op"] == "sync":
                if msg["n"] != self.C.size:
                    raise W.ProtocolError(f"{who} announces {msg['n']} values; the model has {self.C.size}")
                vec = self._up
                W.wait(world.Irecv(vec, src, W.TAG_UP_DATA), deadline, f"the tensor of {who}'s sync")
            for item in [x for x in self.sends if x[4] == who]:   # strictly: free its reply buffer
                W.wait(item[0], item[3], f"{who} to take the previous answer")
                self.sends.remove(item)
            reply, out = self.handle(node, msg, vec)
            blob = W.pack(reply)
            reqs = [world.Isend(blob, src, W.TAG_DOWN)]
            if out is not None:
                reqs.append(world.Isend(out, src, W.TAG_DOWN_DATA))
            self.sends.append((reqs, blob, out, deadline, who))
        for item in list(self.sends):
            reqs, _, _, deadline, who = item
            if all(r.Test() for r in reqs):
                self.sends.remove(item)
            elif time.monotonic() > deadline:
                raise W.MPITimeout(f"{who} did not take the global PS's answer within {self.settings.timeout:.0f} s")
        now = time.monotonic()
        for n in range(1, self.topo.nodes):
            if n not in self.final and now - self.heard[n] > self.settings.timeout:
                raise W.MPITimeout(f"node {n} (leader: {self.topo.where(self.topo.leaders[n])}) has been silent "
                                   f"for {now - self.heard[n]:.0f} s: its leader died or hangs")

    def stop_others(self, reason: str) -> None:
        """Best effort: tell the leaders still running that the job ends (never waits long)."""
        world = self.topo.world
        blob = W.pack({"op": "stop", "reason": reason})
        reqs = [world.Isend(blob, self.topo.leaders[n], W.TAG_DOWN)
                for n in range(1, self.topo.nodes) if n not in self.final]
        try:
            W.wait(reqs, time.monotonic() + 2, "the stop notices")
        except W.MPITimeout:
            pass

    # -- the job's state
    def merged(self, cut: bool) -> tuple[dict, list[dict], dict]:
        """(ledger in the local backend's form, learner records, summary ledger) over all nodes."""
        G = self.topo.learners
        led = empty_ledger(G)
        recs, summary = [], {}
        for n, entries in enumerate(self.synced):
            st = self.stats[n] or {}
            led["rejects"] += st.get("rejects", 0)
            led["stale_sum"] += st.get("stale_sum", 0)
            led["stale_max"] = max(led["stale_max"], st.get("stale_max", 0))
        for g in range(G):
            e = next((ent[str(g)] for ent in self.synced if str(g) in ent), None)
            if e is None:
                e = {"applied": [], "rejected": [], "amax": -1, "progress": [0, 0, 0], "discarded": [],
                     "incarnations": 1, "next_seq": 0, "lost": False}
            for key in ("applied", "rejected", "amax", "progress"):
                led[key][g] = e[key]
            led["updates"] += L.count(e["applied"])
            nxt = e["amax"] + 1 if cut else max(e["next_seq"], e["amax"] + 1)
            disc = sorted(k for k in e["discarded"] if k < nxt)
            recs.append({"next_seq": nxt, "discarded": disc, "step": e["progress"][0],
                         "epoch": e["progress"][1], "incarnations": e["incarnations"]})
            summary[str(g)] = {"committed": L.committed(nxt, disc), "applied": e["applied"],
                               "discarded": disc, "rejected": e["rejected"],
                               "incarnations": e["incarnations"]}
        return led, recs, summary

    def weights(self) -> dict[str, np.ndarray]:
        out, off = {}, 0
        for name, shape in self.params:
            k = int(np.prod(shape, dtype=np.int64))
            out[name] = self.C[off:off + k].reshape(shape)
            off += k
        return out

    def checkpoint(self, out: Path, final: bool) -> None:
        led, recs, _ = self.merged(cut=True)
        cfg = self.gcfg
        meta = {"config": cfg.to_dict(), "version": self.version, "ledger": led, "learner_records": recs,
                "optimizer": cfg.optimizer, "learners": cfg.learners, "task": cfg.task,
                "task_options": cfg.task_options, "final": final, "time": time.time(),
                "mpi_nodes": self.topo.node_gids, "cross_node": self.settings.cross_node}
        checkpoint.save(out / "checkpoint", self.weights(), {}, meta)
        self.ckpt_updates = led["updates"]

    def maybe_checkpoint(self, out: Path) -> None:
        every = self.gcfg.checkpoint_every
        if every:
            updates = sum(L.count(e["applied"]) for ent in self.synced for e in ent.values())
            if updates - max(self.ckpt_updates, 0) >= every and updates != self.ckpt_updates:
                self.checkpoint(out, final=False)


# ---- the ranks' main functions ----------------------------------------------------------
def _learner_main(topo: Topology, gcfg: JobConfig) -> None:
    from gadei.role import run_learner
    msg = _bcast_name(topo, None)
    if not _all_ok(topo, not msg["error"]):
        return None                               # the failing leader reports why
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the leader stops us through the arena
    torch.set_num_threads(1)
    i = topo.node_rank - 1
    code = run_learner(msg["name"], i, gid=topo.gid, cfg=gcfg)
    try:                                          # tell the leader this rank is out of its loop
        a = A.Arena.attach(msg["name"])
        if not a.ctl.load(a.lw(i, A.L_DONE)):
            a.ctl.store(a.lw(i, A.L_DONE), 2)
        a.close()
    except FileNotFoundError:
        pass
    if code:
        raise SystemExit(code)
    return None


def _node_config(gcfg: JobConfig, topo: Topology) -> JobConfig:
    gids = topo.node_gids[topo.node]
    multi = topo.nodes > 1
    learners = len(gids) + (1 if multi else 0)
    steps = None
    if gcfg.steps is not None:
        steps = max(sum(gcfg.quota(g) for g in gids), learners)
    if not multi:
        return dataclasses.replace(gcfg, learners=learners, steps=steps)
    return dataclasses.replace(gcfg, learners=learners, steps=steps, checkpoint_every=0,
                               out=str(Path(gcfg.out) / "nodes" / f"node{topo.node}"),
                               job=f"{gcfg.job}-node{topo.node}", progress=False)


def _leader_main(topo: Topology, gcfg: JobConfig, settings: Settings) -> dict | None:
    cfg = _node_config(gcfg, topo)
    out, node_out = Path(gcfg.out), Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    node_out.mkdir(parents=True, exist_ok=True)
    sup = NodeSupervisor(cfg, topo, gcfg)
    with interruptible(signal.SIGTERM):
        return _lead(topo, gcfg, settings, cfg, sup, out, node_out)


def _lead(topo: Topology, gcfg: JobConfig, settings: Settings, cfg: JobConfig, sup: NodeSupervisor,
          out: Path, node_out: Path) -> dict | None:
    from gadei.train import _Meter, evaluate_weights
    reporting = topo.rank == 0
    meter, gps, error = None, None, ""
    t_start = time.monotonic()
    try:
        try:
            sup.acquire()
            sup.build()
        except Exception as e:
            error = f"node {topo.node}: {e}"
            _bcast_name(topo, {"op": "arena", "name": "", "error": error})
            _all_ok(topo, False)
            raise
        _bcast_name(topo, {"op": "arena", "name": sup.arena.name, "error": ""})
        if not _all_ok(topo, True):
            sup.close()
            return None
        multi = topo.nodes > 1
        if multi:
            if reporting:
                resume_meta = checkpoint.load(cfg.resume)["meta"] if cfg.resume else None
                w0 = np.empty(sup.arena.layout.n, np.float32)
                sup.arena.pull(w0)
                gps = GlobalPS(topo, gcfg, settings, sup.arena.layout.params, w0, resume_meta, sup.log)
                link = LocalLink(gps, 0)
            else:
                link = MPILink(topo.world, sup.arena.layout.n, settings.timeout, topo.where(0))
            sup.uplink = Uplink(sup, link, settings)
        meter = _Meter(sup, node_out / "metrics.jsonl", cfg.progress and reporting)

        def tick(s):
            meter(s)
            if gps is not None:
                gps.serve()
                gps.maybe_checkpoint(out)

        try:
            train_s = sup.run(on_tick=tick)
            if gps is not None:                  # wait for every other node's final sync
                while len(gps.final) < topo.nodes:
                    gps.serve()
                    time.sleep(0.005)
                # and for our answers to leave: an Isend still pending at MPI_Finalize is lost
                # (over TCP the reply's tensor goes by rendezvous, which needs this rank alive),
                # and the node waiting for it would time out after our summary was written
                while gps.sends:
                    gps.serve()
                    time.sleep(0.001)
        except KeyboardInterrupt:
            sup.interrupted = True
            sup.log("gadei: interrupted; stopping the learners and the PS, saving a checkpoint")
            train_s = time.monotonic() - t_start
        meter.record(time.monotonic())
        sup.stop_children()
        if not reporting:
            sup.close()
            return None
        if gps is None:                          # one node: the local backend's checkpoint
            version = sup.write_checkpoint(final=not sup.interrupted)
            _, weights, _, ledger = sup.snapshot()
            entries = sup.wire_ledger(ledger)
            gps_view = _single_view(sup, ledger, entries, version)
        else:
            gps.checkpoint(out, final=not sup.interrupted)
            weights = gps.C.copy()
            gps_view = gps
        updates_per_s, samples_per_s = meter.rates()
        summary = _summary(gcfg, topo, settings, sup, gps_view, train_s, updates_per_s, samples_per_s)
        sup.close()
        summary["final_metrics"] = evaluate_weights(gcfg, weights) if not sup.interrupted else {}
        summary["wall_time_s"] = round(time.monotonic() - t_start, 3)
        if gps is not None:                      # metrics.jsonl: node 0's, at the job's top
            (out / "metrics.jsonl").write_bytes((node_out / "metrics.jsonl").read_bytes())
        write_json(out / "summary.json", summary)
        return summary
    except (W.MPITimeout, W.ProtocolError, JobError) as e:
        if gps is not None:
            sup.log(f"gadei: {e}; writing the last consistent checkpoint (the centre and the ledgers "
                    f"of the last syncs) to {out / 'checkpoint'}: continue with --resume {out}")
            try:
                gps.checkpoint(out, final=False)
                gps.stop_others(str(e))
            except Exception as e2:              # noqa: BLE001 - the first error is the one to report
                sup.log(f"gadei: could not write the checkpoint: {e2}")
        raise JobError(f"MPI job ends on world rank {topo.rank} (node {topo.node}): {e}") from None
    finally:
        if meter:
            meter.close()
        sup.close()


class _single_view:
    """One node's final state, shaped like the GlobalPS for the summary."""
    syncs = 0
    bytes = 0

    def __init__(self, sup: NodeSupervisor, ledger: dict, entries: dict, version: int):
        self.sup, self.ledger, self.version = sup, ledger, version
        self.stats = [sup.wire_stats(ledger, version)]

    def merged(self, cut: bool):
        return self.ledger, None, self.sup.summary_ledger(self.ledger)


def _summary(gcfg, topo, settings, sup, view, train_s, updates_per_s, samples_per_s) -> dict:
    led, _, ledger = view.merged(cut=False)
    stats = [s or {} for s in view.stats]
    updates = sum(L.count(e["applied"]) for e in ledger.values())
    samples = sum(s.get("samples", 0) for s in stats)
    multi = topo.nodes > 1
    if multi:       # the meter saw node 0 only: rates over the whole job instead
        updates_per_s = updates / max(train_s, 1e-9)
        samples_per_s = samples / max(train_s, 1e-9)
    return {
        "settings": gcfg.to_dict(), "job": gcfg.job, "interrupted": sup.interrupted,
        "wall_time_s": None, "train_time_s": round(train_s, 3),
        "updates_applied": updates, "updates_rejected": sum(len(e["rejected"]) for e in ledger.values()),
        "updates_per_s": round(updates_per_s, 2), "samples": samples,
        "samples_per_s": round(samples_per_s, 2), "version": view.version,
        "staleness": {"mean": led["stale_sum"] / max(1, led["updates"]), "max": led["stale_max"]},
        "restarts": {"ps": sum(s.get("ps_restarts", 0) for s in stats), "learners": 0},
        "checkpoint": str(Path(gcfg.out) / "checkpoint"),
        "ledger": ledger,
        "mpi": {"ranks": topo.size, "nodes": topo.nodes, "learners_per_node": [len(g) for g in topo.node_gids],
                "lost_learners": sum(s.get("lost", 0) for s in stats),
                "cross_node": settings.cross_node if multi else None,
                "sync_every": settings.sync_every if multi else None,
                "syncs": view.syncs, "cross_node_bytes": view.bytes,
                "cross_node_bytes_per_s": round(view.bytes / max(train_s, 1e-9), 1)},
    }


def run_mpi(cfg: JobConfig) -> dict | None:
    """Run `cfg` as one rank of `mpiexec -n N gadei train --backend mpi ...`.

    Returns the summary on world rank 0 and None on every other rank. Every rank must call it
    with the same configuration (mpiexec gives them the same command line).
    """
    MPI = _MPI()
    world = MPI.COMM_WORLD
    settings = Settings.resolve(cfg)
    topo = topology(world, settings)
    if topo.nodes > 1 and cfg.optimizer.lower() == "sync":
        raise ValueError("--optimizer sync is bulk-synchronous within one shared-memory PS; across "
                         f"{topo.nodes} nodes use downpour, easgd or an ASGD rule (the nodes then sync "
                         "through the global PS with --cross-node)")
    if topo.rank == 0 and cfg.learners != topo.learners:
        print(f"gadei: the MPI backend runs one learner per non-PS rank: {topo.learners} learner(s) on "
              f"{topo.nodes} node(s) (--learners {cfg.learners} ignored)", file=sys.stderr, flush=True)
    gcfg = dataclasses.replace(cfg, learners=topo.learners, backend="mpi",
                               progress=cfg.progress and topo.rank == 0)
    try:
        if topo.leader:
            return _leader_main(topo, gcfg, settings)
        return _learner_main(topo, gcfg)
    except JobError as e:
        if topo.nodes == 1:
            raise
        # Several nodes: a rank that returns with an error would wait in MPI_Finalize for the
        # ranks of a lost host forever, and mpiexec with it. MPI_Abort makes hydra kill every
        # rank it can reach, so mpiexec ends; the error (naming the lost host) is printed first,
        # and the checkpoint was written before the raise (_lead). docs/mpi.md, "Several hosts".
        print(f"gadei train: error: {e}", file=sys.stderr, flush=True)
        world.Abort(2)
