"""`gadei.train()`: run a job to the end and return its summary (the CLI's `gadei train` too).

Writes into `out/`: `summary.json` (settings, times, rates, final metrics, the ledger),
`metrics.jsonl` (one line a second), `checkpoint` (the final state) and `logs/`.
"""
from __future__ import annotations

import inspect

import algorithms
from gadei import recipe
from gadei import task as T
from gadei.job import JobConfig


def train(task="probe", *, task_options: dict | None = None, evaluate: bool = True, **options) -> dict:
    """Train `task` through the shared-memory PS; return the summary. Blocks until the job ends.

    `task` is a registered name, "package.module:Class", a task class or instance. `options`
    are the job's (JobConfig's fields: optimizer, learners, steps, out, ...) and the
    optimizer's hyper-parameters (lr=0.1, ...); any other name is an error. The task's recipe
    (gadei/recipe.py) sets what `options` leaves out; summary["settings"]["origin"] says which.
    """
    name, opts = T.spec(task, task_options)
    return run(config(name, opts, options), evaluate=evaluate)


def config(task: str, task_options: dict, options: dict, source: str = "argument") -> JobConfig:
    """The JobConfig of `options` (those the caller gave: job options by name, the rest the
    optimizer's hyper-parameters), the task's recipe filling in the rest (gadei/recipe.py).
    A keyword given as None counts as not given (`steps=None, epochs=3` is `epochs=3`)."""
    job = {f.name for f in JobConfig.options()}
    options = {k: v for k, v in options.items() if v is not None}
    optimizer = recipe.optimizer(task, options)
    hyper = {k: v for k, v in options.items() if k not in job}
    known = algorithms.hyper_parameters(optimizer)
    unknown = sorted(set(hyper) - set(known))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)}: job options are {', '.join(sorted(job))}; "
                         f"optimizer {optimizer!r} takes {', '.join(known) or 'nothing'}")
    given = {k: v for k, v in options.items() if k in job and k != "task"}
    for path in ("out", "resume"):
        if path in given:
            given[path] = str(given[path])
    return JobConfig(task=task, **recipe.apply(task, given, hyper, source, task_options))


def run(cfg: JobConfig, evaluate: bool = True) -> dict | None:
    """Run a configured job on its backend; the summary (None on an MPI rank that does not report)."""
    if cfg.backend == "mpi":
        from gadei.mpi import run_mpi
        return run_mpi(cfg)
    from gadei.driver import run_local
    return run_local(cfg, evaluate=evaluate)


# the keywords train() takes, generated from JobConfig (for help() and editors)
train.__signature__ = inspect.Signature(
    [inspect.Parameter("task", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="probe"),
     inspect.Parameter("task_options", inspect.Parameter.KEYWORD_ONLY, default=None),
     inspect.Parameter("evaluate", inspect.Parameter.KEYWORD_ONLY, default=True)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
       for f in JobConfig.options() if f.name != "task"]
    + [inspect.Parameter("hyper", inspect.Parameter.VAR_KEYWORD)])
