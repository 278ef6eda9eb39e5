"""Optimizers: server-side update rules applied by the parameter server to flat float32 buffers.

One registry, one way in::

    rule = algorithms.get("sgd", lr=0.1)
    state = rule.init_state(n)                      # dict[str, np.ndarray], float32 (+ counters)
    rule.apply(weights, grad, state)                # in place
    rule.apply(weights, grad, state, out_weights=w2, out_state=s2)   # out of place (PS double buffering)

Adding a rule: write one file in this folder with a pure update function and a thin class
(see ``sgd.py``), then add one line to ``RULES`` below.
"""
from __future__ import annotations

import importlib
import inspect

# name -> "module:Class"; imported lazily so that `import algorithms` stays cheap
RULES: dict[str, str] = {
    "sgd": "algorithms.sgd:SGD",
    "msgd": "algorithms.msgd:MSGD",
    "adagrad": "algorithms.adagrad:Adagrad",
    "adadelta": "algorithms.adadelta:Adadelta",
    "rmsprop": "algorithms.rmsprop:RMSprop",
    "adam": "algorithms.adam:Adam",
    "adamax": "algorithms.adamax:Adamax",
}


# learner-side protocols; a plain rule name runs ASGD with that rule on the PS
PROTOCOLS: dict[str, str] = {
    "asgd": "algorithms.asgd:ASGD",
}


def protocol(name: str, **hyper):
    """The learner-side protocol that optimizer `name` runs (ASGD for a plain rule)."""
    spec = PROTOCOLS.get(name.lower(), PROTOCOLS["asgd"])
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)()


def names() -> list[str]:
    return sorted(RULES)


def rule_class(name: str):
    key = name.lower()
    if key not in RULES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(names())}")
    module, cls = RULES[key].split(":")
    return getattr(importlib.import_module(module), cls)


def hyper_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword hyper-parameters `get(name, ...)` accepts, with their defaults."""
    params = inspect.signature(rule_class(name)).parameters
    return {k: p for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
            or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def get(name: str, **hyper):
    """Build the update rule `name` with hyper-parameters `hyper` (unknown keys are an error)."""
    cls = rule_class(name)
    unknown = sorted(set(hyper) - set(hyper_parameters(name)))
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyper-parameter {', '.join(unknown)}; "
                         f"it takes {', '.join(hyper_parameters(name)) or 'none'}")
    return cls(**hyper)
