"""A task's recipe: the training setting it was measured to train well with, applied wherever the
user gives no option of their own, so that `gadei train --task T --data-dir D` is the good run.

A task class declares it as a class attribute::

    recipe: ClassVar[dict] = {"optimizer": "adam", "lr": 1e-3, "epochs": 5}

Its keys are JobConfig options (optimizer, lr_schedule, lr_warmup, steps, epochs, ...) and
hyper-parameters of the recipe's optimizer (lr, beta1, weight_decay, ...). The model and data
settings of a recipe are the task's option defaults, not recipe keys. A class without `recipe`
trains from the plain defaults.

Where the user's options meet the recipe (`gadei train --help` says the same):

- an option the user gives (a flag, a keyword of `gadei.train`) wins over the recipe's value;
- the budget is one choice: `--steps` or `--epochs` replaces the recipe's, whichever it has;
- the recipe's hyper-parameters, lr schedule and warm-up were tuned with its optimizer: with
  another `--optimizer` none of them applies (that optimizer's defaults, a constant lr), only
  what the user gives;
- a recipe's lr schedule decays over the job's steps: with the user's `--epochs` it is dropped.

The job's `hyper` holds every hyper-parameter of its optimizer and its `task_options` every
option of the task, defaults included (a checkpoint rebuilds what it trained, whatever the
defaults become); where each job option, hyper-parameter and task option came from ("recipe",
the user's: "command line" or "argument", or "default") and what of the recipe was dropped, the
job keeps in `JobConfig.origin` and `JobConfig.recipe_dropped`, and so in summary.json's settings.
"""
from __future__ import annotations

import algorithms
from gadei import task as T

DEFAULT_OPTIMIZER = "sgd"
BUDGET = ("steps", "epochs")
# tuned together with the optimizer's hyper-parameters: dropped with them
WITH_OPTIMIZER = ("lr_schedule", "lr_warmup", "lr_floor")


def job_options() -> set[str]:
    from gadei.job import JobConfig
    return {f.name for f in JobConfig.options()} - {"task"}


def of(task: str) -> dict:
    """Task `task`'s declared recipe (empty if it declares none), checked: every key a job
    option or a hyper-parameter of the recipe's optimizer."""
    cls = T.task_class(task)
    recipe = getattr(cls, "recipe", None) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"task {task!r}: {cls.__name__}.recipe must be a dict of job options and "
                         f"hyper-parameters, not a {type(recipe).__name__}")
    optimizer = recipe.get("optimizer", DEFAULT_OPTIMIZER)
    hyper = algorithms.hyper_parameters(optimizer)
    unknown = sorted(set(recipe) - job_options() - set(hyper))
    if unknown:
        raise ValueError(f"task {task!r}: {cls.__name__}.recipe has {', '.join(unknown)}, neither a job "
                         f"option nor a hyper-parameter of optimizer {optimizer!r}; model and data "
                         "settings are the task's option defaults")
    if set(BUDGET) <= set(recipe):
        raise ValueError(f"task {task!r}: {cls.__name__}.recipe gives both steps and epochs")
    return dict(recipe)


def optimizer(task: str, given: dict) -> str:
    """The optimizer a job of `task` runs: the user's, else the recipe's, else the default."""
    return given.get("optimizer") or of(task).get("optimizer", DEFAULT_OPTIMIZER)


def apply(task: str, job: dict, hyper: dict, source: str, task_options: dict | None = None) -> dict:
    """JobConfig's keywords for `task`: the user's `job` options, `hyper`-parameters and
    `task_options` (each only those the user gave; `source` names where: "command line",
    "argument"), the recipe's values where the user is silent (module docstring: the rules) and
    every task option at its default, with `origin` and `recipe_dropped` saying where each value
    came from (a task option's key is "task.NAME") and what of the recipe was not applied."""
    recipe = of(task)
    recipe_optimizer = recipe.get("optimizer", DEFAULT_OPTIMIZER)
    same_optimizer = job.get("optimizer", recipe_optimizer).lower() == recipe_optimizer.lower()
    out, hyper_out = dict(job), dict(hyper)
    origin = {k: source for k in (*job, *hyper)}
    dropped = {}
    for key, value in recipe.items():
        if key in job or key in hyper:
            continue                        # the user's value (origin: source)
        if key in BUDGET and set(BUDGET) & set(job):
            dropped[key] = f"{'steps' if 'steps' in job else 'epochs'} given"
        elif (key in WITH_OPTIMIZER or key not in job_options()) and not same_optimizer:
            dropped[key] = f"it belongs to the recipe's optimizer {recipe_optimizer!r}, not {job['optimizer']!r}"
        elif key == "lr_schedule" and value != "constant" and "epochs" in job:
            dropped[key] = "it decays over steps, and epochs given"
        else:
            (out if key in job_options() else hyper_out)[key] = value
            origin[key] = "recipe"
    if out.get("lr_schedule", "constant") != "constant" and origin.get("epochs") == "recipe":
        raise ValueError(f"--lr-schedule {out['lr_schedule']} decays over the job's steps, and task {task!r}'s "
                         f"recipe trains for {out['epochs']} epochs: give --steps too")
    for budget in BUDGET:                   # one budget: the other is None because of it
        if budget in origin:
            origin.setdefault(BUDGET[1 - BUDGET.index(budget)], origin[budget])
    # every hyper-parameter's value, in the rule's order, so that summary.json shows them all
    params = algorithms.hyper_parameters(out.get("optimizer", DEFAULT_OPTIMIZER))
    hyper_out = {k: hyper_out.get(k, p.default) for k, p in params.items()
                 if k in hyper_out or p.default is not p.empty}
    for key in job_options() | set(hyper_out):
        origin.setdefault(key, "default")
    task_options = task_options or {}
    resolved = T.resolved(task, task_options)
    origin.update({f"task.{k}": source if k in task_options else "default" for k in resolved})
    return {**out, "task_options": resolved, "hyper": hyper_out, "origin": dict(sorted(origin.items())),
            "recipe_dropped": dropped}


def flags(recipe: dict) -> str:
    """A recipe as the command-line options it stands for: '--optimizer adam --lr 0.001 --epochs 5'."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items()) or "(none: the plain defaults)"
