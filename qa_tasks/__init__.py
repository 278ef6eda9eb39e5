"""Workloads. A task is any class with this interface (the built-in ones and a user's alike):

    build_model() -> torch.nn.Module
        A freshly initialised model (the runtime seeds torch before calling it).
    batches(learner: int, learners: int, seed: int) -> Iterable[batch]
        One epoch of learner `learner`'s share of the training data (of `learners` in all),
        shuffled by `seed`. The runtime calls it again, with another seed, for the next epoch.
    loss(model, batch) -> torch.Tensor
        A scalar training loss; the runtime calls backward() on it.
    evaluate(model, split: str) -> dict[str, float]
        The task's metrics on a split ("valid", "test", ...).

Optional attributes: `eval_split` (the split the final metrics use, default "valid") and
`batch_size(batch) -> int` (samples in a batch, for samples/s; default: len of the first tensor).

Built-in tasks take their options as keyword-only constructor arguments with type annotations
and defaults (`gadei train --task qc --filters 100` passes filters=100); `data` selects
"real" data (from `data_dir`, else $GADEI_DATA) or the small "generated" variant.
"""
from __future__ import annotations

import importlib
import inspect

# name -> "module:Class", imported lazily
TASKS: dict[str, str] = {
    "probe": "qa_tasks.probe:Probe",
    "qc": "qa_tasks.qc:QC",
    "nlc": "qa_tasks.nlc:NLC",
    "qa": "qa_tasks.qa:QA",
    "asr": "qa_tasks.asr:ASR",
    "lra": "qa_tasks.lra:LRA",
}


def task_class(name: str):
    """The class of a built-in task name, or of a user's "package.module:Class"."""
    if ":" in name:
        spec = name
    elif name in TASKS:
        spec = TASKS[name]
    else:
        raise ValueError(f"unknown task {name!r}: use a built-in task ({', '.join(sorted(TASKS))}) "
                         "or 'package.module:Class' for your own")
    module, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import task {spec!r}: {e}") from e


def task_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options a task's constructor accepts."""
    params = inspect.signature(task_class(name)).parameters
    return {k: p for k, p in params.items()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def get(name: str, **options):
    """Instantiate task `name` with `options` (unknown options are an error)."""
    unknown = sorted(set(options) - set(task_options(name)))
    if unknown:
        raise ValueError(f"task {name!r} has no option {', '.join(unknown)}; "
                         f"it takes {', '.join(task_options(name)) or 'none'}")
    return task_class(name)(**options)
