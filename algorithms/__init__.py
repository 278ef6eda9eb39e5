"""Optimizers: server-side update rules applied by the parameter server to flat float32 buffers.

One registry, one way in::

    rule = algorithms.get("sgd", lr=0.1)
    state = rule.init_state(n)                      # dict[str, np.ndarray], float32 (+ counters)
    rule.apply(weights, grad, state)                # in place; True when grad was finite
    rule.apply(weights, grad, state, out_weights=w2, out_state=s2)   # out of place (PS double buffering)

Adding a rule: write one file in this folder with a pure update function and a thin class
(see ``sgd.py``), then add one line to ``RULES`` below. The built-in rules' math is compiled
(``_kernels.c``, Note [single-pass kernels] in ``rule.py``); a new rule may be numpy or torch.
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
    "downpour": "algorithms.downpour:Downpour",
    "easgd": "algorithms.easgd:EASGD",
    "eamsgd": "algorithms.easgd:EAMSGD",
    "sync": "algorithms.sync:Sync",
}


def protocol(name: str, **hyper):
    """The learner-side protocol that optimizer `name` runs: the protocol of that name, or
    ASGD around the rule of that name."""
    key = name.lower()
    if key in PROTOCOLS:
        return _make(key, PROTOCOLS[key], hyper)
    from algorithms.asgd import ASGD
    return ASGD(rule=get(key, **hyper))


def _make(name: str, spec: str, hyper: dict):
    """Build optimizer `name` (a rule or a protocol) from `hyper`; unknown keys are an error."""
    cls = _load(spec)
    takes = {k for k in _params(cls) if k != "rule"}
    unknown = sorted(set(hyper) - takes)
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyper-parameter {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(takes)) or 'none'}")
    return cls(**hyper)


def _load(spec: str):
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)


def _params(cls) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls).parameters.items()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def names() -> list[str]:
    return sorted(RULES) + sorted(PROTOCOLS)


def rule_class(name: str):
    key = name.lower()
    if key in RULES:
        return _load(RULES[key])
    if key in PROTOCOLS:
        return _load(PROTOCOLS[key])
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(names())}")


def hyper_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword hyper-parameters `get(name, ...)` accepts, with their defaults."""
    return {k: p for k, p in _params(rule_class(name)).items() if k != "rule"}


def get(name: str, **hyper):
    """The server-side update rule of optimizer `name` (for a protocol: the rule its PS
    applies) with hyper-parameters `hyper`; unknown keys are an error."""
    key = name.lower()
    if key in PROTOCOLS:
        return _make(key, PROTOCOLS[key], hyper).rule
    if key not in RULES:
        rule_class(key)      # the error that lists what there is
    return _make(key, RULES[key], hyper)
