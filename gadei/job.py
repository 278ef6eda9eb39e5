"""A job's configuration: what `gadei train` and `gadei.train()` resolve their arguments into.

It travels to every role inside the arena's header, so a restarted learner or PS rebuilds
exactly the same task, model and optimizer.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import algorithms
from gadei import task as T


@dataclass
class JobConfig:
    task: str = "probe"                  # built-in name or "package.module:Class"
    task_options: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    hyper: dict = field(default_factory=dict)
    lr_schedule: str = "constant"        # the PS's lr by update count (constant, cosine, linear)
    lr_warmup: int = 0                   # updates of linear warm-up before (and under) the schedule
    learners: int = 2
    steps: int | None = None             # total steps over all learners (split evenly)
    epochs: int | None = None            # or: epochs of each learner's shard
    seed: int = 0
    out: str = "runs/job"
    job: str | None = None               # job name; default derived from `out`
    checkpoint_every: int = 0            # updates between checkpoints (0: final only)
    resume: str | None = None            # output directory or checkpoint file to continue from
    slots: int = 2                       # gradient slots per learner
    lease: float = 60.0                  # seconds without a heartbeat before a role is replaced
    start_timeout: float = 600.0         # seconds a role may take to start (import, load data)
    ps_timeout: float = 120.0            # seconds a learner waits on a silent PS before giving up
    max_restarts: int = 1000             # restarts of each role before the job gives up
    backend: str = "local"
    eval_every: float = 0.0              # seconds between evaluations into metrics.jsonl (0: none)
    sync_every: int | None = None        # MPI across nodes: node updates between syncs with the centre
    cross_node: str | None = None        # MPI across nodes: "downpour" (deltas) or "easgd" (elastic)
    progress: bool = True

    def __post_init__(self):
        if self.learners < 1:
            raise ValueError(f"--learners must be at least 1, not {self.learners}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.steps is not None and self.steps < self.learners:
            raise ValueError(f"--steps {self.steps} is fewer than one step per learner "
                             f"({self.learners} learners)")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, not {self.epochs}")
        if self.steps is None and self.epochs is None:
            self.steps = 100 * self.learners
        if self.backend not in ("local", "mpi"):
            raise ValueError(f"--backend must be 'local' or 'mpi', not {self.backend!r}")
        self.lr_at()                                          # fail now, not in a child
        T.task_class(self.task)
        if self.job is None:
            where = str(Path(self.out).resolve())
            base = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(where).name)[:40]
            self.job = f"{base or 'job'}-{hashlib.sha1(where.encode()).hexdigest()[:8]}"

    def lr_at(self):
        """The PS's lr as a function of the updates applied so far (None: the rule's own lr).

        A schedule decays the server-side rule's lr over the job's `steps` updates, a warm-up
        raises it over the first `lr_warmup`; DOWNPOUR and EASGD apply their learners' deltas as
        they come, so neither applies to them."""
        protocol = algorithms.protocol(self.optimizer, **self.hyper)
        if self.lr_schedule == "constant" and self.lr_warmup == 0:
            return None
        if self.epochs is not None and self.lr_schedule != "constant":
            raise ValueError(f"--lr-schedule {self.lr_schedule} decays over the job's updates: give --steps, "
                             "not --epochs")
        from algorithms.protocols import LocalSteps
        if isinstance(protocol, LocalSteps):
            raise ValueError(f"--lr-schedule and --lr-warmup apply to a server-side rule (ASGD, SYNC); "
                             f"optimizer {self.optimizer!r} applies its learners' deltas")
        from algorithms.schedules import schedule
        return schedule(self.lr_schedule, protocol.rule.lr, self.steps or 0, self.lr_warmup)

    def quota(self, i: int) -> int:
        """Steps learner i runs (steps mode)."""
        q, r = divmod(self.steps, self.learners)
        return q + (i < r)

    def to_dict(self) -> dict:
        return asdict(self)


def split_options(task: str, optimizer: str, pairs: dict[str, str]) -> tuple[dict, dict]:
    """Route `--name value` pairs to the optimizer's hyper-parameters or the task's options."""
    hyper_params = algorithms.hyper_parameters(optimizer)
    task_params = T.options(task)
    hyper, opts = {}, {}
    for key, value in pairs.items():
        if key in hyper_params:
            hyper[key] = T.coerce(value, hyper_params[key], f"--{key.replace('_', '-')}")
        elif key in task_params:
            opts[key] = T.coerce(value, task_params[key], f"--{key.replace('_', '-')}")
        else:
            raise ValueError(f"unknown option --{key.replace('_', '-')}: optimizer {optimizer!r} takes "
                             f"{', '.join(hyper_params) or 'nothing'}; task {task!r} takes "
                             f"{', '.join(task_params) or 'nothing'}")
    return hyper, opts
