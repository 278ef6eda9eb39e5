"""InsuranceQA answer selection: loader, similarities, loss, pool top-1, generated data, training."""
from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qa_tasks.answer_selection import insuranceqa
from qa_tasks.answer_selection.insuranceqa import DataFormatError, Ragged, Split, pool_file
from qa_tasks.answer_selection.insuranceqa import generated_corpus
from qa_tasks.answer_selection.model import cosine, gesd, ranking_loss
from qa_tasks.answer_selection.pools import candidates, pool_metrics, top1_correct
from qa_tasks.answer_selection.qa import QA
from tests.helpers import plain_train

# -- fixtures in the published formats ------------------------------------------------------------

VOCAB = {"idx_1": "What", "idx_2": "is", "idx_3": "term", "idx_4": "life", "idx_5": "insurance",
         "idx_6": "?", "idx_7": "Does", "idx_8": "Medicare", "idx_9": "cover", "idx_10": "dental"}
ANSWERS = {"1": " Term life insurance covers you for a term of years.",
           "2": " Medicare does not cover dental care, sadly.",
           "3": " Whole life insurance lasts your whole life.",
           "4": " Renters insurance covers your stuff.",
           "5": " Dental plans are sold separately from Medicare."}
TRAIN = ["life-insurance\tidx_1 idx_2 idx_3 idx_4 idx_5 idx_6\t1\t3 4 1",
         "medicare-insurance\tidx_7 idx_8 idx_9 idx_10 idx_6\t2 5\t4 3"]
VALID = ["life-insurance\tidx_1 idx_2 idx_4 idx_5 idx_6\t3\t1 3 4 2",
         "medicare-insurance\tidx_7 idx_8 idx_9 idx_10 idx_6\t5\t1 2 4"]    # truth 5 not in pool


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def write_release(root, *, valid=VALID, test=None):
    """A tiny InsuranceQA folder (root/insuranceqa) in the layout and formats of the real one."""
    folder = root / "insuranceqa"
    write_gz(folder / "V2" / "vocabulary.gz", [f"{k}\t{v}" for k, v in VOCAB.items()])
    write_gz(folder / "V2" / pool_file("train", 100), TRAIN)
    write_gz(folder / "V2" / pool_file("valid", 500), valid)
    if test is not None:
        write_gz(folder / "V2" / pool_file("test", 500), test)
    answers = {k: {"en": v, "zh": "..."} for k, v in ANSWERS.items()}
    write_gz(folder / "pypi_insuranceqa_data_1.0" / "answers.json.gz", [json.dumps(answers)])
    return folder


# the real data, when the environment points at it (read before the fixture below hides it)
REAL_DATA = os.environ.get("GADEI_DATA")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GADEI_DATA", raising=False)


def words(corpus, ids):
    return [corpus.vocab[i] for i in ids]


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


# -- similarities and loss -------------------------------------------------------------------------

def test_gesd_and_cosine_on_hand_computed_examples():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # ||x - y|| = sqrt(2), x.y = 0: 1 / (1 + 1.41421) * sigmoid(1) = 0.41421 * 0.73106
    assert gesd(x, y).item() == pytest.approx(0.3028144, abs=1e-6)
    # gamma and c enter as sigmoid(gamma (x.y + c)): sigmoid(0.5 * (0 - 1)) = 0.37754
    assert gesd(x, y, gamma=0.5, c=-1.0).item() == pytest.approx(0.1563825, abs=1e-6)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    # ||a - b|| = sqrt(5), a.b = 10: 1 / 3.23607 * sigmoid(11)
    assert gesd(a, b).item() == pytest.approx(0.3090118, abs=1e-6)
    assert gesd(a, a).item() == pytest.approx(1 / (1 + math.exp(-6)), abs=1e-5)
    assert cosine(x, y).item() == pytest.approx(0.0)
    assert cosine(a, b).item() == pytest.approx(1.0)
    assert cosine(a, -b).item() == pytest.approx(-1.0)
    assert cosine(torch.zeros(2), a).item() == 0.0
    # broadcasting (B, 1, D) x (1, K, D) -> (B, K) equals the pairwise loop
    q, n = torch.randn(3, 5), torch.randn(4, 5)
    for f in (gesd, cosine):
        grid = f(q[:, None, :], n[None, :, :])
        assert grid.shape == (3, 4)
        assert torch.allclose(grid[2, 1], f(q[2], n[1]))


def test_gesd_gradient_is_finite_for_identical_vectors():
    x = torch.ones(4, requires_grad=True)
    gesd(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all()


def test_ranking_loss_hardest_and_first_violator():
    pos = torch.tensor([0.5, 0.9])
    neg = torch.tensor([[0.45, 0.6], [0.1, 0.95]])
    ok = torch.ones(2, 2, dtype=torch.bool)
    # hardest: (0.1 - 0.5 + 0.6) and (0.1 - 0.9 + 0.95) -> mean(0.2, 0.15)
    assert ranking_loss(pos, neg, ok, 0.1).item() == pytest.approx(0.175)
    # the 0.95 answer is a ground truth of question 1: its next candidate does not violate
    ok_masked = torch.tensor([[True, True], [True, False]])
    assert ranking_loss(pos, neg, ok_masked, 0.1).item() == pytest.approx(0.1)
    # first violator in each question's order: q0 tries 0.45 first (0.05), q1 tries 0.95 (0.15)
    order = torch.tensor([[0, 1], [1, 0]])
    assert ranking_loss(pos, neg, ok, 0.1, order).item() == pytest.approx(0.1)
    # q0 in the other order meets 0.6 first: 0.2
    assert ranking_loss(pos, neg, ok, 0.1, torch.tensor([[1, 0], [1, 0]])).item() == pytest.approx(0.175)
    # no negative violates: the loss is 0 either way
    far = torch.tensor([[0.0, 0.1], [0.2, 0.3]])
    assert ranking_loss(pos, far, ok, 0.1).item() == 0.0
    assert ranking_loss(pos, far, ok, 0.1, order).item() == 0.0
    # gradient pushes the positive up and the chosen negative down
    p, n = pos.clone().requires_grad_(), neg.clone().requires_grad_()
    ranking_loss(p, n, ok, 0.1).backward()
    assert (p.grad < 0).all() and n.grad[0, 1] > 0 and n.grad[0, 0] == 0


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
    assert m == {"top1": 0.5, "top1_raw_pool": 0.0, "pool_recall": 0.5}


# -- the task: generated data, real fixtures, training ----------------------------------------------

SMALL = dict(embed_dim=16, hidden=16, filters=16, answer_len=40, question_len=10)


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


@pytest.mark.timeout(30)
def test_bow_baseline_beats_chance_on_generated():
    task = QA(data="generated", **SMALL)
    m = task.bow_metrics("valid")
    assert m["bow_top1"] > 0.3            # chance is 1/20


@pytest.mark.timeout(30)
def test_batches_shard_the_pairs_disjointly():
    task = QA(data="generated", batch=50, negatives=7, pool_negatives=2, **SMALL)
    seen = []
    for learner in range(3):
        for q, a, neg, own, ok, order in task.batches(learner, 3, seed=learner + 10):
            b = q.shape[0]
            assert a.shape[0] == b and neg.shape[0] == 7 and own.shape[0] == 2 * b
            assert ok.shape == order.shape == (b, 9)
            assert sorted(order[0].tolist()) == list(range(9))
            seen.append(b)
    assert sum(seen) == len(task._pairs)
    # pooled negatives come from the question's own pool and are never its ground truth
    q, a, neg, own, ok, order = next(iter(task.batches(0, 1, seed=0)))
    assert ok[:, 7:].all()
    assert task.loss(task.build_model(), (q, a, neg, own, ok, order)).dim() == 0
    seen = []
    for learner in range(3):
        for q, *_ in QA(data="generated", batch=50, **SMALL).batches(learner, 3, seed=learner):
            seen.append(q.shape[0])
    assert sum(seen) == len(task._pairs)
    with pytest.raises(ValueError, match="learner must be in 0..1"):
        next(iter(task.batches(2, 2, 0)))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("options, message", [
    (dict(similarity="dot"), "similarity must be one of gesd, cosine"),
    (dict(widths="2,x"), "widths must be comma-separated"),
    (dict(margin=0.0), "margin must be positive"),
    (dict(pick="random"), "pick must be"),
    (dict(eval_questions=-1), "eval_questions must be"),
    (dict(widths="3,12", question_len=10), "widest convolution"),
])
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        QA(data="generated", **{**SMALL, **options})


@pytest.mark.timeout(30)
def test_task_on_release_fixture_evaluates_pools_and_keeps_token_order(tmp_path):
    write_release(tmp_path)
    task = QA(data="real", data_dir=str(tmp_path), min_count=1, widths="1,2", **SMALL)
    before = task.corpus.answers.values.copy()
    torch.manual_seed(0)
    m = task.evaluate(task.build_model(), "valid")
    assert set(m) == {"top1", "top1_raw_pool", "pool_recall", "bow_top1", "bow_top1_raw_pool", "questions"}
    assert m["questions"] == 2 and m["pool_recall"] == 0.5
    # BoW: q1 "does medicare cover dental ?" vs answer 5 (added truth) and answer 2 (pooled, more
    # overlap: medicare, does, cover, dental): answer 2 wins, so q1 is wrong; q0 "what is life
    # insurance ?" prefers answer 3 ("whole life insurance ... life") over answer 1: right
    assert m["bow_top1"] == 0.5
    # the baseline's sparse matrices must not reorder the corpus under the model
    np.testing.assert_array_equal(task.corpus.answers.values, before)
    with pytest.raises(ValueError, match="no split 'test'"):
        task.evaluate(task.build_model(), "test")


@pytest.mark.timeout(60)
def test_short_training_run_lowers_the_loss_and_beats_chance():
    task = QA(data="generated", batch=32, negatives=20, margin=0.1, similarity="cosine",
              **{**SMALL, "embed_dim": 32, "hidden": 32, "filters": 32})
    per_epoch = sum(1 for _ in task.batches(0, 1, seed=0))
    losses, model = plain_train(task, steps=3 * per_epoch, lr=1e-2)
    epoch_losses = [np.mean(losses[e * per_epoch:(e + 1) * per_epoch]) for e in range(3)]
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses
    assert task.evaluate(model, "valid")["top1"] > 0.2                 # chance is 0.05


def test_options_are_kept_as_attributes_for_the_runtime():
    """The runtime rebuilds a task in each learner from its attributes (gadei.task.spec)."""
    from gadei import task as T
    task = QA(data="generated", widths="1,2", margin=0.05, **SMALL)
    options = {name: getattr(task, name) for name in T.options("qa")}
    again = QA(**options)
    assert {name: getattr(again, name) for name in options} == options
    assert options["widths"] == "1,2" and options["margin"] == 0.05


@pytest.mark.timeout(120)
def test_gadei_train_with_two_learners_learns_the_generated_task(tmp_path):
    gadei = pytest.importorskip("gadei")
    options = dict(data="generated", batch=32, negatives=20, similarity="cosine",
                   **{**SMALL, "embed_dim": 32, "hidden": 32, "filters": 32})
    summary = gadei.train("qa", task_options=options, optimizer="adam", learners=2, steps=120,
                          out=tmp_path / "run", lr=1e-2)
    assert summary["updates_applied"] >= 120
    assert summary["final_metrics"]["top1"] > 0.2, summary["final_metrics"]   # chance is 0.05


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


@pytest.mark.timeout(400)
@pytest.mark.skipif(not (REAL_DATA and (Path(REAL_DATA) / "insuranceqa").is_dir()),
                    reason="set GADEI_DATA to the folder holding insuranceqa/")
def test_short_real_training_run_with_the_defaults_lowers_the_loss():
    """The default recipe on the real corpus (word2vec vectors trained here, about a minute):
    the loss falls within 100 steps and 200 valid questions score far above chance (0.002)."""
    task = QA(data="real", data_dir=REAL_DATA, eval_questions=200)
    losses, model = plain_train(task, steps=100, lr=2e-3)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20]), losses
    assert task.evaluate(model, "valid")["top1"] > 0.02
