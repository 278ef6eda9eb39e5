"""qa_tasks/answer_selection/insuranceqa.py: reading the published files, the cache, the generated corpus."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qa_tasks.answer_selection import insuranceqa
from qa_tasks.answer_selection.insuranceqa import DataFormatError, Ragged, generated_corpus
from qa_tasks.answer_selection.pools import candidates, pool_metrics
from qa_tasks.answer_selection.qa import QA
from tests.insuranceqa_files import TRAIN_NEGATIVES, VALID, words, write_release


# the real data, when the environment points at it (read before the fixture below hides it)
REAL_DATA = os.environ.get("GADEI_DATA")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GADEI_DATA", raising=False)


# -- loader --------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_loader_reads_the_published_formats(tmp_path):
    write_release(tmp_path, test=VALID[:1])
    corpus = insuranceqa.load(tmp_path, min_count=1)
    assert sorted(corpus.splits) == ["test", "train", "valid"]
    assert corpus.answer_labels.tolist() == [1, 2, 3, 4, 5]
    train, valid = corpus.splits["train"], corpus.splits["valid"]
    # questions decoded through vocabulary.gz, then lower-cased by the shared tokenizer
    assert words(corpus, train.questions.row(0)) == ["what", "is", "term", "life", "insurance", "?"]
    # answers tokenized from answers.json.gz text: punctuation split off, lower case
    assert words(corpus, corpus.answers.row(1)) == ["medicare", "does", "not", "cover", "dental",
                                                    "care", ",", "sadly", "."]
    # labels become answer rows (label - 1 here); several ground truths kept in order
    assert train.truth.row(1).tolist() == [1, 4]
    assert valid.pool.row(0).tolist() == [0, 2, 3, 1] and valid.truth.row(1).tolist() == [4]
    # "what" occurs once in the train questions and in no answer: with min_count=2 it is unknown
    rare = insuranceqa.load(tmp_path, min_count=2)
    assert rare.splits["train"].questions.row(0)[0] == insuranceqa.UNK


@pytest.mark.timeout(20)
def test_loader_cache_is_reused_and_pickle_free(tmp_path):
    write_release(tmp_path)
    first = insuranceqa.load(tmp_path, min_count=1)
    cached = list((tmp_path / "cache" / "gadei" / "qa").glob("*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as z:      # raises if anything needs pickle
        assert "vocab" in z.files
    again = insuranceqa.load(tmp_path, min_count=1)
    assert again.vocab == first.vocab
    for split in first.splits:
        for field in ("questions", "truth", "pool"):
            np.testing.assert_array_equal(getattr(again.splits[split], field).values,
                                          getattr(first.splits[split], field).values)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("bad_line, message", [
    ("life-insurance\tidx_1 idx_2\t3", r"valid\.encoded\.gz:2: expected 4 tab-separated fields"),
    ("life-insurance\tidx_1 idx_99\t3\t1 2", r"valid\.encoded\.gz:2: question token 'idx_99' is not in vocabulary\.gz"),
    ("life-insurance\tidx_1 idx_2\tthree\t1 2", r"valid\.encoded\.gz:2: ground truth and pool must be"),
    ("life-insurance\tidx_1 idx_2\t3\t1 77", r"valid\.encoded\.gz:2: answer label 77 is not in"),
])
def test_loader_names_file_and_line_of_a_malformed_line(tmp_path, bad_line, message):
    write_release(tmp_path, valid=[VALID[0], bad_line])
    with pytest.raises(DataFormatError, match=message):
        insuranceqa.load(tmp_path)


@pytest.mark.timeout(20)
def test_loader_says_which_file_is_missing(tmp_path):
    folder = write_release(tmp_path)
    (folder / "pypi_insuranceqa_data_1.0" / "answers.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match="answers.json.gz is missing"):
        insuranceqa.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="GADEI_DATA"):
        insuranceqa.load(None)


@pytest.mark.timeout(20)
def test_train_pool_comes_from_train_json_negatives_when_present(tmp_path):
    write_release(tmp_path)
    plain = insuranceqa.load(tmp_path, min_count=1)
    assert plain.splits["train"].pool.row(0).tolist() == [2, 3, 0]          # the V2 100-pool
    write_release(tmp_path, train_negatives=TRAIN_NEGATIVES)
    corpus = insuranceqa.load(tmp_path, min_count=1)                      # a new cache key
    train = corpus.splits["train"]
    assert train.pool.row(0).tolist() == [3, 2, 1] and train.pool.row(1).tolist() == [0, 2]
    assert train.truth.row(1).tolist() == [1, 4]                         # truths from the V2 file
    assert corpus.splits["valid"].pool.row(0).tolist() == [0, 2, 3, 1]    # valid untouched
    assert corpus.answer_labels.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("negatives, message", [
    ({**TRAIN_NEGATIVES, "1": {"answers": ["2"], "negatives": ["1"]}}, r'entry "1" has ground truth \[2\]'),
    ({"0": TRAIN_NEGATIVES["0"]}, "one entry per V2 train question"),
    ({**TRAIN_NEGATIVES, "1": {"answers": ["2", "5"]}}, r'entry "1" should hold'),
    ({**TRAIN_NEGATIVES, "1": {"answers": ["2", "5"], "negatives": ["99"]}}, "answer label 99 is not in"),
])
def test_train_json_that_does_not_match_the_v2_train_file_is_refused(tmp_path, negatives, message):
    write_release(tmp_path, train_negatives=negatives)
    with pytest.raises(DataFormatError, match=message):
        insuranceqa.load(tmp_path, min_count=1)


SMALL = dict(embed_dim=8, hidden=8, filters=8, answer_len=20, question_len=8, min_count=1)


@pytest.mark.timeout(30)
def test_pool_negatives_come_from_the_questions_own_pool_and_never_its_truth(tmp_path):
    write_release(tmp_path, train_negatives={**TRAIN_NEGATIVES,
                                             "1": {"answers": ["2", "5"], "negatives": ["1", "3", "5"]}})
    task = QA(data="real", data_dir=str(tmp_path), batch=3, negatives=2, pool_negatives=4, **SMALL)
    train = task.corpus.splits["train"]
    # question 1's pool lists its own truth 5 (row 4): it is dropped from the negatives
    assert task._pooled[1].tolist() == [0, 2]
    own_pool = {q: set(train.pool.row(q).tolist()) - set(train.truth.row(q).tolist()) for q in range(2)}
    rng = np.random.default_rng(0)
    drawn = task.pool_sample(np.array([0, 1, 1]), rng).reshape(3, 4)
    assert set(drawn[0]) <= own_pool[0] and len(set(drawn[0])) == 3      # 3 to draw from: all of them
    assert set(drawn[1]) | set(drawn[2]) == own_pool[1]                   # 2 to draw from: with repeats
    first_word = {int(train.questions.row(q)[0]): q for q in range(2)}

    def answer_row(tokens):   # the answer a batch row encodes (the fixture's answers differ in their first word)
        return next(a for a in range(len(task.corpus.answers)) if task.corpus.answers.row(a)[0] == tokens[0])

    for seed in range(5):
        for batch in task.batches(0, 1, seed):
            q_rows = [first_word[int(t)] for t in batch.questions[:, 0]]
            b, k, j = len(q_rows), 2, 4
            assert batch.pooled.shape[0] == b * j and batch.softmax_ok.shape == (b, b + k + b * j)
            pooled = [answer_row(t) for t in batch.pooled]
            for i, q in enumerate(q_rows):
                assert set(pooled[i * j:(i + 1) * j]) <= own_pool[q]
            # a question's own positive is its target; an answer that is one of its truths (the
            # positive of its other pair, a random draw) is never one of its negatives
            encoded = [answer_row(t) for part in (batch.positives, batch.shared, batch.pooled) for t in part]
            truths = [set(train.truth.row(q).tolist()) for q in q_rows]
            expected = [[c == i or encoded[c] not in truths[i] for c in range(len(encoded))] for i in range(b)]
            assert batch.softmax_ok.tolist() == expected
            assert batch.margin_ok[:, k:].all()
            assert batch.margin_ok[:, :k].tolist() == [row[b:b + k] for row in expected]


@pytest.mark.timeout(20)
def test_top1_over_all_questions_and_over_those_whose_pool_holds_a_truth(tmp_path):
    write_release(tmp_path, valid=VALID + ["life-insurance\tidx_4 idx_5\t4\t4 1",
                                           "life-insurance\tidx_3 idx_5\t1\t2 3"])
    valid = insuranceqa.load(tmp_path, min_count=1).splits["valid"]
    # pools (answer rows): q0 [0 2 3 1] truth 2; q1 [0 1 3] truth 4 (added); q2 [3 0] truth 3;
    # q3 [1 2] truth 0 (added). Scores by answer row: q0 right, q1 right only with its added
    # truth, q2 wrong (tie: 0 and 3 score the same), q3 right only with its added truth
    by_row = {0: np.array([.1, .5, .9, .2, .3]), 1: np.array([.1, .2, .3, .4, .9]),
              2: np.array([.5, .2, .2, .5, .1]), 3: np.array([.9, .1, .2, .3, .4])}
    m = pool_metrics(lambda q_rows, cands: np.stack([by_row[q][np.maximum(c, 0)] for q, c in zip(q_rows, cands)]),
                     valid, len(valid))
    assert m["pool_recall"] == 0.5                                        # q0 and q2
    assert m["top1"] == 0.75                                              # q0, q1, q3 of 4
    assert m["top1_raw_pool"] == 0.25                                     # q0 of 4
    assert m["top1_answerable"] == 0.5                                    # q0 of q0, q2


def test_tokenize_splits_punctuation_and_keeps_contractions():
    assert insuranceqa.tokenize(" Don't  pay 80%, OK?") == ["don't", "pay", "80", "%", ",", "ok", "?"]


def test_ragged_rows_and_padding():
    r = Ragged.from_rows([[5, 6, 7], [], [8]])
    assert len(r) == 3 and r.row(0).tolist() == [5, 6, 7] and r.row(1).tolist() == []
    assert r.padded(2).tolist() == [[5, 6], [0, 0], [8, 0]]


def test_generated_corpus_is_deterministic_and_well_formed():
    build = generated_corpus.__wrapped__           # bypass the per-seed cache
    a, b, c = build(0), build(0), build(1)
    np.testing.assert_array_equal(a.answers.values, b.answers.values)
    assert not np.array_equal(a.answers.values, c.answers.values)
    valid = a.splits["valid"]
    for i in range(len(valid)):
        assert set(valid.truth.row(i)) <= set(valid.pool.row(i))
        assert len(valid.pool.row(i)) == 20
    # a question shares a content word with its answer, unless both were swapped for synonyms
    shared = [bool(set(valid.questions.row(i)) & set(a.answers.row(valid.truth.row(i)[0])) - set(range(22)))
              for i in range(len(valid))]
    assert 0.5 < np.mean(shared) < 1.0


@pytest.mark.timeout(120)
@pytest.mark.skipif(not (REAL_DATA and (Path(REAL_DATA) / "insuranceqa").is_dir()),
                    reason="set GADEI_DATA to the folder holding insuranceqa/")
def test_real_release_matches_its_readme():
    """The counts the data README documents, and its pool recall of the 500-pool valid split."""
    corpus = insuranceqa.load(REAL_DATA)
    assert len(corpus.answers) == 27413 and corpus.answer_labels[[0, -1]].tolist() == [1, 27413]
    assert len(corpus.splits["train"]) == 12889 and len(corpus.splits["valid"]) == 2000
    valid = corpus.splits["valid"]
    assert set(valid.pool.lengths().tolist()) == {500}
    cands, is_truth, in_pool = candidates(valid, len(valid))
    assert (is_truth & in_pool).any(axis=1).sum() == 1592          # README / upstream: recall 0.796
    assert (corpus.answers.values == insuranceqa.UNK).mean() < 0.01
