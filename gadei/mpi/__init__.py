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
crosses MPI pickled (gadei/mpi/wire.py).

Modules: settings (knobs), topology (who is who, start-up exchanges), node (the node's
supervisor, the leader's and learners' mains), uplink (a node's link to the global PS),
centre (the global PS), wire (what crosses MPI, validated).
"""
from __future__ import annotations

import dataclasses
import sys

from gadei.job import JobConfig, JobError
from gadei.mpi.settings import Settings
from gadei.mpi.topology import MPI, topology


def run_mpi(cfg: JobConfig) -> dict | None:
    """Run `cfg` as one rank of `mpiexec -n N gadei train --backend mpi ...`.

    Returns the summary on world rank 0 and None on every other rank. Every rank must call it
    with the same configuration (mpiexec gives them the same command line).
    """
    from gadei.mpi.node import lead, learn      # the roles load torch and the driver; settings need neither
    world = MPI().COMM_WORLD
    settings = Settings.resolve(cfg)
    topo = topology(world, settings)
    if topo.nodes > 1 and cfg.optimizer.lower() == "sync":
        whose = (f"task {cfg.task!r}'s recipe trains with --optimizer sync, which"
                 if cfg.origin.get("optimizer") == "recipe" else "--optimizer sync")
        raise ValueError(f"{whose} is bulk-synchronous within one shared-memory PS; across "
                         f"{topo.nodes} nodes give --optimizer downpour, easgd or an ASGD rule such as adam "
                         "(the nodes then sync through the global PS with --cross-node)")
    if topo.rank == 0 and cfg.learners != topo.learners:
        print(f"gadei: the MPI backend runs one learner per non-PS rank: {topo.learners} learner(s) on "
              f"{topo.nodes} node(s) (--learners {cfg.learners} ignored)", file=sys.stderr, flush=True)
    gcfg = dataclasses.replace(cfg, learners=topo.learners, backend="mpi",
                               progress=cfg.progress and topo.rank == 0)
    try:
        if topo.leader:
            return lead(topo, gcfg, settings)
        return learn(topo, gcfg)
    except JobError as e:
        if topo.nodes == 1:
            raise
        # Several nodes: a rank that returns with an error would wait in MPI_Finalize for the
        # ranks of a lost host forever, and mpiexec with it. MPI_Abort makes hydra kill every
        # rank it can reach, so mpiexec ends; the error (naming the lost host) is printed first,
        # and the checkpoint was written before the raise (node.lead). docs/mpi.md, "Several hosts".
        print(f"gadei train: error: {e}", file=sys.stderr, flush=True)
        world.Abort(2)
