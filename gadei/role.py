"""Process entry points of the roles the supervisor starts: `python -m gadei.role ps|learner ...`.

Each attaches to the arena named on its command line and rebuilds the task and optimizer from
the job configuration stored in the arena's header.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")   # one core per process; set before torch loads

import torch  # noqa: E402

import algorithms  # noqa: E402
from gadei import arena as A  # noqa: E402
from gadei.atomic import AtomicWords  # noqa: E402
from gadei import proc  # noqa: E402
from gadei.job import JobConfig  # noqa: E402
from gadei.server import Server  # noqa: E402
from gadei import task as T  # noqa: E402
from gadei.worker import PSGone, Stopped, Worker  # noqa: E402


def run_ps(name: str) -> int:
    arena = A.Arena.attach(name)
    cfg = JobConfig(**arena.meta["config"])
    protocol = algorithms.protocol(cfg.optimizer, **cfg.hyper)
    Server(arena, protocol.rule, sync_timeout=protocol.round_timeout if protocol.sync else None,
           lr_at=cfg.lr_at()).run()
    return 0


def run_learner(name: str, i: int, *, gid: int | None = None, cfg: JobConfig | None = None) -> int:
    """Learner i of arena `name` to the end of its quota. `gid` and `cfg`: its global learner id
    and the global job configuration, when the arena is one node of a larger (MPI) job; they
    choose its data shard, quota, seeds and the id the task sees (default: i, the arena's)."""
    arena = A.Arena.attach(name)
    cfg = cfg or JobConfig(**arena.meta["config"])
    gid = i if gid is None else gid
    task = T.build(cfg.task, cfg.task_options)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    model.train()
    protocol = algorithms.protocol(cfg.optimizer, **cfg.hyper)
    worker = Worker(arena, i, model, ps_timeout=cfg.ps_timeout, ident=(gid, cfg.learners),
                    direct=protocol.direct_gradients)
    # started: from now on the lease applies (until now, the supervisor's start_timeout)
    pid, started = proc.me()
    arena.learner(i).beat = A.now_ns()
    arena.learner(i).start = started
    arena.learner(i).pid = pid
    stop_beating = heartbeat(arena, i, every=min(1.0, cfg.lease / 4))

    quota = cfg.quota(gid) if cfg.steps is not None else None
    worker.quota = quota
    try:
        while True:
            if quota is not None and worker.step >= quota:
                break
            if quota is None and worker.data_epoch >= cfg.epochs:
                break
            # a fresh shuffle per epoch and per incarnation
            seed = cfg.seed + 1_000_003 * worker.data_epoch + 7_919 * worker.incarnation + 101 * gid
            got = 0
            for got, batch in enumerate(task.batches(gid, cfg.learners, seed), 1):
                def closure(batch=batch):
                    worker.zero_grad()
                    loss = task.loss(model, batch)
                    loss.backward()
                    if cfg.clip_grad_norm:     # in place: in the slot, where backward wrote it
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                    return loss
                worker.samples = T.batch_size(task, batch)
                t0 = time.perf_counter_ns()
                loss = protocol.step(worker, model, closure)
                worker.spent("step_ns", t0)
                worker.report(loss, worker.samples)
                worker.check()
                if quota is not None and worker.step >= quota:
                    break
            else:
                if not got:
                    raise ValueError(f"learner {i} of {cfg.learners} got no batches from task "
                                     f"{cfg.task!r}: its share of the data is empty; use fewer learners")
                worker.data_epoch += 1
                arena.learner(i).data_epoch = worker.data_epoch
        finish = getattr(protocol, "finish", None)
        if finish:
            finish(worker, model)
        arena.learner(i).done = 1
        return 0
    except Stopped:
        return 0
    except PSGone as e:
        print(f"gadei: {e}", file=sys.stderr)
        return 3
    finally:
        stop_beating()


def heartbeat(arena: A.Arena, i: int, every: float):
    """Beat learner i's lease every `every` seconds from a thread of its own, until the returned
    function is called: a step longer than the lease is no missed lease, while a stopped or
    frozen process (all its threads) still misses it. The thread has atomics of its own (their
    operand buffer is per object)."""
    words = A.LearnerWords(AtomicWords(arena.words), arena.lw(i, 0))
    done = threading.Event()

    def beat():
        while not done.wait(every):
            words.beat = A.now_ns()
    thread = threading.Thread(target=beat, name=f"gadei-heartbeat-{i}", daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join()
    return stop


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    try:
        if argv[:1] == ["ps"] and len(argv) == 2:
            return run_ps(argv[1])
        if argv[:1] == ["learner"] and len(argv) == 3:
            return run_learner(argv[1], int(argv[2]))
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    print("usage: python -m gadei.role ps ARENA | learner ARENA I", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
