"""Evaluating weights with a job's task: at the end of a job, in `gadei eval`, in a tool."""
from __future__ import annotations

import numpy as np
import torch

from gadei import task as T
from gadei.job import JobConfig


class Evaluator:
    """The task and a model built once; `evaluator(weights)` evaluates those weights."""

    def __init__(self, cfg: JobConfig):
        torch.set_num_threads(1)
        self.task = T.build(cfg.task, cfg.task_options)
        torch.manual_seed(cfg.seed)
        self.model = self.task.build_model()

    def load(self, weights: dict) -> torch.nn.Module:
        """Copy `weights` (name -> array) into the model; return it. The names and sizes must be
        the model's: weights trained with other task options are refused, not half used."""
        params = dict(self.model.named_parameters())
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        wrong = sorted(n for n in set(params) & set(weights) if np.asarray(weights[n]).size != params[n].numel())
        if missing or unexpected or wrong:
            found = "; ".join(f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                              for what, names in (("missing", missing), ("not in the model", unexpected),
                                                  ("of another size", wrong)) if names)
            raise ValueError(f"these weights do not fit the model the task's options build ({found}); "
                             "they were trained with other task options: give those options (e.g. "
                             "`gadei eval ... --interaction knrm`)")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(torch.from_numpy(np.asarray(weights[name])).reshape(p.shape))
        return self.model

    def __call__(self, weights: dict, split: str | None = None) -> dict:
        model = self.load(weights)
        model.eval()
        try:
            with torch.no_grad():
                return self.task.evaluate(model, split or getattr(self.task, "eval_split", "valid"))
        finally:
            model.train()


def job_of(checkpoint_path, data_dir: str | None = None, **task_options) -> tuple[JobConfig, dict]:
    """(the configuration, the weights) of a checkpoint, its task options updated."""
    from gadei import checkpoint
    ck = checkpoint.load(checkpoint_path)
    cfg = JobConfig(**{**ck["meta"]["config"], "resume": None, "out": str(checkpoint_path)})
    cfg.task_options = T.with_data_dir(cfg.task, data_dir, {**cfg.task_options, **task_options})
    return cfg, ck["weights"]


def load_model(path, data_dir: str | None = None):
    """(task, model) of a checkpoint: its task rebuilt with its options (`data_dir` replacing
    the one it was trained with), its model holding the checkpoint's weights, in eval mode."""
    cfg, weights = job_of(path, data_dir)
    ev = Evaluator(cfg)
    return ev.task, ev.load(weights).eval()
