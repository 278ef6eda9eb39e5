"""One node of an MPI job: its leader supervises the node's arena, PS and learner ranks (the
local backend's supervisor, with ranks for learner processes) and, with several nodes, drives
the uplink; every other rank is a learner of the node's arena."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from gadei import arena as A
from gadei import proc
from gadei.driver import drive, interruptible, private_files
from gadei.job import JobConfig, JobError
from gadei.ledger import Ledger, Record
from gadei.mpi import wire as W
from gadei.mpi.centre import GlobalPS
from gadei.mpi.settings import Settings
from gadei.mpi.topology import Topology, all_ok, bcast_name
from gadei.mpi.uplink import LocalLink, MPILink, Uplink
from gadei.supervisor import Outcome, Supervisor


# ---- learner ranks as the supervisor's children -----------------------------------------
class RankProcess:
    """A learner rank seen like a Popen: done when it set its done word, dead when its pid is
    gone. A rank is not our child: we cannot reap it, so it counts as gone once /proc says so
    (then it can no longer write its slots). Killing it makes MPICH end the whole job."""

    def __init__(self, arena: A.Arena, i: int, pid: int, started: int):
        self.arena, self.i, self.pid, self.started = arena, i, pid, started

    def poll(self) -> int | None:
        if self.arena.learner(self.i).done:
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
    """What the supervisor keeps of a child (gadei.supervisor.Child), for a learner rank."""

    def __init__(self, arena: A.Arena, i: int, gid: int, rank: int, pid: int, started: int):
        self.i, self.gid, self.rank = i, gid, rank
        self.popen = RankProcess(arena, i, pid, started)
        self.log = Path(f"(world rank {rank}: see mpiexec's output)")
        self.started = time.monotonic()
        self.lease_missed = False

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
    plus, with several nodes, the uplink slot ring (the last learner index) it drives itself;
    on world rank 0 also the global PS."""

    def __init__(self, cfg: JobConfig, topo: Topology, gcfg: JobConfig, settings: Settings, log=None):
        super().__init__(cfg, log)
        self.topo, self.gcfg, self.settings = topo, gcfg, settings
        self.gids = topo.node_gids[topo.node]
        self.ranks = topo.node_ranks(topo.node)
        self.local = len(self.gids)
        self.multi = topo.nodes > 1
        self.lost: list[int] = []
        self.uplink: Uplink | None = None
        self.gps: GlobalPS | None = None
        self.resumed: tuple[int, Ledger] | None = None     # the job's checkpoint: (version, ledger)

    # -- learners are ranks: started by mpiexec, watched here, never restarted
    def start_learner(self, i: int) -> None:
        a = self.arena
        r = self.ranks[i]
        a.learner(i).beat = A.now_ns()     # its lease runs from now
        self.learners[i] = RankChild(a, i, self.gids[i], r, int(self.topo.table[r, 2]),
                                     int(self.topo.table[r, 3]))

    def reap_learner(self, i: int, child, code: int) -> None:
        self.discard(i)
        del self.learners[i]
        if self.arena.learner(i).done:
            return
        self.lost.append(i)
        self.log(f"gadei: learner {self.gids[i]} (world rank {child.rank}, pid {child.popen.pid}) died; "
                 f"MPI cannot restart a rank, so node {self.topo.node} goes on with "
                 f"{len(self.learners)} learner(s)")

    def resume_point(self, layout: A.Layout, state: dict):
        """The job's checkpoint, cut to this node's learners (global ids -> arena indices). A
        node's optimizer state and version do not cross nodes' checkpoints: with several nodes
        (or from a checkpoint of several) they start afresh (docs/mpi.md)."""
        from gadei import checkpoint
        cfg = self.cfg
        ck = checkpoint.load_job(cfg.resume, task=cfg.task, params=layout.params, optimizer=cfg.optimizer,
                                 learners=self.gcfg.learners)
        self.resumed = (ck["version"], ck["ledger"])
        ledger = ck["ledger"].only(self.gids, renumber=True, totals=not self.multi)
        if not self.multi and "mpi_nodes" not in ck["meta"]:
            return ck["version"], layout.flat(ck["weights"]), ck["state"], ledger
        for n in range(self.local, cfg.learners):          # the uplink starts afresh
            ledger.records[n] = Record(incarnations=0)
        return 0, layout.flat(ck["weights"]), state, ledger

    # -- what this node reports to the global PS
    def wire(self, pub: dict, version: int) -> tuple[dict, dict]:
        """(records by global id, stats) of this node's published state `pub`."""
        ledger = self.ledger(pub).only(range(self.local))
        ledger.records = {self.gids[i]: r for i, r in ledger.records.items()}
        records, totals = ledger.wire()
        return records, {**totals, "ps_restarts": self.restarts["ps"], "lost": len(self.lost), "version": version}

    # -- the cross-node path
    def connect(self) -> None:
        """With several nodes: the uplink to the global PS (which world rank 0 also hosts)."""
        if not self.multi:
            return
        if self.topo.rank == 0:
            w0 = np.empty(self.arena.layout.n, np.float32)
            self.arena.pull(w0)
            version, ledger = self.resumed or (0, None)
            self.gps = GlobalPS(self.topo, self.gcfg, self.settings, self.arena.layout, w0, ledger, version,
                                self.log)
            link = LocalLink(self.gps, 0)
        else:
            link = MPILink(self.topo.world, self.arena.layout.n, self.settings.timeout, self.topo.where(0))
        self.uplink = Uplink(self, link, self.settings)

    poll_s = 0.02

    def tick(self) -> bool:
        if self.gps is not None:
            self.gps.serve()
            self.gps.maybe_checkpoint(Path(self.gcfg.out))
        if self.uplink is None:
            return super().tick()
        self.uplink.tick(self.finished())
        if self.uplink.finish_asked and not self.interrupted:
            self.interrupted = True
            self.log(f"gadei: node {self.topo.node}: the job stops early (the global PS asked); final sync")
            return True
        return self.uplink.done

    def run(self, on_tick=None) -> float:
        train_s = super().run(on_tick)
        if self.gps is not None:                  # every other node's final sync
            self.gps.wait_finals()
        return train_s

    def stop_children(self, grace: float = 5.0) -> None:
        """With several nodes, a node stopping early (Ctrl-C, SIGTERM, or the global PS asked)
        makes its final sync between stopping its learners and stopping its PS, and world rank
        0 waits for every node's: the centre gets every update any node applied, exactly once."""
        self.stop_learners(grace)
        if self.interrupted and self.uplink is not None and not self.uplink.stopping:
            if self.gps is not None:
                self.gps.finishing = True         # our answers ask the other nodes to stop too
            self.uplink.finish(self.gps.serve if self.gps is not None else lambda: None)
            if self.gps is not None:
                self.gps.wait_finals(bound=3 * self.settings.timeout)
        self.stop_ps(grace)

    def conclude(self, final: bool, train_s: float) -> Outcome:
        gps = self.gps
        if gps is None:                           # one node: the local backend's checkpoint
            v, weights, ledger = self.write_checkpoint(final)
            ledger = ledger.only(range(self.local))
            ps_restarts, lost, rates = self.restarts["ps"], len(self.lost), None
        else:
            gps.checkpoint(Path(self.gcfg.out), final)
            v, weights, ledger = gps.version, self.arena.layout.named(gps.C.copy()), gps.ledger()
            stats = [s or {} for s in gps.stats]
            ps_restarts, lost = sum(s.get("ps_restarts", 0) for s in stats), sum(s.get("lost", 0) for s in stats)
            # the meter saw node 0 only: rates over the whole job instead
            rates = (ledger.applied / max(train_s, 1e-9), ledger.samples / max(train_s, 1e-9))
        topo, s = self.topo, self.settings
        nbytes = gps.bytes if gps else 0
        extra = {"restarts": {"ps": ps_restarts, "learners": 0},
                 "mpi": {"ranks": topo.size, "nodes": topo.nodes,
                         "learners_per_node": [len(g) for g in topo.node_gids], "lost_learners": lost,
                         "cross_node": s.cross_node if self.multi else None,
                         "sync_every": s.sync_every if self.multi else None,
                         "syncs": gps.syncs if gps else 0, "cross_node_bytes": nbytes,
                         "cross_node_bytes_per_s": round(nbytes / max(train_s, 1e-9), 1)}}
        return Outcome(v, weights, ledger, extra, rates)

    def fail(self, error: Exception) -> None:
        """A fatal error on world rank 0: the last consistent checkpoint, then tell the others."""
        if self.gps is None:
            return
        out = Path(self.gcfg.out)
        self.log(f"gadei: {error}; writing the last consistent checkpoint (the centre and the ledgers "
                 f"of the last syncs) to {out / 'checkpoint'}: continue with --resume {out}")
        try:
            self.gps.checkpoint(out, final=False)
            self.gps.stop_others(str(error))
        except Exception as e2:              # noqa: BLE001 - the first error is the one to report
            self.log(f"gadei: could not write the checkpoint: {e2}")


def node_config(gcfg: JobConfig, topo: Topology) -> JobConfig:
    """The node's own configuration: its learners (plus the uplink), its share of the steps;
    with several nodes, its own output folder and job name."""
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


def lead(topo: Topology, gcfg: JobConfig, settings: Settings) -> dict | None:
    """A node leader's main: build the node, tell its learners the arena, drive the job."""
    cfg = node_config(gcfg, topo)
    out, node_out = Path(gcfg.out), Path(cfg.out)
    sup = NodeSupervisor(cfg, topo, gcfg, settings)
    reporting = topo.rank == 0
    with private_files(), interruptible(signal.SIGTERM):
        try:
            try:
                sup.acquire(outs=(out,) if reporting and sup.multi else ())
                sup.build()
            except Exception as e:
                bcast_name(topo, {"op": "arena", "name": "", "error": f"node {topo.node}: {e}"})
                all_ok(topo, False)
                raise
            bcast_name(topo, {"op": "arena", "name": sup.arena.name, "error": ""})
            if not all_ok(topo, True):
                return None
            sup.connect()
            metrics = (out if reporting else node_out) / "metrics.jsonl"
            return drive(sup, gcfg, out, metrics, reporting=reporting)
        except (W.MPITimeout, W.ProtocolError, JobError) as e:
            sup.fail(e)
            raise JobError(f"MPI job ends on world rank {topo.rank} (node {topo.node}): {e}") from None
        finally:
            sup.close()


def learn(topo: Topology, gcfg: JobConfig) -> None:
    """A learner rank's main: learner (node rank - 1) of its node's arena."""
    from gadei.role import run_learner
    msg = bcast_name(topo, None)
    if not all_ok(topo, not msg["error"]):
        return None                               # the failing leader reports why
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the leader stops us through the arena
    torch.set_num_threads(1)
    i = topo.node_rank - 1
    code = run_learner(msg["name"], i, gid=topo.gid, cfg=gcfg)
    try:                                          # tell the leader this rank is out of its loop
        a = A.Arena.attach(msg["name"])
        if not a.learner(i).done:
            a.learner(i).done = 2
        a.close()
    except FileNotFoundError:
        pass
    if code:
        raise SystemExit(code)
    return None
