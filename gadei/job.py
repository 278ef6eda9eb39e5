"""A job's configuration: what `gadei train` and `gadei.train()` resolve their arguments into.

It travels to every role inside the arena's header, so a restarted learner or PS rebuilds
exactly the same task, model and optimizer.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import algorithms
from gadei import task as T


class JobError(RuntimeError):
    """The job cannot start or cannot go on; the message says why and what to do."""


def option(default, help: str, *, choices=None, cli: bool = True, metavar: str | None = None):
    """A job option: its default and help, which `gadei train --help` and `gadei.train()` show."""
    meta = {"help": help, "choices": choices, "cli": cli, "metavar": metavar}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class JobConfig:
    """Every option of a job, defined once: the CLI's `gadei train` flags and `gadei.train()`'s
    keywords are generated from these fields (gadei/cli.py, gadei/train.py)."""
    task: str = option("probe", "a registered task (`gadei tasks`) or package.module:Class")
    task_options: dict = option({}, "the task's options", cli=False)
    optimizer: str = option("sgd", f"the update rule or learner protocol: {', '.join(algorithms.names())}")
    hyper: dict = option({}, "the optimizer's hyper-parameters", cli=False)
    lr_schedule: str = option("constant", "the PS's learning rate by update count, decayed over --steps "
                              "(ASGD and SYNC rules)", choices=["constant", "cosine", "linear"])
    lr_warmup: int = option(0, "raise the PS's learning rate linearly over the first UPDATES updates",
                            metavar="UPDATES")
    lr_floor: float = option(0.0, "the schedule decays the learning rate to lr x FRACTION, not to 0",
                             metavar="FRACTION")
    clip_grad_norm: float = option(0.0, "each learner scales a gradient whose norm (over all parameters) "
                                   "exceeds this down to it before pushing it (0: off)", metavar="NORM")
    learners: int = option(2, "learner processes")
    steps: int | None = option(None, "total steps over all learners (default: 100 per learner)")
    epochs: int | None = option(None, "or: epochs of each learner's shard")
    seed: int = option(0, "seeds the model, the data order and every learner")
    out: str = option("runs/job", "the output folder: summary.json, metrics.jsonl, checkpoint, logs/")
    job: str | None = option(None, "the job's name (default: from --out); one live job per name")
    checkpoint_every: int = option(0, "updates between checkpoints (0: the final one only)")
    resume: str | None = option(None, "an output folder or checkpoint to continue from")
    slots: int = option(2, "gradient slots per learner")
    weight_buffers: int | None = option(None, "weight buffers in the arena (default: learners + 2 under asgd "
                                        "and sync, whose learners then compute on the published weights "
                                        "without a copy; fewer, at least 3, save memory and the learners copy)",
                                        metavar="K")
    lease: float = option(60.0, "seconds without a heartbeat before a process is replaced")
    start_timeout: float = option(600.0, "seconds a process may take to start (imports, data)")
    ps_timeout: float = option(120.0, "seconds a learner waits on a silent PS before giving up")
    max_restarts: int = option(1000, "restarts of each role before the job gives up")
    backend: str = option("local", "local processes, or MPI ranks (under mpiexec)", choices=["local", "mpi"])
    eval_every: float = option(0.0, "seconds between evaluations written to metrics.jsonl (0: at the end only)")
    sync_every: int | None = option(None, "MPI, several nodes: node updates between exchanges with the "
                                    "global PS (default $GADEI_SYNC_EVERY or 20)")
    cross_node: str | None = option(None, "MPI, several nodes: push deltas (downpour) or elastic differences "
                                    "(easgd) (default $GADEI_CROSS_NODE or downpour)", choices=["downpour", "easgd"])
    progress: bool = option(True, "show a progress bar on a terminal")
    # where each job option and hyper-parameter came from, and what of the task's recipe was not
    # applied (gadei/recipe.py); recorded, never read back into the job
    origin: dict = option({}, "option -> 'recipe', 'command line', 'argument' or 'default'", cli=False)
    recipe_dropped: dict = option({}, "recipe key -> why it was not applied", cli=False)

    def __post_init__(self):
        if self.learners < 1:
            raise ValueError(f"--learners must be at least 1, not {self.learners}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.steps is not None and self.steps < self.learners:
            raise ValueError(f"--steps {self.steps} is fewer than one step per learner "
                             f"({self.learners} learners)")
        if self.weight_buffers is not None and self.weight_buffers < 3:
            raise ValueError(f"--weight-buffers must be at least 3, not {self.weight_buffers}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, not {self.epochs}")
        if self.steps is None and self.epochs is None:
            self.steps = 100 * self.learners
        for name in ("lease", "start_timeout", "ps_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds, "
                                 f"not {getattr(self, name)}")
        if not self.clip_grad_norm >= 0:
            raise ValueError(f"--clip-grad-norm must be >= 0 (0: off), not {self.clip_grad_norm}")
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
        return schedule(self.lr_schedule, protocol.rule.lr, self.steps or 0, self.lr_warmup, self.lr_floor)

    def quota(self, i: int) -> int:
        """Steps learner i runs (steps mode)."""
        q, r = divmod(self.steps, self.learners)
        return q + (i < r)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def options(cls) -> list:
        """The fields a user sets by name (the CLI's flags, `gadei.train()`'s keywords)."""
        return [f for f in fields(cls) if f.metadata.get("cli", True)]


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
        elif key == "data_dir":
            raise ValueError(f"task {task!r} reads no data; drop --data-dir")
        else:
            raise ValueError(f"unknown option --{key.replace('_', '-')}: optimizer {optimizer!r} takes "
                             f"{', '.join(hyper_params) or 'nothing'}; task {task!r} takes "
                             f"{', '.join(task_params) or 'nothing'}")
    return hyper, opts
