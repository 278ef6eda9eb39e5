"""qa_tasks/answer_selection/pools.py: candidates and top-1 over pools."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qa_tasks.answer_selection.insuranceqa import Corpus, Ragged, Split
from qa_tasks.answer_selection.pools import bm25, candidates, pool_metrics, top1_correct


# -- pools and top-1 -----------------------------------------------------------------------------------

def test_top1_counts_strict_wins_only():
    scores = np.array([[0.9, 0.1, 0.5],     # truth best: right
                       [0.4, 0.8, 0.1],     # another answer best: wrong
                       [0.7, 0.7, 0.1],     # tie with a wrong answer: wrong
                       [0.2, 0.9, 0.3]])    # the best is a truth (second truth): right
    is_truth = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0]], bool)
    usable = np.ones_like(is_truth)
    assert top1_correct(scores, is_truth, usable).tolist() == [True, False, False, True]
    # the winning wrong answer of question 1 is not a candidate: now right
    usable[1, 1] = False
    assert top1_correct(scores, is_truth, usable).tolist() == [True, True, False, True]
    # no usable ground truth: wrong, however the others score
    usable[0, 0] = False
    assert not top1_correct(scores, is_truth, usable)[0]


def test_candidates_add_missing_truth_and_pool_metrics_use_them():
    split = Split(questions=Ragged.from_rows([[2], [3]]),
                  truth=Ragged.from_rows([[1], [4]]),
                  pool=Ragged.from_rows([[0, 1, 2, 1], [0, 2]]))      # q1's truth is not pooled
    cands, is_truth, in_pool = candidates(split, 2)
    assert cands.tolist() == [[0, 1, 2], [0, 2, 4]]                    # duplicate 1 dropped
    assert is_truth.tolist() == [[False, True, False], [False, False, True]]
    assert in_pool.tolist() == [[True, True, True], [True, True, False]]

    # a scorer that prefers answer 4 for q1 and answer 2 for q0
    prefs = {0: {2: 1.0}, 1: {4: 1.0}}

    def score(q_rows, cand_rows):
        return np.array([[prefs[q].get(a, 0.0) for a in row] for q, row in zip(q_rows, cand_rows)])

    m = pool_metrics(score, split, 2, chunk=1)
    assert m == {"top1": 0.5, "top1_raw_pool": 0.0, "top1_answerable": 0.0, "pool_recall": 0.5}


# -- lexical scores -------------------------------------------------------------------------------------

def test_bm25_matches_the_formula_by_hand_and_is_normalised():
    # ids: 0 PAD, 1 UNK, 2 "life", 3 "term", 4 "cover", 5 "dental"; 3 answers
    corpus = Corpus(vocab=["<pad>", "<unk>", "life", "term", "cover", "dental"],
                    answers=Ragged.from_rows([[2, 2, 3], [4, 5, 1, 1], [2]]),
                    answer_labels=np.arange(3), splits={})
    questions = Ragged.from_rows([[2, 3, 3, 1], [5], [1]])     # "term" twice: counts once
    k1, b = 1.2, 0.5
    q, a = bm25(corpus, questions, k1=k1, b=b)
    scores = (q @ a.T).toarray()

    n, avg = 3, (3 + 4 + 1) / 3

    def idf(df):
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def term(tf, df, length):
        return idf(df) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))

    ceiling = (idf(2) + idf(1)) * (k1 + 1)                    # question 0's words: life, term
    assert scores[0, 0] == pytest.approx((term(2, 2, 3) + term(1, 1, 3)) / ceiling)
    assert scores[0, 1] == 0.0                                 # UNK never matches
    assert scores[0, 2] == pytest.approx(term(1, 2, 1) / ceiling)
    assert scores[1].tolist() == pytest.approx([0.0, term(1, 1, 4) / (idf(1) * (k1 + 1)), 0.0])
    assert scores[2].tolist() == [0.0, 0.0, 0.0]               # a question of UNK only scores 0
    assert (scores < 1).all() and (scores >= 0).all()
    # the corpus' tokens keep their order (scipy sorts the index arrays it is given in place)
    assert corpus.answers.values.tolist() == [2, 2, 3, 4, 5, 1, 1, 2]
    with pytest.raises(ValueError, match="k1 > 0"):
        bm25(corpus, questions, k1=0.0)
    with pytest.raises(ValueError, match="0 <= b <= 1"):
        bm25(corpus, questions, b=1.5)
