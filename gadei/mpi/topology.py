"""Who is who under mpiexec: nodes, leaders, learners' global ids, from the ranks' placement
alone; and the start-up exchanges (every wait bounded)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gadei import proc
from gadei.job import JobError
from gadei.mpi import wire as W
from gadei.mpi.settings import Settings

NAME_BUF = 4096           # bytes of the arena-name broadcast
HOST_BUF = 256            # bytes of a rank's host name (MPI_MAX_PROCESSOR_NAME is 128 in MPICH)
START_TIMEOUT = 300.0     # seconds for start-up exchanges (model building happens before them)


def MPI():
    from mpi4py import MPI
    return MPI


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
    hosts: list[str] = field(default_factory=list)   # per world rank: its host's name

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
    rank, size = world.Get_rank(), world.Get_size()
    if size < 2:
        raise JobError("the MPI backend needs at least 2 ranks (a PS host and a learner): launch it as "
                       "`mpiexec -n 3 gadei train --backend mpi ...`")
    if settings.ranks_per_node:
        node_comm = world.Split(color=rank // settings.ranks_per_node, key=rank)
    else:
        node_comm = world.Split_type(MPI().COMM_TYPE_SHARED, key=rank)
    deadline = time.monotonic() + START_TIMEOUT
    lead = np.array([rank], np.int64)
    W.wait(node_comm.Ibcast(lead, root=0), deadline, "the node leader's rank")
    pid, started = proc.me()
    mine = np.array([lead[0], node_comm.Get_rank(), pid, started], np.int64)
    table = np.empty((size, 4), np.int64)
    W.wait(world.Iallgather(mine, table), deadline, "every rank's placement")
    host = np.zeros(HOST_BUF, np.uint8)
    name = MPI().Get_processor_name().encode()[:HOST_BUF]
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


def bcast_name(topo: Topology, msg: dict | None) -> dict:
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


def all_ok(topo: Topology, ok: bool) -> bool:
    """Every rank's start-up verdict (so one failed node ends the job everywhere, at once)."""
    got = np.zeros(1, np.int64)
    W.wait(topo.world.Iallreduce(np.array([int(ok)], np.int64), got, op=MPI().MIN),
           time.monotonic() + START_TIMEOUT, "the other ranks' start-up")
    return bool(got[0])
