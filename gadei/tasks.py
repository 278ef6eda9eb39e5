"""How the core meets a task: build it from the job configuration, count a batch's samples."""
from __future__ import annotations

import torch

import qa_tasks


def build_task(cfg):
    return qa_tasks.get(cfg.task, **cfg.task_options)


def batch_size(task, batch) -> int:
    """Samples in a batch: the task's `batch_size(batch)`, else the first tensor's length."""
    fn = getattr(task, "batch_size", None)
    if fn is not None:
        return int(fn(batch))
    first = batch
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def task_spec(task, options: dict | None) -> tuple[str, dict]:
    """(name, options) that rebuild `task` in another process.

    `task` is a name ("qc", "package.module:Class"), a class, or an instance whose class is
    importable and keeps each constructor option as an attribute of the same name.
    """
    options = dict(options or {})
    if isinstance(task, str):
        return task, options
    cls = task if isinstance(task, type) else type(task)
    if cls.__module__ == "__main__":
        raise ValueError(f"task class {cls.__name__} is defined in __main__, which learner processes "
                         "cannot import: move it into a module")
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not isinstance(task, type):
        for key in qa_tasks.task_options(name):
            if key in options:
                continue
            if not hasattr(task, key):
                raise ValueError(f"cannot tell {cls.__name__}'s option {key!r} from the instance: "
                                 "pass the task by name with task_options={...}")
            options[key] = getattr(task, key)
    return name, options
