"""The task contract, and how the core finds a task by name without importing any workload.

A task is any class with this interface (the built-in ones and a user's alike)::

    build_model() -> torch.nn.Module
        A freshly initialised model (the runtime seeds torch before calling it).
    batches(learner: int, learners: int, seed: int) -> Iterable[batch]
        One epoch of learner `learner`'s share of the training data (of `learners` in all),
        shuffled by `seed`. The runtime calls it again, with another seed, for the next epoch.
    loss(model, batch) -> torch.Tensor
        A scalar training loss; the runtime calls backward() on it.
    evaluate(model, split: str) -> dict[str, float]
        The task's metrics on a split ("valid", "test", ...).

Optional: `eval_split` (the split the final metrics use, default "valid") and
`batch_size(batch) -> int` (samples in a batch, for samples/s; default: the first tensor's
length).

A task's options are its constructor's keyword arguments with defaults; a dataclass's fields
are exactly that, and `option(default, "help")` gives a field its line in `--help`.
`gadei train --task qc --filters 100` passes filters=100.

Names: a task registered under the entry-point group `gadei.tasks` (the built-in ones are, in
setup.py; a third-party package adds its own the same way), or "package.module:Class".
Either is imported only when asked for.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any, Iterable, Protocol, runtime_checkable

GROUP = "gadei.tasks"


@runtime_checkable
class Task(Protocol):
    def build_model(self) -> Any: ...
    def batches(self, learner: int, learners: int, seed: int) -> Iterable: ...
    def loss(self, model, batch) -> Any: ...
    def evaluate(self, model, split: str) -> dict[str, float]: ...


def option(default, help: str, **kw):
    """A task option: a dataclass field with a default and a line of help."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def registered() -> dict[str, str]:
    """Task name -> "module:Class" of every task under the `gadei.tasks` entry-point group."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def packages() -> dict[str, str]:
    """Task name -> the installed package (distribution) that registers it ("gadei": built in)."""
    return {ep.name: (ep.dist.name if ep.dist else "?") for ep in entry_points(group=GROUP)}


# where the built-in tasks lived before the workloads became sub-packages: a checkpoint written
# then names its task so when it was trained from Python with a task instance
MOVED = {"qa_tasks.probe:Probe": "probe", "qa_tasks.qc:QC": "qc", "qa_tasks.nlc:NLC": "nlc",
         "qa_tasks.qa:QA": "qa", "qa_tasks.asr:ASR": "asr", "qa_tasks.lra:LRA": "lra"}


def task_class(name: str) -> type:
    """The class of a registered task name, or of a "package.module:Class" spec."""
    name = MOVED.get(name, name)
    if ":" in name:
        spec = name
    else:
        known = registered()
        if name not in known:
            raise ValueError(f"unknown task {name!r}: use a registered task ({', '.join(sorted(known)) or 'none'}; "
                             "`gadei tasks` lists them) or 'package.module:Class' for your own")
        spec = known[name]
    module, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import task {spec!r}: {e}") from e


def options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options a task's constructor accepts."""
    params = inspect.signature(task_class(name)).parameters
    return {k: p for k, p in params.items()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def resolved(name: str, opts: dict) -> dict:
    """`opts` with every option they leave out at task `name`'s default: what a job records (its
    checkpoint, summary.json), so that a later change of a default does not change what an old
    checkpoint rebuilds."""
    defaults = {k: p.default for k, p in options(name).items() if p.default is not p.empty}
    return {**defaults, **opts}


def option_help(name: str) -> dict[str, str]:
    """Each option's line of help, where the task gives one (`option(default, help)`)."""
    cls = task_class(name)
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def summary_line(name: str) -> str:
    """The first line of a task class's docstring."""
    doc = inspect.getdoc(task_class(name)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def build(name: str, opts: dict | None = None):
    """Instantiate task `name` with `opts` (an option it does not take is an error)."""
    opts = dict(opts or {})
    known = options(name)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(f"task {name!r} has no option {', '.join(unknown)}; it takes {', '.join(known) or 'none'}")
    return task_class(name)(**opts)


def with_data_dir(name: str, data_dir: str | None, opts: dict) -> dict:
    """`opts` with `data_dir` set, for a task that reads data (an error for one that reads none)."""
    if data_dir is None:
        return opts
    if "data_dir" not in options(name):
        raise ValueError(f"task {name!r} reads no data; drop --data-dir")
    return {**opts, "data_dir": data_dir}


def kind(param: inspect.Parameter) -> type:
    """bool, int, float or str: what a keyword parameter takes, by its default's type, else by
    its annotation ("int | None")."""
    ann = param.annotation if param.annotation is not inspect.Parameter.empty else None
    default = param.default
    of_default = type(default) if default not in (None, inspect.Parameter.empty) else None
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)) if ann is not None else ""
    for t in (bool, int, float):
        if of_default is t or text.startswith(t.__name__):
            return t
    return str


def coerce(value: str, param: inspect.Parameter, what: str):
    """Convert a command-line string to the type a keyword parameter takes (`kind`)."""
    k = kind(param)
    try:
        if k is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if k in (int, float):
            return k(value)
    except ValueError:
        raise ValueError(f"{what}: cannot read {value!r} as {k.__name__}") from None
    return value


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
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 1


def spec(task, opts: dict | None) -> tuple[str, dict]:
    """(name, options) that rebuild `task` in another process.

    `task` is a name ("qc", "package.module:Class"), a class, or an instance whose class is
    importable and keeps each option as an attribute of the same name (a dataclass does).
    """
    opts = dict(opts or {})
    if isinstance(task, str):
        return task, opts
    cls = task if isinstance(task, type) else type(task)
    if cls.__module__ == "__main__":
        raise ValueError(f"task class {cls.__name__} is defined in __main__, which learner processes "
                         "cannot import: move it into a module")
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not isinstance(task, type):
        for key in options(name):
            if key in opts:
                continue
            if not hasattr(task, key):
                raise ValueError(f"cannot tell {cls.__name__}'s option {key!r} from the instance: "
                                 "pass the task by name with task_options={...}")
            opts[key] = getattr(task, key)
    return name, opts
