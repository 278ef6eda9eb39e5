"""Synchronous data-parallel SGD over ``torch.distributed`` gloo, the way DDP runs on CPU.

N learner processes (``torch.multiprocessing.start_processes``, forked; rendezvous through a
file in a private temporary folder, so no port is picked and raced for; gloo's own connections
bind ports the kernel chooses).
Each step every learner all-reduces its gradient (sum), and applies ``w -= lr * sum / N`` to
its own copy of the weights; that counts as one exchange per learner per step.

The step writes the gradient into the all-reduce buffer first (``buf.copy_(g)``): the all-reduce
works in place, so the precomputed gradient must be kept aside; the copy costs the same bytes as
DDP's own pre-division of its bucket (``bucket.div_(world_size)``), which this step folds into
the update instead (``alpha=-lr / N``).

Collectives need every rank to run the same number of steps, so rank 0 sets the count: it ends
the warm-up (a one-integer broadcast per warm-up step), times the step from it, and broadcasts
``ceil(seconds / step time)`` for the timed window; if that window falls short of ``seconds``
(the all-reduced elapsed time says so on every rank alike), all run more steps at the rate
measured so far.
"""
from __future__ import annotations

import json
import math
import os
import time

from bench.peers import applied_from_weights, lost_fraction, own_session


def _rank(rank: int, learners: int, params: int, seconds: float, warmup: float, lr: float,
          rendezvous: str, result_path: str) -> None:
    own_session()
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")       # the learners' pairs on loopback only
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=learners)
    try:
        w = torch.zeros(params)          # this learner's weights, (P,)
        g = torch.ones(params)           # the precomputed gradient, (P,)
        buf = torch.empty(params)        # the all-reduce bucket, (P,)

        def step() -> None:
            buf.copy_(g)
            dist.all_reduce(buf)                    # sum over learners (push + pull)
            w.add_(buf, alpha=-lr / learners)       # apply the average

        # 1. warm-up, ended by rank 0
        flag = torch.ones(1, dtype=torch.int64)
        warm, start = 0, time.perf_counter()
        while True:
            step()
            warm += 1
            if rank == 0:
                flag[0] = int(time.perf_counter() - start < warmup)
            dist.broadcast(flag, 0)
            if not flag[0]:
                break
        # 2. the timed step count, from rank 0's warm-up rate
        count = torch.tensor([max(1, math.ceil(seconds * warm / (time.perf_counter() - start)))])
        dist.broadcast(count, 0)
        steps = int(count[0])
        # 3. timed window, in chunks until `seconds` have passed: after each chunk the ranks
        #    agree on the elapsed time (MAX), so all compute the same next chunk
        dist.barrier()
        t0 = time.perf_counter()
        done = 0
        while True:
            for _ in range(steps):
                step()
            done += steps
            elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            left = seconds - float(elapsed[0])
            if left <= 0.05 * seconds:
                break
            steps = max(1, math.ceil(left * done / float(elapsed[0])))
        steps = done
        if rank == 0:
            total_steps = warm + steps
            applied = applied_from_weights(w.numpy())   # steps applied to rank 0's copy
            result = {
                "exchanges_per_s_total": learners * steps / float(elapsed[0]),
                "exchanges_timed": learners * steps,
                "elapsed_s": float(elapsed[0]),
                "pushed_total": learners * total_steps,
                "applied_total": applied * learners,
                "lost_fraction": lost_fraction(applied, total_steps),
                "steps_timed": steps,
                "warmup_steps": warm,
            }
            with open(result_path, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def run(params: int, learners: int, seconds: float, warmup: float, lr: float = 1.0) -> dict:
    import tempfile

    import torch
    import torch.multiprocessing as mp
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-gloo-") as d:
        path, rendezvous = os.path.join(d, "result.json"), os.path.join(d, "rendezvous")
        mp.start_processes(_rank, args=(learners, params, seconds, warmup, lr, rendezvous, path),
                           nprocs=learners, join=True, start_method="fork")
        with open(path) as f:
            return json.load(f)
