"""qa_tasks/answer_selection/pools.py: candidates and top-1 over pools."""
from __future__ import annotations

import numpy as np

from qa_tasks.answer_selection.insuranceqa import Ragged, Split
from qa_tasks.answer_selection.pools import candidates, pool_metrics, top1_correct


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
