"""Scoring candidate pools: top-1 accuracy over each question's pool, one code path for the model
and the bag-of-words baseline.

The SOLR pools do not always hold the ground truth, so the candidates are the pool plus the
question's ground-truth answers, as in Feng et al.'s own pools ("pool of 500 candidates including
the ground truth"); a question counts as right when its best ground-truth answer scores strictly
above every other candidate (a tie is wrong, so a model that scores everything equal gets 0).
``top1_raw_pool`` is the same over the SOLR pool exactly as released (a question whose pool
lacks its ground truth counts as wrong), and ``top1_answerable`` is that over only the questions
whose released pool holds a ground truth (``pool_recall`` of them, about 80 % on V2).

Lexical scores, both as (question rows, answer rows) sparse matrices whose row products are the
score: the IDF-weighted bag-of-words cosine (the baseline, idf from the answer collection) and
BM25 (Robertson and Zaragoza 2009), divided by the most the question's words can score so it
lies in [0, 1) like the cosine and does not depend on the pool.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .insuranceqa import PAD, UNK, Corpus, Ragged, Split

# -- pools and top-1: one code path for the model and the baseline ------------------------------------

def candidates(split: Split, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `n` questions' candidates: each pool plus any ground truth it lacks.

    Returns cands (n, P) int64 answer rows, -1 as padding; is_truth (n, P) bool; in_pool (n, P)
    bool (the candidate is in the SOLR pool as released).
    """
    rows = []
    for i in range(n):
        pool = list(dict.fromkeys(split.pool.row(i).tolist()))   # dedupe, keep order
        truth = split.truth.row(i).tolist()
        rows.append((pool + [a for a in truth if a not in set(pool)], len(pool), set(truth)))
    width = max(len(r) for r, _, _ in rows)
    cands = np.full((n, width), -1, dtype=np.int64)
    is_truth = np.zeros((n, width), dtype=bool)
    in_pool = np.zeros((n, width), dtype=bool)
    for i, (r, pool_len, truth) in enumerate(rows):
        cands[i, :len(r)] = r
        is_truth[i, :len(r)] = [a in truth for a in r]
        in_pool[i, :pool_len] = True
    return cands, is_truth, in_pool


def top1_correct(scores: np.ndarray, is_truth: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per question: does its best ground-truth candidate score strictly above every other one?

    scores, is_truth, usable: (n, P). Candidates with usable False are ignored; a question with
    no usable ground truth is wrong.
    """
    best_truth = np.where(is_truth & usable, scores, -np.inf).max(axis=1)
    best_other = np.where(~is_truth & usable, scores, -np.inf).max(axis=1)
    return (best_truth > best_other) & np.isfinite(best_truth)


def pool_metrics(score_fn, split: Split, n: int, *, chunk: int = 64) -> dict[str, float]:
    """top-1 over the first `n` questions of `split`; `score_fn(q_rows (c,), cands (c, P)) -> (c, P)`
    scores question rows against answer rows (cands may hold -1 padding: score anything)."""
    cands, is_truth, in_pool = candidates(split, n)
    scores = np.concatenate([np.asarray(score_fn(np.arange(s, min(s + chunk, n)), cands[s:s + chunk]),
                                        dtype=np.float64) for s in range(0, n, chunk)])
    real = cands >= 0
    raw = top1_correct(scores, is_truth, in_pool)
    answerable = (is_truth & in_pool).any(axis=1)
    return {"top1": float(top1_correct(scores, is_truth, real).mean()),
            "top1_raw_pool": float(raw.mean()),
            "top1_answerable": float(raw[answerable].mean()) if answerable.any() else 0.0,
            "pool_recall": float(answerable.mean())}


def term_counts(ragged: Ragged, vocab_size: int) -> sp.csr_matrix:
    """Term counts, one row per text (rows, vocab_size)."""
    # copies: scipy keeps the index arrays it is given and sum_duplicates() sorts them in place,
    # which would reorder the corpus' tokens under the model
    m = sp.csr_matrix((np.ones(len(ragged.values), np.float64), ragged.values.copy(),
                       ragged.offsets.copy()), shape=(len(ragged), vocab_size))
    m.sum_duplicates()
    return m


def idf_bow(corpus: Corpus, questions: Ragged) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """L2-normalised tf-idf rows for the questions and all answers; idf = log(N / df) over the
    N answers (a word no answer holds gets weight 0: it cannot match anything)."""
    def counts(ragged: Ragged) -> sp.csr_matrix:
        return term_counts(ragged, len(corpus.vocab))

    answers = counts(corpus.answers)
    df = np.bincount(answers.indices, minlength=len(corpus.vocab))
    idf = np.where(df > 0, np.log(len(corpus.answers) / np.maximum(df, 1)), 0.0)
    idf[[PAD, UNK]] = 0.0

    def normalised(m: sp.csr_matrix) -> sp.csr_matrix:
        m = m @ sp.diags(idf)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
        return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m

    return normalised(counts(questions)).tocsr(), normalised(answers).tocsr()


def bm25(corpus: Corpus, questions: Ragged, *, k1: float = 1.2,
         b: float = 0.3) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """BM25 of each question (its distinct words) against each answer, as two sparse matrices
    whose row products are the score: answer rows hold each word's

        idf * tf (k1 + 1) / (tf + k1 (1 - b + b |a| / avg |a|)),   idf = log(1 + (N - df + 0.5) / (df + 0.5))

    over the N answers, and question rows hold 1 / sum(idf (k1 + 1)) over the question's words
    (the most any answer can score), so a score lies in [0, 1). A word no answer holds, PAD and
    UNK get weight 0, as in `idf_bow`."""
    if not k1 > 0 or not 0 <= b <= 1:
        raise ValueError(f"BM25 needs k1 > 0 and 0 <= b <= 1, not k1={k1}, b={b}")
    vocab = len(corpus.vocab)
    answers = term_counts(corpus.answers, vocab).tocoo()
    df = np.bincount(answers.col, minlength=vocab)
    idf = np.log1p((len(corpus.answers) - df + 0.5) / (df + 0.5))
    idf[df == 0] = 0.0
    idf[[PAD, UNK]] = 0.0
    length = np.asarray(answers.tocsr().sum(axis=1)).ravel()
    tf = answers.data
    weights = idf[answers.col] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length[answers.row] / length.mean()))
    a_vecs = sp.csr_matrix((weights, (answers.row, answers.col)), shape=answers.shape)

    q_vecs = term_counts(questions, vocab)
    q_vecs.data[:] = 1.0                                   # distinct words: a repeat scores once
    q_vecs = q_vecs @ sp.diags((idf > 0).astype(np.float64))
    ceiling = np.asarray(q_vecs @ (idf * (k1 + 1))).ravel()
    return (sp.diags(1.0 / np.maximum(ceiling, 1e-12)) @ q_vecs).tocsr(), a_vecs
