"""The `gadei` command: train, eval, inspect, clean.

    gadei train --task T --optimizer O --learners N [--steps S | --epochs E] [--out DIR] ...
    gadei eval --task T --checkpoint DIR [--split S]
    gadei inspect [JOB] [--json]
    gadei tasks
    gadei clean

Options a command does not know (`--lr 0.1`, `--filters 100`, `--data-dir D`) go to the
optimizer if it takes them, else to the task; anything neither takes is an error.
`gadei train --task T --optimizer O --help` lists both. What `gadei train` is not given, the
task's recipe sets (gadei/recipe.py): `gadei train --task qc --data-dir D` is qc's measured run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO = ["--task", "probe", "--learners", "2", "--steps", "400", "--out", "runs/demo"]   # lr 1: the probe's recipe


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


def cmd_train(args, extra) -> int:
    from gadei import recipe
    from gadei.job import JobConfig, split_options
    from gadei.train import run
    # only the flags given are in `args` (their default is SUPPRESS): the recipe fills the rest
    given = {f.name: getattr(args, f.name) for f in JobConfig.options() if hasattr(args, f.name)}
    task = given.pop("task", "probe")
    hyper, opts = split_options(task, recipe.optimizer(task, given), _pairs(extra))
    summary = run(JobConfig(task=task, **recipe.apply(task, given, hyper, "command line", opts)))
    if summary is not None:          # None: an MPI rank that does not report
        _report(summary, Path(summary["settings"]["out"]))
    return 0


def _report(summary: dict, out: Path) -> None:
    led = summary["ledger"]
    from gadei import ledger as L
    committed = sum(L.count(e["committed"]) for e in led.values())
    applied = sum(L.applied_count(e) for e in led.values())
    discarded = sum(len(e["discarded"]) for e in led.values())
    rejected = sum(L.rejected_count(e) for e in led.values())
    s = summary["settings"]
    print(f"trained {s['task']} with {s['optimizer']} on {s['learners']} learners in "
          f"{summary['wall_time_s']:.1f} s: {applied} updates applied "
          f"({summary['updates_per_s']:.0f}/s), {committed} committed, {discarded} discarded, "
          f"{rejected} rejected, {summary['restarts']['learners']} learner and "
          f"{summary['restarts']['ps']} PS restarts")
    values = {**s, **s["hyper"]}
    used = {k: values[k] for k, o in sorted(s.get("origin", {}).items(), key=lambda kv: kv[0] != "optimizer")
            if o == "recipe" and values[k] is not None}        # (steps is None when epochs is the budget)
    if used or s.get("recipe_dropped"):
        from gadei.recipe import flags
        print(f"{s['task']}'s recipe: {flags(used) if used else 'nothing applied'}"
              + "".join(f"; not {k} ({why})" for k, why in s.get("recipe_dropped", {}).items()))
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
    from gadei.probe import audit
    problems = audit("runs/demo")
    if problems:
        print("audit FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("audit passed: the final weights equal minus the sum of exactly the gradients the ledger "
          "says were applied, and every committed gradient was applied exactly once.")
    return code


def cmd_eval(args, extra) -> int:
    from gadei.evaluate import Evaluator, job_of
    from gadei.job import split_options
    cfg, weights = job_of(args.checkpoint)
    task = args.task or cfg.task
    if task != cfg.task:
        raise ValueError(f"the checkpoint was trained on task {cfg.task!r}, not {task!r}")
    _, opts = split_options(task, cfg.optimizer, _pairs(extra))
    cfg.task_options = {**cfg.task_options, **opts}
    print(json.dumps(Evaluator(cfg)(weights, args.split)))
    return 0


def cmd_tasks(args, extra) -> int:
    from gadei import task as T
    packages = T.packages()
    for name, spec in sorted(T.registered().items()):
        try:
            line = T.summary_line(name)
        except ValueError as e:           # a registered task that does not import: say so
            line = f"(cannot load: {e})"
        where = "built in" if packages.get(name) == "gadei" else f"from {packages.get(name)}"
        print(f"{name:<8} {line}   [{where}: {spec}]")
    print("(`gadei train --task T --help`: T's options and recipe, the setting it trains with by default)")
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


def _add_job_options(t: argparse.ArgumentParser, task: str, recipe: dict) -> None:
    """`gadei train`'s flags, generated from JobConfig's fields (gadei/job.py). A flag not given
    is absent from the parsed arguments (SUPPRESS), so the task's `recipe` can fill it in."""
    from gadei.job import JobConfig
    for f in JobConfig.options():
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if f.type == "bool":             # on by default: the flag turns it off
            t.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                           help=f"do not {meta['help']}")
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
        default = "" if f.default is None else f" (default: {f.default}"
        if f.name in recipe:
            default = (default + "; " if default else " (") + f"{task}'s recipe: {recipe[f.name]}"
        t.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=meta["choices"],
                       metavar=meta["metavar"], help=meta["help"] + default + (")" if default else ""))


RECIPE_RULES = """\
A task's recipe (gadei/recipe.py) sets what you do not: an option you give wins over the recipe's
value; --steps or --epochs replaces the recipe's budget; another --optimizer drops the recipe's
hyper-parameters, lr schedule and warm-up (that optimizer's defaults apply); --epochs drops a
recipe's lr schedule (it decays over steps). summary.json's settings.origin says where each value
came from. Options neither above nor below are an error."""


def _type_name(p) -> str:
    """A parameter's type for help, as the command line reads it: INT, FLOAT, BOOL, TEXT."""
    from gadei.task import kind
    return {int: "INT", float: "FLOAT", bool: "BOOL"}.get(kind(p), "TEXT")


def _first_paragraph(obj) -> str:
    import inspect
    return " ".join((inspect.getdoc(obj) or "").strip().split("\n\n")[0].split())


def _train_help(argv: list[str]) -> str:
    """The epilog of `gadei train --help`: what tasks and optimizers there are, the task's
    options and recipe, and the optimizer's hyper-parameters (of --task / --optimizer in `argv`)."""
    from gadei import recipe as R
    from gadei import task as T
    import algorithms
    task = _value(argv, "--task", "probe")
    lines = [RECIPE_RULES, "",
             f"tasks: {', '.join(sorted(T.registered()))} (`gadei tasks` says what each is; "
             "--task T --help shows T's options and recipe)",
             f"optimizers: {', '.join(algorithms.names())} (--optimizer O --help shows O's hyper-parameters)", ""]
    recipe = {}
    try:
        recipe = R.of(task)
        helps = T.option_help(task)
        lines.append(f"task {task!r}: {T.summary_line(task) or T.task_class(task).__name__}")
        lines.append(f"  recipe: {R.flags(recipe)}")
        lines.append("  options:")
        for name, p in T.options(task).items():
            flag = f"--{name.replace('_', '-')} {_type_name(p)}"
            text = helps.get(name, "")
            lines.append(f"  {flag:<26} {text}" + ("" if "(default" in text else f" (default: {p.default!r})"))
    except ValueError as e:
        lines.append(f"task {task!r}: {e}")
    optimizer = _value(argv, "--optimizer", None) or recipe.get("optimizer", R.DEFAULT_OPTIMIZER)
    try:
        rule = algorithms.rule_class(optimizer)
        mine = optimizer.lower() == recipe.get("optimizer", R.DEFAULT_OPTIMIZER).lower()
        lines.append("")
        import textwrap
        lines += textwrap.wrap(f"optimizer {optimizer!r}: {_first_paragraph(sys.modules[rule.__module__])}",
                               100, subsequent_indent="  ")
        lines.append("  hyper-parameters:")
        for name, p in algorithms.hyper_parameters(optimizer).items():
            note = f"; {task}'s recipe: {recipe[name]!r}" if mine and name in recipe else ""
            flag = f"--{name.replace('_', '-')} {_type_name(p)}"
            lines.append(f"  {flag:<26} (default: {p.default!r}{note})")
    except (ValueError, KeyError) as e:
        lines.append(f"optimizer {optimizer!r}: {e}")
    return "\n".join(lines)


def _value(argv: list[str], flag: str, default: str | None) -> str | None:
    for i, tok in enumerate(argv):
        if tok == flag and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return default


def _recipe_of(task: str) -> dict:
    from gadei import recipe
    try:
        return recipe.of(task)
    except ValueError:                  # an unknown task: the epilog says so
        return {}


def parser(argv: list[str] = ()) -> argparse.ArgumentParser:
    # no abbreviations: `--data generated` is a task option, not a prefix of another flag
    p = argparse.ArgumentParser(prog="gadei", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", parser_class=lambda **kw: argparse.ArgumentParser(allow_abbrev=False, **kw))
    helping = "train" in argv and ("-h" in argv or "--help" in argv)
    t = sub.add_parser("train", help="train a task through the parameter server",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_train_help(list(argv)) if helping else None)
    task = _value(list(argv), "--task", "probe")
    _add_job_options(t, task, _recipe_of(task) if helping else {})
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint (task options such as --data-dir may follow)")
    e.add_argument("--task")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", help="the split to score, by the data set's own names (nlc: valid or val; "
                   "lra: the files present); an unknown one's error lists them (default: the split "
                   "of the job's final metrics)")
    e.set_defaults(fn=cmd_eval)
    ts = sub.add_parser("tasks", help="list the registered tasks (entry-point group gadei.tasks)")
    ts.set_defaults(fn=cmd_tasks)
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
    p = parser(argv)
    args, extra = p.parse_known_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    from gadei.job import JobError
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
