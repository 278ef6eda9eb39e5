"""word2vec vectors for the towers: deterministic across processes, cached without pickle."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from qa_tasks.answer_selection import word2vec
from qa_tasks.answer_selection.qa import QA

SMALL = dict(question_len=8, answer_len=30, embed_dim=16, hidden=16, filters=16)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))


def sentences(n=300, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, rng.integers(3, 12)) for _ in range(n)]


@pytest.mark.timeout(60)
def test_vectors_are_the_same_in_every_process():
    """Learner processes rebuild the model: the vectors must not depend on the hash salt."""
    code = ("import numpy as np; from qa_tasks.answer_selection import word2vec; rng = np.random.default_rng(0); "
            "s = [rng.integers(1, 50, rng.integers(3, 12)) for _ in range(300)]; "
            "print(word2vec.train(s, 50, 16).tobytes().hex())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}).stdout for salt in ("1", "2")}
    assert len(outs) == 1


@pytest.mark.timeout(60)
def test_vectors_place_words_of_one_context_together_and_leave_padding_zero():
    # words 1-5 only ever occur with each other, words 6-10 likewise
    rng = np.random.default_rng(0)
    s = [rng.choice(np.arange(1, 6), 6) for _ in range(400)] + [rng.choice(np.arange(6, 11), 6) for _ in range(400)]
    v = word2vec.train(s, 12, 16, epochs=10)
    assert not v[0].any() and not v[11].any()            # padding and a word that never occurs
    unit = v[1:11] / np.linalg.norm(v[1:11], axis=1, keepdims=True)
    sim = unit @ unit.T - 2 * np.eye(10)
    group = np.arange(10) // 5
    # every word's nearest neighbour is in its own group, and the groups are apart on average
    assert (group[sim.argmax(axis=1)] == group).all(), sim
    assert sim[:5, :5][~np.eye(5, dtype=bool)].mean() > sim[:5, 5:].mean() + 0.05


@pytest.mark.timeout(60)
def test_cache_is_reused_and_read_without_pickle(tmp_path, monkeypatch):
    s = sentences()
    first = word2vec.cached(s, 50, 16)
    files = list((tmp_path / "cache" / "gadei" / "word2vec").glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0], allow_pickle=False), first)
    monkeypatch.setattr(word2vec, "train", lambda *a, **k: pytest.fail("trained again"))
    np.testing.assert_array_equal(word2vec.cached(s, 50, 16), first)
    # other text or other settings are another entry, never a stale hit
    monkeypatch.undo()
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    assert not np.array_equal(word2vec.cached(sentences(seed=1), 50, 16), first)
    assert word2vec.cached(s, 50, 8).shape == (50, 8)


@pytest.mark.timeout(60)
def test_qa_towers_start_from_the_vectors():
    task = QA(data="generated", embeddings="word2vec", **SMALL)
    torch.manual_seed(0)
    weights = task.build_model().tower.embed.weight.detach().numpy()
    np.testing.assert_array_equal(weights, task.word_vectors())
    seen = np.unique(np.concatenate([task.corpus.answers.values, task.corpus.splits["train"].questions.values]))
    assert weights[seen].any(axis=1).all() and not weights[0].any()   # each word of the texts, not padding
    random = QA(data="generated", embeddings="random", **SMALL).build_model().tower.embed.weight
    assert not np.allclose(random.detach().numpy(), weights)
    with pytest.raises(ValueError, match="embeddings must be one of word2vec, random"):
        QA(data="generated", embeddings="glove", **SMALL)


def test_cache_files_are_replaced_whole_or_not_at_all(tmp_path):
    """qa_tasks.common.replacing, which every cache of qa_tasks writes through."""
    from qa_tasks.common import replacing
    path = tmp_path / "v.npy"
    with replacing(path) as tmp:
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.arange(3))
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("killed while writing")
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.arange(3))   # the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]                   # no temporary
