"""The `gadei` command: train, eval, inspect, clean.

    gadei train --task T --optimizer O --learners N [--steps S | --epochs E] [--out DIR] ...
    gadei eval --task T --checkpoint DIR [--split S]
    gadei inspect [JOB] [--json]
    gadei attention --checkpoint DIR [--sentence S ...] [--out PNG]
    gadei clean

Options a command does not know (`--lr 0.1`, `--filters 100`) go to the optimizer if it takes
them, else to the task; anything neither takes is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO = ["--task", "probe", "--learners", "2", "--steps", "400", "--lr", "1", "--out", "runs/demo"]


def _pairs(extra: list[str]) -> dict[str, str]:
    """['--lr', '0.1', '--fine', '--model=cnn'] -> {'lr': '0.1', 'fine': 'true', 'model': 'cnn'}"""
    out, i = {}, 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ValueError(f"unexpected argument {tok!r}: options look like --name value")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value = extra[i + 1]
                i += 1
            else:
                value = "true"
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _task_data(task: str, data_dir: str | None, opts: dict) -> dict:
    import qa_tasks
    if data_dir is not None:
        if "data_dir" not in qa_tasks.task_options(task):
            raise ValueError(f"task {task!r} reads no data; drop --data-dir")
        opts["data_dir"] = data_dir
    return opts


def cmd_train(args, extra) -> int:
    from gadei.job import JobConfig, split_options
    from gadei.train import run
    hyper, opts = split_options(args.task, args.optimizer, _pairs(extra))
    cfg = JobConfig(task=args.task, task_options=_task_data(args.task, args.data_dir, opts),
                    optimizer=args.optimizer, hyper=hyper, lr_schedule=args.lr_schedule,
                    lr_warmup=args.lr_warmup,
                    learners=args.learners, steps=args.steps, epochs=args.epochs, seed=args.seed,
                    out=args.out, job=args.job, checkpoint_every=args.checkpoint_every, resume=args.resume,
                    slots=args.slots, lease=args.lease, backend=args.backend, eval_every=args.eval_every,
                    sync_every=args.sync_every, cross_node=args.cross_node,
                    progress=not args.no_progress and sys.stderr.isatty())
    if args.backend == "mpi":
        from gadei.mpi import run_mpi
        summary = run_mpi(cfg)
        if summary is None:      # not the rank that reports
            return 0
    else:
        summary = run(cfg)
    _report(summary, Path(cfg.out))
    return 0


def _report(summary: dict, out: Path) -> None:
    led = summary["ledger"]
    from gadei import ledger as L
    committed = sum(L.count(e["committed"]) for e in led.values())
    applied = sum(L.count(e["applied"]) for e in led.values())
    discarded = sum(len(e["discarded"]) for e in led.values())
    rejected = sum(len(e["rejected"]) for e in led.values())
    s = summary["settings"]
    print(f"trained {s['task']} with {s['optimizer']} on {s['learners']} learners in "
          f"{summary['wall_time_s']:.1f} s: {applied} updates applied "
          f"({summary['updates_per_s']:.0f}/s), {committed} committed, {discarded} discarded, "
          f"{rejected} rejected, {summary['restarts']['learners']} learner and "
          f"{summary['restarts']['ps']} PS restarts")
    if summary.get("final_metrics"):
        print("final metrics:", json.dumps(summary["final_metrics"]))
    print(f"summary: {out / 'summary.json'}   metrics: {out / 'metrics.jsonl'}   "
          f"checkpoint: {out / 'checkpoint'}")


def cmd_demo() -> int:
    print("gadei: no arguments, so running the demo: the probe task (deterministic integer gradients) "
          "with 2 learner processes and the shared-memory PS, 400 updates, then the exactly-once audit.\n"
          "Train a real workload with e.g. `gadei train --task qc --learners 2`; see `gadei train --help`.",
          flush=True)
    code = main(["train", *DEMO])
    from qa_tasks.probe import audit
    problems = audit("runs/demo")
    if problems:
        print("audit FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("audit passed: the final weights equal minus the sum of exactly the gradients the ledger "
          "says were applied, and every committed gradient was applied exactly once.")
    return code


def cmd_eval(args, extra) -> int:
    from gadei import checkpoint
    from gadei.job import JobConfig, split_options
    from gadei.train import evaluate_weights
    ck = checkpoint.load(args.checkpoint)
    cfg = JobConfig(**{**ck["meta"]["config"], "resume": None, "out": str(args.checkpoint)})
    task = args.task or cfg.task
    if task != cfg.task:
        raise ValueError(f"the checkpoint was trained on task {cfg.task!r}, not {task!r}")
    _, opts = split_options(task, cfg.optimizer, _pairs(extra))
    cfg.task_options = _task_data(task, args.data_dir, {**cfg.task_options, **opts})
    metrics = evaluate_weights(cfg, ck["weights"], args.split)
    print(json.dumps(metrics))
    return 0


def cmd_attention(args, extra) -> int:
    """Render the self-attention of a trained nlc model over a few sentences as a PNG."""
    from gadei import checkpoint
    from gadei.job import JobConfig
    from gadei.train import Evaluator
    from qa_tasks.attention_plot import render_attention
    ck = checkpoint.load(args.checkpoint)
    cfg = JobConfig(**{**ck["meta"]["config"], "resume": None, "out": str(args.checkpoint)})
    cfg.task_options = _task_data(cfg.task, args.data_dir, dict(cfg.task_options))
    ev = Evaluator(cfg)
    model = ev.load(ck["weights"]).eval()
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"the checkpoint's model ({cfg.task}, {type(model).__name__}) has no "
                         "self-attention: train --task nlc --model selfattn")
    sentences = args.sentence or ["how do i check my account balance", "set an alarm for seven tomorrow",
                                  "what is the weather like in paris", "please transfer money to my savings"]
    render_attention(ev.task, model, sentences, args.out)
    print(f"attention of {len(sentences)} sentences written to {args.out}")
    return 0


def cmd_clean(args, extra) -> int:
    from gadei.supervisor import sweep_stale
    removed = sweep_stale(log=lambda m: None)
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} stale segment(s) removed")
    return 0


def cmd_inspect(args, extra) -> int:
    from gadei.inspect import describe_all, render
    jobs = describe_all(args.job)
    if args.json:
        print(json.dumps(jobs, indent=1))
    else:
        print(render(jobs))
    return 0


def parser() -> argparse.ArgumentParser:
    # no abbreviations: `--data generated` is a task option, not a prefix of --data-dir
    p = argparse.ArgumentParser(prog="gadei", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", parser_class=lambda **kw: argparse.ArgumentParser(allow_abbrev=False, **kw))
    t = sub.add_parser("train", help="train a task through the parameter server")
    t.add_argument("--task", default="probe", help="built-in task or package.module:Class")
    t.add_argument("--optimizer", default="sgd")
    t.add_argument("--learners", type=int, default=2)
    t.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"], default="constant",
                   help="the PS's learning rate by update count, decayed over --steps (ASGD and SYNC rules)")
    t.add_argument("--lr-warmup", type=int, default=0, metavar="UPDATES",
                   help="raise the PS's learning rate linearly over the first UPDATES updates")
    t.add_argument("--backend", choices=["local", "mpi"], default="local")
    t.add_argument("--sync-every", type=int, help="MPI, several nodes: node updates between "
                   "exchanges with the global PS (default $GADEI_SYNC_EVERY or 20)")
    t.add_argument("--cross-node", choices=["downpour", "easgd"], help="MPI, several nodes: push "
                   "deltas (downpour) or elastic differences (easgd) (default $GADEI_CROSS_NODE or downpour)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="total steps over all learners")
    g.add_argument("--epochs", type=int, help="epochs of each learner's shard")
    t.add_argument("--data-dir", help="folder holding the datasets (default: $GADEI_DATA)")
    t.add_argument("--out", default="runs/job")
    t.add_argument("--checkpoint-every", type=int, default=0, help="updates between checkpoints")
    t.add_argument("--resume", help="output directory or checkpoint to continue from")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--job", help="job name (default: from --out)")
    t.add_argument("--slots", type=int, default=2, help="gradient slots per learner")
    t.add_argument("--lease", type=float, default=60.0, help="seconds before a silent process is replaced")
    t.add_argument("--eval-every", type=float, default=0.0,
                   help="seconds between evaluations written to metrics.jsonl (0: only at the end)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--task")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data-dir")
    e.add_argument("--split")
    e.set_defaults(fn=cmd_eval)
    at = sub.add_parser("attention", help="draw an nlc model's self-attention over sentences (PNG)")
    at.add_argument("--checkpoint", required=True)
    at.add_argument("--out", default="attention.png")
    at.add_argument("--sentence", action="append", help="a sentence to show (repeatable)")
    at.add_argument("--data-dir")
    at.set_defaults(fn=cmd_attention)
    c = sub.add_parser("clean", help="remove shared-memory segments of dead jobs")
    c.set_defaults(fn=cmd_clean)
    i = sub.add_parser("inspect", help="show running jobs: learners, slots, versions, ledger")
    i.add_argument("job", nargs="?")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    from gadei.serve.cli import add_commands
    add_commands(sub)        # serve, tenants (gadei/serve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["train"]:
        return cmd_demo()
    p = parser()
    args, extra = p.parse_known_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    from gadei.supervisor import JobError
    from gadei.checkpoint import CheckpointError
    try:
        return args.fn(args, extra)
    except (ValueError, FileNotFoundError, JobError, CheckpointError) as e:
        print(f"gadei {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
