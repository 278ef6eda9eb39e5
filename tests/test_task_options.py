"""Every built-in workload's options are typed dataclass fields, each with a line of help, and an
instance tells its options back (the runtime rebuilds a task in each learner from them)."""
from __future__ import annotations

import dataclasses

import pytest

from gadei import task as T

WORKLOADS = ["qc", "nlc", "qa", "asr", "lra"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_options_are_the_dataclass_fields_each_with_help(name):
    cls = T.task_class(name)
    assert dataclasses.is_dataclass(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(T.options(name)) == fields
    helps = T.option_help(name)
    assert [f for f in fields if not helps[f].strip()] == []
    assert {"data", "data_dir"} <= set(fields)
    with pytest.raises(TypeError):          # keyword-only, as the constructors always were
        cls("generated")


@pytest.mark.parametrize("name", WORKLOADS)
def test_an_instance_gives_back_its_options(name):
    task = T.build(name, {"data": "generated"})
    spec_name, options = T.spec(task, None)
    assert spec_name == T.registered()[name]
    assert options == {k: p.default for k, p in T.options(name).items()} | {"data": "generated"}


def test_weights_that_do_not_fit_the_model_are_refused_by_name():
    """A checkpoint rebuilt with other task options: missing, extra or resized weights are an
    error naming them, never a model half loaded."""
    import numpy as np

    from gadei.evaluate import Evaluator
    from gadei.job import JobConfig
    ev = Evaluator(JobConfig(task="probe", task_options={"probe_size": 8}))
    w = np.arange(8, dtype=np.float32)
    assert ev.load({"w": w}).w.detach().numpy().tolist() == w.tolist()
    for weights, found in (({"w": w, "match.embed": w}, "not in the model: match.embed"),
                           ({}, "missing: w"),
                           ({"w": w[:4]}, "of another size: w")):
        with pytest.raises(ValueError, match=f"do not fit the model .*{found}"):
            ev.load(weights)
