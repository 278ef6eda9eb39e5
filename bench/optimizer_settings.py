"""Hyper-parameters of every optimizer in the comparison (bench/optimizers.py), with sources.

One table, read by the benchmark and quoted in docs/results.md. Learning rates are the
usual starting points for small CNN/LSTM text classifiers (Kim 2014 trains with Adadelta
at its default; Feng et al. 2016 compare the same families on InsuranceQA), kept equal
across learner counts so that the comparison shows the effect of asynchrony alone.
"""

SETTINGS: dict[str, dict] = {
    # server-side rules, each run under ASGD (push every gradient, pull every step)
    "sgd": {"lr": 0.1},                               # Robbins & Monro 1951
    "msgd": {"lr": 0.02, "momentum": 0.9},            # Polyak 1964; Sutskever et al. 2013
    "adagrad": {"lr": 0.05},                          # Duchi et al. 2011
    "adadelta": {"lr": 1.0},                          # Zeiler 2012 (as in Kim 2014)
    "rmsprop": {"lr": 1e-3},                          # Hinton, lecture 6e (2012)
    "adam": {"lr": 1e-3},                             # Kingma & Ba 2015
    "adamax": {"lr": 2e-3},                           # Kingma & Ba 2015, section 7
    # learner-side protocols
    "downpour": {"lr": 0.1, "n_push": 4, "n_fetch": 4},       # Dean et al. 2012
    "easgd": {"lr": 0.1, "tau": 4, "beta": 0.9},              # Zhang et al. 2015 (beta = 0.9)
    "eamsgd": {"lr": 0.02, "tau": 4, "beta": 0.9, "delta": 0.9},   # the same, Nesterov delta
    "sync": {"lr": 0.1},                                      # bulk-synchronous SGD
}

# the metric each task reports, and a target for "time to reach"
TASKS: dict[str, dict] = {
    "qc": {"metric": "accuracy", "target": 0.85},
    "nlc": {"metric": "in_scope_accuracy", "target": 0.80},
    "qa": {"metric": "top1", "target": 0.30},
}
