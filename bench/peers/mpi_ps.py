"""An MPI parameter server in the style of mpiT, with mpi4py point-to-point on numpy buffers.

Rank 0 is the server: it holds the weights, receives a gradient from any learner
(``Recv`` with ``ANY_SOURCE``), applies SGD and sends the weights back to that learner.
Ranks 1..N are learners: ``Send`` the gradient, ``Recv`` the weights. Uppercase calls on numpy
buffers (no pickle); only the final per-learner counts travel as Python objects.

Launch (the benchmark driver does this)::

    mpiexec -n N+1 python -m bench.ps_throughput --worker mpi_ps --params P --learners N \\
        --seconds S --warmup W --result FILE
"""
from __future__ import annotations

from bench.peers import applied_from_weights, own_session, summarize, timed_loop

GRAD, WEIGHTS, STOP = 1, 2, 3


def run(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0) -> dict | None:
    """Run as one rank of ``mpiexec -n learners+1``; rank 0 returns the result, others None."""
    own_session()
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != learners + 1:
        raise ValueError(f"mpi_ps needs learners + 1 = {learners + 1} ranks, "
                         f"got {comm.Get_size()}: launch with mpiexec -n {learners + 1}")
    learner_comm = comm.Split(0 if rank == 0 else 1, rank)   # for the learners' start barrier
    if rank == 0:
        import torch
        torch.set_num_threads(1)
        w = np.zeros(params, np.float32)
        g = np.empty(params, np.float32)
        wt, gt = torch.from_numpy(w), torch.from_numpy(g)   # views: SGD in one fused pass
        status = MPI.Status()
        live = learners
        while live:
            comm.Recv([g, MPI.FLOAT], source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            if status.Get_tag() == STOP:
                live -= 1
                continue
            wt.add_(gt, alpha=-lr)                                     # apply
            comm.Send([w, MPI.FLOAT], dest=status.Get_source(), tag=WEIGHTS)
        per_learner = comm.gather(None, root=0)[1:]
        learner_comm.Free()
        return summarize(per_learner, applied_from_weights(w))
    g = np.ones(params, np.float32)     # the precomputed gradient, (P,)
    w = np.empty(params, np.float32)    # this learner's copy of the weights, (P,)

    def exchange() -> None:
        comm.Send([g, MPI.FLOAT], dest=0, tag=GRAD)       # push
        comm.Recv([w, MPI.FLOAT], source=0, tag=WEIGHTS)  # pull

    r = timed_loop(exchange, seconds, warmup, learner_comm.Barrier)
    comm.Send([np.empty(0, np.float32), MPI.FLOAT], dest=0, tag=STOP)
    comm.gather(r, root=0)
    learner_comm.Free()
    return None
