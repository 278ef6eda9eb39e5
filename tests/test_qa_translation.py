"""qa_tasks/answer_selection/translation.py: IBM Model 1 against a plain EM written out here, and
the translation language model's score against its formula."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from qa_tasks.answer_selection.insuranceqa import PAD, UNK, Ragged
from qa_tasks.answer_selection.translation import NULL, TranslationLM, fit_ibm1


def ibm1_by_the_book(questions, answers, pairs, iterations):
    """IBM Model 1's EM over dicts, one alignment at a time: question words (distinct) generated
    by answer words (with their counts) and NULL."""
    table = defaultdict(lambda: 1.0)                     # T[(w, t)], uniform start
    for _ in range(iterations):
        expected = defaultdict(float)
        for q, a in pairs:
            source = [NULL] + [t for t in answers[a] if t not in (PAD, UNK)]
            for w in set(questions[q]) - {PAD, UNK}:
                norm = sum(table[(w, t)] for t in source)
                for t in source:
                    expected[(w, t)] += table[(w, t)] / norm
        total = defaultdict(float)
        for (w, t), c in expected.items():
            total[t] += c
        table = defaultdict(float, {(w, t): c / total[t] for (w, t), c in expected.items()})
    return table


@pytest.mark.timeout(60)
def test_ibm1_matches_em_written_out_alignment_by_alignment():
    rng = np.random.default_rng(0)
    vocab = 30
    questions = [list(rng.integers(0, vocab, rng.integers(1, 6))) for _ in range(25)]
    answers = [list(rng.integers(0, vocab, rng.integers(1, 12))) for _ in range(15)]
    pairs = np.array([(q, rng.integers(0, len(answers))) for q in range(25) for _ in range(2)])
    got = fit_ibm1(Ragged.from_rows(questions), Ragged.from_rows(answers), pairs, vocab, 4)
    want = ibm1_by_the_book(questions, answers, pairs, 4)
    dense = np.zeros((vocab, vocab))
    for (w, t), p in want.items():
        dense[t, w] = p
    np.testing.assert_allclose(got.toarray(), dense, rtol=1e-12, atol=1e-15)
    sums = np.asarray(got.sum(axis=1)).ravel()
    np.testing.assert_allclose(sums[sums > 0], 1.0)     # each answer word's row is a distribution


@pytest.mark.timeout(30)
def test_ibm1_learns_which_answer_word_a_question_word_comes_from():
    # words: 2 cost, 3 car, 4 premium, 5 auto, 6 the; "cost" is only ever asked of answers saying
    # "premium", "car" of answers saying "auto"
    questions = Ragged.from_rows([[2], [3], [2, 3], [2, 6], [3, 6]])
    answers = Ragged.from_rows([[4, 6], [5, 6], [4, 5, 6], [4, 6, 6], [5, 6]])
    pairs = np.array([(i, i) for i in range(5)])
    table = fit_ibm1(questions, answers, pairs, 7, 20).toarray()
    assert table[4, 2] > 0.9 and table[5, 3] > 0.9      # T(cost | premium), T(car | auto)
    assert table[6, 6] > table[6, 2] and table[6, 6] > table[6, 3]
    with pytest.raises(ValueError, match="at least one EM iteration"):
        fit_ibm1(questions, answers, pairs, 7, 0)


@pytest.mark.timeout(30)
def test_score_is_the_mean_log_probability_of_the_question_words():
    questions = Ragged.from_rows([[2], [3], [2, 3]])
    answers = Ragged.from_rows([[4, 6], [5, 6, 6], [4, 5]])
    pairs = np.array([(0, 0), (1, 1), (2, 2)])
    table = fit_ibm1(questions, answers, pairs, 7, 5)
    lam, beta = 0.1, 0.4
    lm = TranslationLM(table, answers, questions, smoothing=lam, mix=beta)
    t = table.toarray()
    counts = np.zeros(7)                                  # the collection: answers and questions
    for text in [[4, 6], [5, 6, 6], [4, 5], [2], [3], [2, 3]]:
        for w in text:
            counts[w] += 1
    background = counts / counts.sum()
    question = np.array([3, 2, 2, PAD, UNK])             # distinct known words: 2 and 3
    for a, words in enumerate([[4, 6], [5, 6, 6], [4, 5]]):
        logs = []
        for w in (2, 3):
            exact = words.count(w) / len(words)
            aligned = (t[NULL, w] + sum(t[x, w] for x in words)) / (len(words) + 1)
            logs.append(math.log((1 - lam) * ((1 - beta) * exact + beta * aligned) + lam * background[w]))
        assert lm.scores(question, np.array([a]))[0] == pytest.approx(np.mean(logs), rel=1e-12)
    # the question about "car" (3) prefers the answer saying "auto" (5) to the one that does not
    s = lm.scores(np.array([3]), np.array([0, 1]))
    assert s[1] > s[0]
    assert lm.scores(np.array([PAD, UNK]), np.array([0, 1])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="0 < smoothing <= 1 and 0 <= mix <= 1"):
        TranslationLM(table, answers, questions, smoothing=0.0, mix=0.5)
