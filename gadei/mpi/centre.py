"""The global PS: world rank 0 keeps the centre of a job across nodes (docs/mpi.md)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gadei import arena as A
from gadei import checkpoint
from gadei import ledger as L
from gadei.driver import uninterrupted
from gadei.job import JobConfig
from gadei.mpi import wire as W
from gadei.mpi.settings import Settings
from gadei.mpi.topology import MPI, Topology


class GlobalPS:
    """World rank 0's centre: every node's deltas (or elastic steps) applied in arrival order.

    Holds, per node, the ledger of the snapshot whose delta it applied last: with DOWNPOUR the
    centre is the initial weights plus exactly those nodes' applied updates, a consistent cut
    that `checkpoint` writes and `--resume` continues from exactly once.
    """

    def __init__(self, topo: Topology, gcfg: JobConfig, settings: Settings, layout: A.Layout, w0: np.ndarray,
                 resume: L.Ledger | None, version: int, log):
        self.topo, self.gcfg, self.settings, self.layout, self.log = topo, gcfg, settings, layout, log
        self.C = w0.astype(np.float32).copy()
        self.version = version
        self.alpha = settings.easgd_beta / topo.nodes
        # per node: the ledger of the snapshot whose delta it applied last (global ids)
        self.synced = [resume.only(gids, totals=False) if resume else L.Ledger({}) for gids in topo.node_gids]
        self.stats: list[dict | None] = [None] * topo.nodes
        self.final: set[int] = set()
        self.finishing = False      # the job stops early: every answer asks for the final sync
        self.heard = [time.monotonic()] * topo.nodes
        self.sends: list = []
        self._up = np.empty(self.C.size, np.float32)                   # reused receive buffer
        self._down = [np.empty(self.C.size, np.float32) for _ in range(topo.nodes)]  # per node
        self.syncs = 0
        self.bytes = 0
        self.ckpt_updates = -1

    def handle(self, node: int, msg: dict, vec: np.ndarray | None):
        """Apply one message of `node`; return the (reply, tensor) to send back."""
        self.heard[node] = time.monotonic()
        if msg["op"] == "beat":
            return {"op": "reply", "round": msg["round"], "version": self.version, "n": 0, "kind": "none",
                    "finish": self.finishing}, None
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
        self.synced[node] = L.Ledger.from_wire(msg["ledger"], msg["stats"])
        self.stats[node] = msg["stats"]
        if msg["final"]:
            self.final.add(node)
        return {"op": "reply", "round": msg["round"], "version": self.version, "n": int(out.size),
                "kind": kind, "finish": self.finishing}, out

    def serve(self) -> None:
        """Answer every leader message waiting now; raise if a node has gone silent."""
        world, status = self.topo.world, MPI().Status()
        while world.Iprobe(MPI().ANY_SOURCE, W.TAG_UP, status):
            src, size = status.Get_source(), status.Get_count(MPI().BYTE)
            if src not in self.topo.leaders[1:]:
                raise W.ProtocolError(f"world rank {src} is not a node leader but sent a control message")
            node = self.topo.leaders.index(src)
            who = f"node {node} ({self.topo.where(src)})"
            if size > W.CTRL_MAX:
                raise W.ProtocolError(f"control message from {who} of {size} bytes exceeds the "
                                      f"{W.CTRL_MAX}-byte limit")
            with uninterrupted():   # a Ctrl-C mid-message would lose it, or half-apply it
                self._take(src, node, size, who)
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

    def wait_finals(self, bound: float | None = None) -> None:
        """Serve until every node made its final sync and took our answer (an Isend still
        pending at MPI_Finalize is lost: over TCP the reply's tensor goes by rendezvous, which
        needs this rank alive). A node gone silent raises (serve); `bound` seconds at most."""
        deadline = None if bound is None else time.monotonic() + bound
        while len(self.final) < self.topo.nodes or self.sends:
            self.serve()
            if deadline is not None and time.monotonic() > deadline:
                missing = sorted(set(range(self.topo.nodes)) - self.final)
                raise W.MPITimeout(f"node(s) {missing} did not make their final sync within {bound:.0f} s")
            time.sleep(0.002)

    def _take(self, src: int, node: int, size: int, who: str) -> None:
        """Receive one control message of `src` (and its tensor), apply it, post the answer."""
        world = self.topo.world
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
    def ledger(self) -> L.Ledger:
        """Every learner's record as of the nodes' last syncs, with the nodes' totals."""
        return L.Ledger.union(self.synced, self.topo.learners)

    def checkpoint(self, out: Path, final: bool) -> None:
        led = self.ledger()
        checkpoint.save_job(out / "checkpoint", self.gcfg.to_dict(), self.layout.named(self.C), {}, self.version,
                            led, final, mpi_nodes=self.topo.node_gids, cross_node=self.settings.cross_node)
        self.ckpt_updates = led.applied

    def maybe_checkpoint(self, out: Path) -> None:
        every = self.gcfg.checkpoint_every
        if every:
            updates = sum(part.applied for part in self.synced)
            if updates - max(self.ckpt_updates, 0) >= every and updates != self.ckpt_updates:
                self.checkpoint(out, final=False)
