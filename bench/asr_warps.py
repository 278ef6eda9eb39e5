"""Test-time vocal-tract-length normalisation (the asr task's `warp_search`) on a saved model:
WER with the plain filters, at the searched warp, with an ensemble of the best warps, and at
every fixed warp of the grid (the oracle: which warp the labels would have chosen), beside the
confidence the search maximises; and the digit confusions of the plain and searched decodings.

Launch, on a leave-one-speaker-out fold saved by ``bench/asr_layerskip.py --save`` (one thread)::

    python -m bench.asr_warps --checkpoint runs/loso/nicolas.npz --json runs/loso/nicolas-warps.json \\
        [--warp-search 0.86:1.14:0.02] [--ensembles 1,3] [--split heldout]

The task options are those saved beside the weights (the .json), with `warp_search` set here.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import jiwer
import torch

from bench.asr_layerskip import load_weights, saved_options
from gadei import task as T
from qa_tasks.speech.asr import error_rates, rank_warps


def confusions(refs: list[list[int]], hyps: list[list[int]]) -> dict[str, dict[str, int]]:
    """Substitutions 'ref>hyp', deletions and insertions per digit, counted over the alignment."""
    out = jiwer.process_words([" ".join(map(str, r)) for r in refs], [" ".join(map(str, h)) for h in hyps])
    sub, dele, ins = collections.Counter(), collections.Counter(), collections.Counter()
    for ref, hyp, chunks in zip(out.references, out.hypotheses, out.alignments):
        for c in chunks:
            if c.type == "substitute":
                sub.update(f"{r}>{h}" for r, h in zip(ref[c.ref_start_idx:c.ref_end_idx],
                                                     hyp[c.hyp_start_idx:c.hyp_end_idx]))
            elif c.type == "delete":
                dele.update(ref[c.ref_start_idx:c.ref_end_idx])
            elif c.type == "insert":
                ins.update(hyp[c.hyp_start_idx:c.hyp_end_idx])
    top = lambda c: dict(c.most_common())
    return {"substitutions": top(sub), "deletions": top(dele), "insertions": top(ins)}


def entropies(task, model, split: str) -> dict[float, float]:
    """An alternative no-label criterion, for comparison: minus the mean entropy of the final
    head's posteriors per frame, over the split, at each warp (the task's search uses the greedy
    path's log-probability)."""
    out = {}
    with torch.inference_mode():
        for a in task.warps:
            feats, total, frames = task.eval_set(split, a)[0], 0.0, 0
            for start in range(0, len(feats), task.eval_batch):
                lp, lens = model.full(*task.pad(feats[start:start + task.eval_batch]))
                for row, n in zip(lp, lens.tolist()):
                    total += float((row[:n].exp() * row[:n]).sum())
                    frames += n
            out[a] = total / frames
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .npz from bench/asr_layerskip.py --save")
    p.add_argument("--warp-search", default="0.86:1.14:0.02")
    p.add_argument("--ensembles", default="1,3", help="warp_ensemble sizes to decode with")
    p.add_argument("--split", default="heldout")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    task = T.build("asr", {**saved_options(Path(args.checkpoint)), "warp_search": args.warp_search})
    model = task.build_model()
    load_weights(model, Path(args.checkpoint))
    split = args.split

    wer = lambda r: error_rates(r["refs"], r["hyps"])[0]
    c0 = time.thread_time()
    scores = task.warp_scores(model, split)
    search_s = time.thread_time() - c0
    ranked = rank_warps(scores)
    task.warp_ensemble = 1
    plain = task.transcribe(model, split, 1.0, {s: [1.0] for s in scores}) if 1.0 in task.warps else None
    if plain is None:
        raise SystemExit("the grid must hold 1.0 (the plain filters) to compare")
    fixed = {a: wer(task.transcribe(model, split, 1.0, {s: [a] for s in scores})) for a in task.warps}
    searched = task.transcribe(model, split, 1.0, ranked)
    neg_entropy = entropies(task, model, split)
    out = {"checkpoint": args.checkpoint, "split": split, "warp_search": args.warp_search,
           "speakers": list(scores), "search_cpu_s": search_s, "chosen": {s: w[0] for s, w in ranked.items()},
           "wer_plain": wer(plain), "wer_searched": wer(searched),
           "wer_at_warp": fixed, "score_at_warp": scores, "neg_entropy_at_warp": neg_entropy,
           "confusions_plain": confusions(plain["refs"], plain["hyps"]),
           "confusions_searched": confusions(searched["refs"], searched["hyps"])}
    for k in (int(v) for v in args.ensembles.split(",") if v):
        task.warp_ensemble = k
        out[f"wer_ensemble_{k}"] = wer(task.transcribe(model, split, 1.0, ranked))
    print(f"{split} ({', '.join(scores)}): plain WER {100 * out['wer_plain']:.1f} %, searched "
          f"{100 * out['wer_searched']:.1f} % at {out['chosen']} ({search_s:.1f} CPU s), "
          + ", ".join(f"ensemble of {k} {100 * v:.1f} %" for k, v in
                      ((int(n.rsplit('_', 1)[1]), v) for n, v in out.items() if n.startswith("wer_ensemble_"))))
    print("warp  WER %   confidence (mean log-prob of the greedy path per frame, per speaker)   -entropy per frame")
    for a in task.warps:
        print(f"{a:.2f}  {100 * fixed[a]:5.1f}   " + "  ".join(f"{scores[s][a]:.4f}" for s in scores)
              + f"   {neg_entropy[a]:.4f}")
    print("plain substitutions (ref>hyp):", out["confusions_plain"]["substitutions"])
    print("plain deletions:", out["confusions_plain"]["deletions"],
          " insertions:", out["confusions_plain"]["insertions"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
