"""qa_tasks/answer_selection/insuranceqa.py: reading the published files, the cache, the generated corpus."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qa_tasks.answer_selection import insuranceqa
from qa_tasks.answer_selection.insuranceqa import DataFormatError, Ragged, generated_corpus
from qa_tasks.answer_selection.pools import candidates
from tests.insuranceqa_files import VALID, words, write_release


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
