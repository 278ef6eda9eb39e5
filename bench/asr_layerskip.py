"""Encoder speed and WER of the `asr` task with and without CTC blank-triggered layer skipping.

Launch (real data, trains a model first when no checkpoint is given; one thread)::

    nice -n 10 python -m bench.asr_layerskip --data-dir D --train-steps 150 \\
        --save runs/asr/model.npz --json runs/asr/train.json
    python -m bench.asr_layerskip --data-dir D --checkpoint runs/asr/model.npz
    python -m bench.asr_layerskip --quick            # CI: generated data, small model, seconds
    python -m bench.asr_layerskip --data-dir D --holdout theo --train-steps 1500 --split heldout \\
        --thresholds "" --eval-every 10     # one leave-one-speaker-out fold (docs/results/asr.md)

Any other ``--some-option V`` is a task option (as in ``gadei train``), e.g. ablations
``--inter-ctc-weight 0``, ``--factorized false``, ``--distill-weight 0``, or test-time
vocal-tract-length normalisation of a saved fold, ``--checkpoint runs/loso/theo.npz --holdout theo
--split heldout --thresholds "" --warp-search 0.86:1.14:0.02`` (searched once per speaker before the
timed decoding; the factors chosen are printed, and in --json as "warps", each speaker's factors best
first).

`--checkpoint` takes a .npz written by ``--save`` (its task options are read from the .json beside
it) or a gadei checkpoint directory (``gadei.checkpoint.load``; pass the task options it was
trained with). Without one, a model is trained here by a plain single-process loop, the task's
recipe: Adam at lr `--lr` (3e-3; `--weight-decay W`: AdamW, decoupled weight decay), 50 warm-up
steps and cosine decay to lr x `--lr-floor` (0.1), gradient norm clipped to `--clip` (5),
`--train-steps` steps over epochs of the task's `batches(0, 1, epoch)` of 16 utterances: one
update of the recipe's job, whose two SYNC learners average their batches of 8 (the task's
`batch`; `--batch B` sets the loop's).

Measured, for the plain model (no intermediate head, no skipping) and for each threshold: the
time of features -> log-probs per encoder call (`--eval-batch` utterances of similar length
per call, 16 by default; `--eval-batch 1` decodes one at a time), the median over `--repeats`
rounds (rounds interleave the settings, so machine noise hits all alike), summed over the calls
and divided by the utterances;
WER/CER by greedy decoding; the fraction of layer-frames skipped. Speed-up = t_plain / t_skip in
CPU time of the measuring thread (torch runs on it with one thread); wall-clock time and its
ratio are reported beside it, but on a shared machine they mostly measure waiting for a core.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from algorithms.schedules import schedule
from gadei import task as T
from qa_tasks.speech.asr import ASR, error_rates

# one update of the recipe's job: its 2 SYNC learners' batches of 8 (the task's `batch`), and
# its warm-up in updates (the recipe's lr_warmup counts both learners' gradients)
RECIPE_BATCH = 16
WARMUP = ASR.recipe["lr_warmup"] // 2
QUICK = {"data": "generated", "d_model": 32, "heads": 2, "layers": 4, "inter_layer": 2, "ff_dim": 64,
         "conv_channels": 16, "dropout": 0.0, "batch": 8, "speakers": "gen0"}


def parse() -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a .npz from --save, or a gadei checkpoint directory")
    p.add_argument("--train-steps", type=int, default=150, help="steps to train when no checkpoint")
    p.add_argument("--lr", type=float, default=ASR.recipe["lr"], help="peak learning rate (the task's recipe)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (AdamW; 0: Adam, the recipe; gadei train: --weight-decay W "
                        "--decoupled-weight-decay true)")
    p.add_argument("--clip", type=float, default=ASR.recipe["clip_grad_norm"],
                   help="gradient norm clipped to this (0: no clipping; the task's recipe)")
    p.add_argument("--lr-floor", type=float, default=ASR.recipe["lr_floor"],
                   help="the cosine decays to lr x this (the task's recipe)")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--ema", default="", help="comma-separated decays: also keep exponential moving averages of "
                                             "the weights (torch.optim.swa_utils) and score them beside the model")
    p.add_argument("--swa-from", type=int, default=0, help="> 0: also keep the plain average of the weights "
                                                         "from this step on (stochastic weight averaging)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between WERs in the training log")
    p.add_argument("--init", help="warm start: train on from these weights (a .npz from --save)")
    p.add_argument("--save", help="write the trained weights here (.npz, task options in .json beside it)")
    p.add_argument("--thresholds", default="0.5,0.8,0.9,0.95,0.99")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--split", default="test")
    p.add_argument("--json", help="write the results (and the resolved configuration) here")
    p.add_argument("--quick", action="store_true", help="generated data (one speaker), tiny model, 100 steps, 2 repeats")
    args, rest = p.parse_known_args()
    if args.save and args.json and Path(args.save).with_suffix(".json") == Path(args.json):
        sys.exit(f"--json {args.json} would replace the task options --save writes beside {args.save}: "
                 "name another file")
    return args, task_options(rest)


def task_options(rest: list[str]) -> dict:
    """`--some-option V` pairs -> {"some_option": V}, typed by the task's defaults."""
    params = inspect.signature(ASR).parameters
    if len(rest) % 2:
        sys.exit(f"task options come in pairs --name value, got {rest}")
    out = {}
    for flag, value in zip(rest[::2], rest[1::2]):
        name = flag.lstrip("-").replace("-", "_")
        if not flag.startswith("--") or name not in params:
            sys.exit(f"unknown option {flag}: the asr task takes {', '.join(params)}")
        default = params[name].default
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                sys.exit(f"{flag} takes true or false, got {value!r}")
            out[name] = value.lower() in ("true", "1")
        else:
            out[name] = type(default)(value) if default is not None else value
    return out


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Weights from a .npz (no pickle) or a gadei checkpoint directory, names checked."""
    if path.is_dir():
        from gadei import checkpoint          # the core's format; imported only when used
        weights = checkpoint.load(path)["weights"]
    else:
        with np.load(path, allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
    state = model.state_dict()
    if set(weights) != set(state):
        raise SystemExit(f"{path}: parameter names differ from the model's (missing "
                         f"{sorted(set(state) - set(weights))[:3]}, unexpected {sorted(set(weights) - set(state))[:3]}); "
                         "pass the task options it was trained with")
    model.load_state_dict({k: torch.from_numpy(np.asarray(weights[k])).reshape(state[k].shape) for k in state})


def saved_options(npz: Path) -> dict:
    """The task options saved beside a .npz of `save`: its .json, or (where an older run's --json
    named the same file) the results that replaced it."""
    saved = json.loads(npz.with_suffix(".json").read_text())
    return saved["task_options"] if "task_options" in saved else saved["config"]["task_options"]


def save(model: torch.nn.Module, path: str, options: dict, log: list[dict]) -> None:
    """Weights as .npz (no pickle) and the task options beside them as .json."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
    Path(path).with_suffix(".json").write_text(json.dumps({"task_options": options, "log": log}, indent=1))


def averages(model: torch.nn.Module, ema: str, swa_from: int) -> dict[str, AveragedModel]:
    """The weight averages asked for, by name: "ema0.999" (exponential, decay 0.999), "swa" (plain,
    from step swa_from on). They follow the same training run as the model, so their scores and
    the model's differ by the averaging alone, not by the seed."""
    out = {f"ema{d}": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(d)))
           for d in (v.strip() for v in ema.split(",")) if d}
    if swa_from > 0:
        out["swa"] = AveragedModel(model)
    return out


def save_all(model: torch.nn.Module, averaged: dict, path: str, options: dict, log: list[dict]) -> None:
    """`save` the model at `path` and each average beside it (PATH-ema0.999.npz, PATH-swa.npz)."""
    save(model, path, options, log)
    for name, avg in averaged.items():
        save(avg.module, str(Path(path).with_name(f"{Path(path).stem}-{name}.npz")), options, log)


def train(task: ASR, model: torch.nn.Module, steps: int, lr: float, on_epoch=lambda log: None,
          eval_every: int = 1, weight_decay: float = 0.0, averaged: dict | None = None,
          swa_from: int = 0, clip: float = ASR.recipe["clip_grad_norm"],
          lr_floor: float = ASR.recipe["lr_floor"]) -> list[dict]:
    """Plain single-process training; returns the loss log (every 50 steps) and the WERs on valid
    (on heldout when the task holds speakers out) every `eval_every` epochs and at the end, of the
    model and of each of its `averaged` weights (updated after every step; "swa" from step
    swa_from on). on_epoch(log) runs after each epoch (the script saves the weights there)."""
    averaged = averaged or {}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)   # 0: Adam
    # the PS's own schedule as a factor of lr (bit-identical to the formula earlier rounds wrote here)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule("cosine", 1.0, steps, WARMUP, lr_floor))
    log, step, epoch, t0, recent = [], 0, 0, time.time(), []
    while step < steps:
        model.train()
        for batch in task.batches(0, 1, epoch):
            loss = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            step += 1
            for name, avg in averaged.items():
                if name != "swa" or step >= swa_from:
                    avg.update_parameters(model)
            recent.append(float(loss.detach()))
            if step % 50 == 0 or step == steps:
                log.append({"step": step, "loss": float(np.mean(recent)), "s": round(time.time() - t0, 1)})
                recent = []
                print(f"step {step:5d}  loss {log[-1]['loss']:.3f}  {log[-1]['s']:.0f} s", flush=True)
            if step == steps:
                break
        epoch += 1
        if epoch % eval_every == 0 or step == steps:
            split = task.eval_split if task.holdout_list else "valid"   # a monitor only: no selection
            entry = {"step": step, "epoch": epoch}
            for name, m in {"": model, **averaged}.items():
                if name and not m.n_averaged:          # an average of nothing yet (swa before swa_from)
                    continue
                r = task.transcribe(m.module if name else m, split, 1.0)
                entry[f"{split}_wer" + (f"_{name}" if name else "")] = error_rates(r["refs"], r["hyps"])[0]
            log.append(entry)
            print(f"epoch {epoch}  {split} WER " + ", ".join(
                f"{k.removeprefix(split + '_wer').lstrip('_') or 'model'} {100 * v:.2f} %"
                for k, v in entry.items() if "wer" in k), flush=True)
        on_epoch(log)
    return log


def search(task: ASR, model, split: str) -> tuple[dict | None, float]:
    """warp_search's factors for each speaker of the split, best first (None without the
    option), and the search's CPU seconds (the warped features' extraction included)."""
    if not task.warps:
        return None, 0.0
    c0 = time.thread_time()
    warps = task.search_warps(model, split)
    return warps, time.thread_time() - c0


def measure(task: ASR, model, split: str, thresholds: list[float], repeats: int,
            warps: dict | None = None) -> list[dict]:
    """One row per setting (plain first): median-of-repeats ms per utterance, WER, CER, skipped.
    With warp_search, every setting decodes each speaker at his `warps` (searched once, before)."""
    settings = [1.0] + thresholds                  # 1.0: the plain model, no skipping
    task.transcribe(model, split, settings[0], warps)     # warm-up (allocator, caches)
    runs = {s: [] for s in settings}
    for _ in range(repeats):
        for s in settings:
            runs[s].append(task.transcribe(model, split, s, warps))
    upper, layers = model.n_layers - model.inter_layer, model.n_layers
    rows = []
    for s in settings:
        r = runs[s][0]
        ms = np.median(np.array([run["ms"] for run in runs[s]]), axis=0)      # (calls,)
        cpu = np.median(np.array([run["cpu_ms"] for run in runs[s]]), axis=0)  # (calls,)
        n = len(r["refs"])
        wer, cer = error_rates(r["refs"], r["hyps"])
        rows.append({"threshold": None if s >= 1 else s, "wer": wer, "cer": cer,
                     "skipped_fraction": r["skipped"] * upper / (r["frames"] * layers),
                     "skipped_frames": r["skipped"] / r["frames"], "ms_per_utt": float(ms.sum()) / n,
                     "cpu_ms_per_utt": float(cpu.sum()) / n})
    for row in rows:
        row["speedup"] = rows[0]["cpu_ms_per_utt"] / row["cpu_ms_per_utt"]
        row["speedup_wall"] = rows[0]["ms_per_utt"] / row["ms_per_utt"]
    return rows


def main() -> None:
    args, options = parse()
    torch.set_num_threads(1)
    if args.quick:
        options = {**QUICK, **options}
        args.train_steps, args.repeats, args.lr = min(args.train_steps, 100), min(args.repeats, 2), 3e-3
    options = {"batch": RECIPE_BATCH, **options}
    npz = Path(args.checkpoint) if args.checkpoint else None
    if npz and npz.suffix == ".npz" and npz.with_suffix(".json").exists():
        options = {**saved_options(npz), **options}
    task = T.build("asr", options)
    torch.manual_seed(args.train_seed)
    model = task.build_model()
    log, averaged = [], {}
    if args.checkpoint:
        load_weights(model, Path(args.checkpoint))
    else:
        if args.init:
            load_weights(model, Path(args.init))
        print(f"training {sum(p.numel() for p in model.parameters()):,} parameters for {args.train_steps} steps")
        averaged = averages(model, args.ema, args.swa_from)
        log = train(task, model, args.train_steps, args.lr,
                    lambda log: args.save and save_all(model, averaged, args.save, options, log), args.eval_every,
                    args.weight_decay, averaged, args.swa_from, args.clip, args.lr_floor)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    warps, search_s = search(task, model, args.split)
    rows = measure(task, model, args.split, thresholds, args.repeats, warps)

    print(f"\n{args.split}: {len(task.eval_set(args.split)[1])} utterances, {task.eval_batch} per call, 1 thread, "
          f"median of {args.repeats}")
    print(f"{'threshold':>9} {'WER %':>7} {'CER %':>7} {'skipped %':>9} {'cpu ms':>7} {'speed-up':>8} "
          f"{'wall ms':>8} {'wall x':>7}")
    for r in rows:
        th = "none" if r["threshold"] is None else f"{r['threshold']:.2f}"
        print(f"{th:>9} {100 * r['wer']:7.2f} {100 * r['cer']:7.2f} {100 * r['skipped_fraction']:9.1f} "
              f"{r['cpu_ms_per_utt']:7.2f} {r['speedup']:7.2f}x {r['ms_per_utt']:8.2f} {r['speedup_wall']:6.2f}x")
    if warps:
        print(f"warp search ({task.warp_search}, ensemble of {task.warp_ensemble}), {search_s:.1f} CPU s: "
              + ", ".join(f"{s} {w[0]:.2f}" for s, w in warps.items()))
    scored = {}
    for name, avg in averaged.items():
        if not avg.n_averaged:
            continue
        r = task.transcribe(avg.module, args.split, 1.0, warps)
        scored[name] = dict(zip(("wer", "cer"), error_rates(r["refs"], r["hyps"])))
        print(f"{name:>9} {100 * scored[name]['wer']:7.2f} {100 * scored[name]['cer']:7.2f}   (averaged weights, plain)")
    if args.json:
        out = {"config": {**vars(args), "task_options": options, "model": task.model_options,
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
               "rows": rows, "averaged": scored, "train_log": log, "warps": warps, "warp_search_cpu_s": search_s}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
