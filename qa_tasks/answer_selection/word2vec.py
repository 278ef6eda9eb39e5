"""Word vectors trained on a task's own text with word2vec (skip-gram, negative sampling), cached.

Feng et al. (2015) initialise the answer-selection towers with word2vec trained on the
InsuranceQA corpus; with random vectors the towers must learn 14k words from 21k training pairs,
and generalise badly (docs/results/qa.md). Training uses gensim (Mikolov et al.'s algorithm,
compiled) on the texts the vocabulary was built from: no evaluation text.

Deterministic: one worker thread and a fixed seed give the same vectors in every process
(checked across PYTHONHASHSEED values: tests/test_word2vec.py). The vectors are cached
as one ``.npy`` under ``cache_dir("word2vec")``, keyed by a digest of the token ids and the
settings, and read back with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import gensim
import numpy as np
from gensim.models import Word2Vec

from ..common import cache_dir, replacing

# bump when the training recipe changes: old caches are then ignored
CACHE_VERSION = 1


def train(sentences: Sequence[np.ndarray], vocab_size: int, dim: int, *, pad: int = 0, window: int = 5,
          epochs: int = 5, seed: int = 0) -> np.ndarray:
    """(vocab_size, dim) float32 skip-gram vectors for token-id sentences; row `pad` and ids that
    never occur stay zero."""
    texts = [[str(t) for t in s if t != pad] for s in sentences]
    model = Word2Vec(texts, vector_size=dim, window=window, min_count=1, sg=1, negative=5,
                     epochs=epochs, seed=seed, workers=1)
    vectors = np.zeros((vocab_size, dim), dtype=np.float32)
    for word, row in model.wv.key_to_index.items():
        vectors[int(word)] = model.wv.vectors[row]
    return vectors


def cached(sentences: Sequence[np.ndarray], vocab_size: int, dim: int, **settings) -> np.ndarray:
    """`train(...)`, computed once per distinct input and settings and then read from the cache."""
    key = [CACHE_VERSION, gensim.__version__, vocab_size, dim, sorted(settings.items())]
    digest = hashlib.sha256(json.dumps(key).encode())
    for s in sentences:
        digest.update(np.asarray(s, dtype=np.int64).tobytes())
        digest.update(b"|")
    path = cache_dir("word2vec") / f"w2v-{digest.hexdigest()[:20]}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape == (vocab_size, dim):
            return vectors
    vectors = train(sentences, vocab_size, dim, **settings)
    with replacing(path) as tmp:   # learners building it at once never read half a file
        np.save(tmp, vectors)
    return vectors
