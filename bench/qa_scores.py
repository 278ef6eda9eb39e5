"""What each part of the `qa` score contributes: top-1 of a checkpoint with the towers alone, the
kernel match alone, their sum, and each plus a lexical score (the IDF bag-of-words cosine "bow",
or BM25 "bm25", with the task's bm25_k1 and bm25_b) at several weights, plus the translation
language model's score at several weights; the parts are computed once (`QA.pool_scores`), so the
sweep costs one evaluation.

    python -m bench.qa_scores --checkpoint runs/qa --data-dir D --split valid
    python -m bench.qa_scores --checkpoint runs/qa --data-dir D --bow-weights 0,0.25,0.5,1 --json runs/qa/parts.json
    python -m bench.qa_scores --checkpoint runs/qa --data-dir D --lexical bm25 --bow-weights 0,0.5 \
        --translation-weights 0,0.3,0.5,0.7

The weights are chosen on the split they are read on, so a best row here is slightly optimistic.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from gadei.evaluate import load_model
from qa_tasks.answer_selection.pools import pool_metrics


def weights(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a `gadei train --task qa` output folder")
    p.add_argument("--data-dir", help="the data folder (default: the one the checkpoint names, or $GADEI_DATA)")
    p.add_argument("--split", default="valid")
    p.add_argument("--bow-weights", default="0,0.25,0.5,0.75,1",
                   help="comma-separated weights of the lexical score")
    p.add_argument("--lexical", default="bow,bm25", help="comma-separated lexical scores: bow, bm25")
    p.add_argument("--translation-weights", default="0",
                   help="comma-separated weights of the translation language model's score, added to each row")
    p.add_argument("--json", help="write the table here")
    args = p.parse_args(argv)
    task, model = load_model(args.checkpoint, args.data_dir)
    if getattr(task, "pool_scores", None) is None:
        raise SystemExit(f"{args.checkpoint} is not a qa checkpoint")
    data, n = task._split(args.split)
    t = time.process_time()
    parts = task.pool_scores(model, args.split)
    seconds = time.process_time() - t
    combos = {"towers": parts["towers"]}
    if "match" in parts:
        combos.update({"match": parts["match"], "towers+match": parts["towers"] + parts["match"]})
    rows = []
    lexical = args.lexical.split(",")
    if not set(lexical) <= {"bow", "bm25"}:
        raise SystemExit(f"--lexical takes bow and bm25, not {args.lexical!r}")
    for name, base in combos.items():
        for part in lexical:
            for w, t in itertools.product(weights(args.bow_weights), weights(args.translation_weights)):
                total = base + w * parts[part] + t * parts["translation"]
                m = pool_metrics(lambda q_rows, cand_rows: total[q_rows], data, n)
                rows.append({"score": name, "lexical": part, "bow_weight": w, "translation_weight": t,
                             **{k: round(v, 4) for k, v in m.items()}})
                print(json.dumps(rows[-1]), flush=True)
    out = {"checkpoint": str(args.checkpoint), "split": args.split, "questions": n,
           "parts_cpu_s": round(seconds, 1), "rows": rows}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
