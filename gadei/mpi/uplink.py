"""The node's side of the cross-node path: its link to the global PS and the uplink that turns
the global PS's answers into DELTAs through its own slot ring (docs/mpi.md)."""
from __future__ import annotations

import time

import numpy as np
import torch

from gadei import arena as A
from gadei import proc
from gadei.driver import uninterrupted
from gadei.job import JobError
from gadei.mpi import wire as W
from gadei.mpi.settings import Settings
from gadei.mpi.topology import MPI
from gadei.worker import Worker

BEAT_S = 2.0              # a leader with nothing to sync says it is alive this often


class LocalLink:
    """Node 0's link to the global PS, which lives in the same process."""

    def __init__(self, gps, node: int):
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
        blob = W.pack(msg)
        self._keep = (blob, vec)        # Isend buffers must live until the sends complete
        self._status = MPI().Status()
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
                size = self._status.Get_count(MPI().BYTE)
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

    def __init__(self, sup, link, settings: Settings):
        self.sup, self.link, self.settings = sup, link, settings
        a = self.arena = sup.arena
        self.U = sup.local
        pid, started = proc.me()
        a.learner(self.U).pid, a.learner(self.U).start = pid, started     # the uplink is the leader itself
        self.worker = Worker(a, self.U, None, ps_timeout=sup.cfg.ps_timeout)
        self.w = np.empty(a.layout.n, np.float32)
        self.st = {k: np.empty(s, dt) for k, dt, s in a.layout.state}
        self.snap_v, _ = a.pull(self.w, state=self.st, timeout=300)
        self.base = self.w.copy()
        self.round, self.injected, self.pending, self.done = 0, None, None, False
        self.stopping = False           # our learners are out: no more DELTAs, only the final sync
        self.finish_asked = False       # the global PS said the job stops early
        self.last = time.monotonic()

    def _injection_applied(self) -> bool:
        if self.injected is None:
            return True
        a = self.arena
        return not any(a.slot_header(self.U, s).ctrl == A.ctrl(A.READY, self.injected)
                       for s in range(a.layout.slots))

    def tick(self, finishing: bool) -> None:
        self.worker.beat()              # the uplink's lease: this process
        # one step at a time: a Ctrl-C in the middle (a message half posted, the centre taken but
        # not committed) would leave the centre and this node disagreeing; it waits for the end
        with uninterrupted():
            self._step(finishing)

    def _step(self, finishing: bool) -> None:
        if self.pending is not None:
            got = self.link.poll()
            if got is not None:
                self._receive(*got)
            return
        if self.done or not self._injection_applied():
            return
        if finishing:
            self._send(final=True)
        elif self.arena.job.published - self.snap_v > self.settings.sync_every:
            self._send(final=False)
        elif time.monotonic() - self.last > BEAT_S:
            self.pending = ("beat", None)
            self.link.post({"op": "beat", "node": self.sup.topo.node, "round": self.round}, None)

    def finish(self, serve) -> None:
        """The final sync of a node that stops early (Ctrl-C, SIGTERM, or the global PS asked):
        its learners are out and its PS, still up, applies what they committed, so the final
        delta carries every update the node applied. `serve()` runs each round (world rank 0
        serves the global PS from it). Bounded by the MPI timeout."""
        self.stopping = True
        deadline = time.monotonic() + 3 * self.settings.timeout
        while not self.done:
            serve()
            self.tick(finishing=self.sup.drained())     # once the PS applied what was committed
            if time.monotonic() > deadline:
                raise W.MPITimeout(f"node {self.sup.topo.node}'s final sync did not end within "
                                   f"{3 * self.settings.timeout:.0f} s")
            time.sleep(0.002)

    def _send(self, final: bool) -> None:
        v, pub = self.arena.pull(self.w, state=self.st, timeout=300)
        if self.settings.cross_node == "downpour":
            vec, kind = self.w - self.base, "delta"
        else:
            vec, kind = self.w.copy(), "weights"
        records, stats = self.sup.wire(pub, v)
        msg = {"op": "sync", "node": self.sup.topo.node, "round": self.round, "n": int(vec.size),
               "final": final, "kind": kind, "ledger": records, "stats": stats}
        self.pending = ("final" if final else "sync", v)
        self.link.post(msg, vec)

    def _receive(self, reply: dict, vec) -> None:
        what, v = self.pending
        if reply["round"] != self.round:
            raise W.ProtocolError(f"the global PS answered round {reply['round']}, not {self.round}")
        self.finish_asked |= reply["finish"]
        self.pending, self.last = None, time.monotonic()
        if what == "beat":
            return
        self.round += 1
        if what == "final":
            self.done = True
            return
        if vec is None or vec.size != self.w.size:
            raise W.ProtocolError("the global PS's answer to a sync carries no tensor of the model's size")
        if self.stopping:
            # the node takes no more DELTAs: the centre now holds the snapshot we sent, so the
            # final delta is what the node applied since (EASGD: its last elastic step is dropped)
            self.base = self.w.copy()
        else:
            delta = vec - self.w if reply["kind"] == "centre" else -vec
            self.injected = self.worker.push_delta(torch.from_numpy(delta), samples=0, steps=0)
            if reply["kind"] == "centre":
                self.base = vec.copy()
        self.snap_v = v
