"""Heat maps of self-attention over the words of sentences, as in Lin et al., "A Structured
Self-Attentive Sentence Embedding", ICLR 2017 (figures 2 and 4): each word is shaded by the
weight the sentence embedding gives it, summed over the r hops and normalised to 1 per sentence
(the paper's "summation of all the annotation vectors"), or one hop's row of A.

From a trained nlc job (`gadei train --task nlc --model selfattn ... --out DIR`)::

    python -m qa_tasks.text_classification.attention --checkpoint DIR [--sentence S ...] \
        [--out attention.png] [--data-dir D]

From Python::

    from qa_tasks.text_classification.attention import render_attention
    render_attention(task, model, ["what is my balance", "set an alarm for 7"], "attention.png")
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..common import evaluating  # noqa: E402
from .text import tokenize  # noqa: E402

# drawn when no --sentence is given: one query each of four CLINC150 intents
SENTENCES = ("how do i check my account balance", "set an alarm for seven tomorrow",
             "what is the weather like in paris", "please transfer money to my savings")


def attention_weights(task, model, sentences: Sequence[str], hop: int | None = None):
    """Per sentence: (its tokens, their weights (n,) summing to 1, the predicted label name).

    `model` must have `forward_with_attention(tokens, lengths) -> (logits, A (B, r, n))`, as the
    nlc self-attentive model does; `task` supplies the tokenizer and vocabulary it was trained
    with. hop=None sums the r hops, an int picks one.
    """
    if not hasattr(model, "forward_with_attention"):
        raise TypeError(f"{type(model).__name__} has no attention to draw: train the task with the "
                        "self-attentive model (gadei train --task nlc --model selfattn)")
    if not sentences:
        raise ValueError("give at least one sentence to draw")
    ids, lengths = task.encode_texts(sentences)
    with evaluating(model), torch.no_grad():
        logits, A = model.forward_with_attention(ids, lengths)           # (B, classes), (B, r, n)
    if hop is not None and not 0 <= hop < A.shape[1]:
        raise ValueError(f"hop must be in [0, {A.shape[1]}) for this model, not {hop}")
    weights = A.sum(dim=1) if hop is None else A[:, hop]                # (B, n)
    weights = weights / weights.sum(dim=1, keepdim=True)
    out = []
    for i, sentence in enumerate(sentences):
        tokens = tokenize(sentence) or ["<pad>"]  # an empty sentence is encoded as one <pad>
        label = task.label_names[int(logits[i].argmax())]
        out.append((tokens, weights[i, :len(tokens)].numpy(), label))
    return out


def render_attention(task, model, sentences: Sequence[str], path: str | Path, *,
                     hop: int | None = None, title: str | None = None) -> Path:
    """Draw one row per sentence, each word on a cell shaded by its attention weight (darker =
    more), the predicted label on the left; write a PNG to `path` and return the path.
    Words outside the vocabulary are shown as written (the model saw <unk>)."""
    rows = attention_weights(task, model, sentences, hop)
    width = max(len(tokens) for tokens, _, _ in rows)
    grid = np.full((len(rows), width), np.nan)
    for r, (_, w, _) in enumerate(rows):
        grid[r, :len(w)] = w
    cell_w = max(max(len(t) for tokens, _, _ in rows for t in tokens) * 0.11, 0.6)
    fig, ax = plt.subplots(figsize=(min(2.5 + width * cell_w, 40), 0.8 + 0.55 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0.0, aspect="auto")
    for r, (tokens, w, _) in enumerate(rows):
        for c, token in enumerate(tokens):
            ax.text(c, r, token, ha="center", va="center", fontsize=9,
                    color="white" if w[c] > 0.6 * np.nanmax(grid) else "black")
    ax.set_yticks(range(len(rows)), [label for _, _, label in rows], fontsize=9)
    ax.set_xticks([])
    ax.set_title(title or ("attention, sum of hops" if hop is None else f"attention, hop {hop}"), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring): draw a checkpoint's attention to a PNG."""
    p = argparse.ArgumentParser(prog="python -m qa_tasks.text_classification.attention",
                                description="Draw a trained nlc model's self-attention over sentences (PNG).")
    p.add_argument("--checkpoint", required=True, help="a gadei job folder or its checkpoint")
    p.add_argument("--sentence", action="append", help="a sentence to show (repeatable; default: four "
                   "CLINC150 queries)")
    p.add_argument("--out", default="attention.png", help="the PNG to write")
    p.add_argument("--data-dir", help="folder holding the datasets (default: the one the job was "
                   "trained with, else $GADEI_DATA)")
    args = p.parse_args(argv)
    from gadei import load_model   # the checkpoint's task with its options, the model with its weights
    try:
        task, model = load_model(args.checkpoint, args.data_dir)
        sentences = args.sentence or list(SENTENCES)
        render_attention(task, model, sentences, args.out)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"attention of {len(sentences)} sentences written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
