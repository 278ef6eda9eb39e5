"""qa_tasks/text_classification/text.py: the tokenizer, the vocabulary, padding and shards."""
from __future__ import annotations

import pytest

from qa_tasks.text_classification.text import UNK_ID, Vocab, pad_batch, shard_batches, tokenize


# -- tokenizer, vocabulary, batching ------------------------------------------------------------
def test_tokenizer_lowercases_and_splits_as_documented():
    assert tokenize("Who's the ``King'' of 1969?") == ["who", "'s", "the", "`", "`", "king", "'", "'",
                                                      "of", "1969", "?"]
    assert tokenize("  don't  STOP\tnow ") == ["don", "'t", "stop", "now"]
    assert tokenize("sister\xf0city") == ["sister", "\xf0", "city"]
    assert tokenize("") == []


def test_tokenizer_and_vocab_are_deterministic():
    texts = ["b a c a", "c b a", "d"]
    first = Vocab.build([tokenize(t) for t in texts])
    again = Vocab.build([tokenize(t) for t in reversed(texts)])
    # a: 3, b: 2, c: 2 (tie broken alphabetically), d: 1
    assert first.itos == again.itos == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert first.encode(["a", "zzz", "d"]) == [2, UNK_ID, 5]
    assert Vocab.build([tokenize(t) for t in texts], min_count=2).itos == ["<pad>", "<unk>", "a", "b", "c"]
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build([], min_count=0)


def test_pad_batch_and_shards():
    ids, lengths = pad_batch([[5, 6, 7], [8], []], min_len=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert lengths.tolist() == [3, 1, 1]
    shards = [shard_batches(23, i, 3, seed=7, batch_size=4) for i in range(3)]
    seen = sorted(int(j) for s in shards for b in s for j in b)
    assert seen == list(range(23))                         # disjoint, covering everything
    assert all(int(j) % 3 == i for i, s in enumerate(shards) for b in s for j in b)
    assert [b.tolist() for b in shards[1]] == [b.tolist() for b in shard_batches(23, 1, 3, 7, 4)]
    assert [b.tolist() for b in shards[1]] != [b.tolist() for b in shard_batches(23, 1, 3, 8, 4)]
    with pytest.raises(ValueError, match="learner"):
        shard_batches(10, 3, 3, 0, 4)
