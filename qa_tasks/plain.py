"""Train one task in one process with torch's Adam, no parameter server: the reference the PS
runs are compared with, and the loop the results pages' tuning tables were measured with.

    python -m qa_tasks.plain nlc --data-dir D --epochs 16 --lr 2e-3 --lr-schedule cosine --seed 1
    python -m qa_tasks.plain qc --data-dir D --epochs 6 --lr 1e-3 --json runs/qc.json
    python -m qa_tasks.plain mypackage.tasks:MyTask --steps 500

Every option of the task's constructor is a flag (`--penalty 0`, `--model cnn`). The loop: seed
torch with `--seed`, build the model, then Adam over epoch after epoch of `task.batches(0, 1,
1000 * seed + epoch)`; `--lr-schedule` decays the lr by step with the PS's own schedules
(algorithms/schedules.py), so a plain run and a PS run of the same length see the same rates.
It prints one JSON line per evaluation (every `--eval-every` steps, or after every epoch with
`--epochs`) and the final metrics of each of `--splits`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from algorithms.schedules import SCHEDULES, schedule
from gadei import task as T   # task names and option text, as `gadei train` reads them

LOOP_OPTIONS = ("steps", "epochs", "lr", "lr_schedule", "seed", "threads", "eval_every", "splits",
                "save", "json")


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """A model's state_dict as an .npz (name -> array), which numpy reads back without pickle."""
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def parser(task: str, **defaults) -> argparse.ArgumentParser:
    """The task's options as flags (read as `gadei train` reads them), then the loop's own."""
    p = argparse.ArgumentParser(description=f"Train the {task} task in one process (plain Adam loop).")
    helps = T.option_help(task)
    for name, param in T.options(task).items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=lambda text, param=param, flag=flag: T.coerce(text, param, flag),
                       default=param.default, required=param.default is inspect.Parameter.empty,
                       help=helps.get(name))
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="Adam steps (default 1000)")
    length.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant")
    p.add_argument("--seed", type=int, default=0, help="torch's seed, and the batch order's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N steps (default: after every epoch, or every 250 steps)")
    p.add_argument("--splits", help="comma-separated splits the final metrics use (default: the "
                   "task's eval_split)")
    p.add_argument("--save", help="write the final weights here (.npz)")
    p.add_argument("--json", help="write the settings, the evaluations and the final metrics here")
    p.set_defaults(**defaults)
    return p


def train(task, *, steps: int | None = None, epochs: int | None = None, lr: float = 1e-3,
          lr_schedule: str = "constant", seed: int = 0, eval_every: int = 0,
          splits: tuple[str, ...] | None = None, log=lambda line: print(line, flush=True)):
    """Train `task` for `steps` Adam steps or `epochs` epochs: (model, record), the record
    holding every step's loss, every evaluation (on the task's eval_split: every `eval_every`
    steps and after the last, or with epochs and no `eval_every` after every epoch; 0 with
    steps: none) and the final metrics of each of `splits` (default: the eval_split)."""
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if epochs is not None:   # the schedule needs the total: count the batches of each epoch
        steps = sum(sum(1 for _ in task.batches(0, 1, 1000 * seed + e)) for e in range(epochs))
        eval_every = eval_every or None                    # None: after every epoch
    rate = schedule(lr_schedule, lr, steps)
    split, evals = getattr(task, "eval_split", "valid"), []
    splits = (split,) if splits is None else splits

    def evaluate(step: int, epoch: int) -> None:
        evals.append({"step": step, "epoch": epoch, "seconds": round(time.perf_counter() - t0, 1),
                      "train_loss": float(np.mean(losses[-50:])), split: task.evaluate(model, split)})
        log(json.dumps(evals[-1]))

    t0, step, epoch, losses = time.perf_counter(), 0, 0, []
    while step < steps:
        for batch in task.batches(0, 1, 1000 * seed + epoch):
            if rate is not None:
                for group in opt.param_groups:
                    group["lr"] = rate(step)
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, batch)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if eval_every != 0 and (step == steps or (eval_every and step % eval_every == 0)):
                evaluate(step, epoch + 1)
            if step == steps:
                break
        epoch += 1
        if eval_every is None and step < steps:
            evaluate(step, epoch)
    record = {"evaluations": evals, "steps": step, "seconds": round(time.perf_counter() - t0, 1),
              "final": {s: task.evaluate(model, s) for s in splits}, "losses": losses}
    log(json.dumps({"final": record["final"], "seconds": record["seconds"]}))
    return model, record


def main(argv=None, task: str | None = None, **defaults) -> dict:
    """The command line: `python -m qa_tasks.plain TASK [options]`, or a task module's own
    `main` that fixes `task` (and, in `defaults`, the loop's defaults, e.g. LRA's --splits)."""
    if task is None:
        first = argparse.ArgumentParser(add_help=False)
        first.add_argument("task", help="a built-in task name or package.module:Class")
        known, argv = first.parse_known_args(argv)
        task = known.task
    args = vars(parser(task, **defaults).parse_args(argv))
    loop = {k: args.pop(k) for k in LOOP_OPTIONS}
    if loop["epochs"] is None:
        loop["steps"] = loop["steps"] or 1000
        loop["eval_every"] = loop["eval_every"] or 250
    torch.set_num_threads(loop["threads"])
    instance = T.build(task, args)
    model, record = train(instance, steps=loop["steps"], epochs=loop["epochs"], lr=loop["lr"],
                          lr_schedule=loop["lr_schedule"], seed=loop["seed"],
                          eval_every=loop["eval_every"],
                          splits=tuple(loop["splits"].split(",")) if loop["splits"] else None)
    record = {"task": task, "settings": {**args, **loop}, **record}
    if loop["save"]:
        Path(loop["save"]).parent.mkdir(parents=True, exist_ok=True)
        save_weights(model, loop["save"])
    if loop["json"]:
        Path(loop["json"]).parent.mkdir(parents=True, exist_ok=True)
        Path(loop["json"]).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
