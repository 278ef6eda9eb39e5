"""qa_tasks/text_classification/self_attentive.py: the attention penalty and the attention itself."""
from __future__ import annotations

import pytest
import torch

from qa_tasks.text_classification.self_attentive import SelfAttentiveClassifier, attention_penalty
from qa_tasks.text_classification.text import pad_batch


# -- self-attention -----------------------------------------------------------------------------
def test_penalty_is_zero_for_identity_attention():
    A = torch.zeros(2, 3, 5)
    A[0, [0, 1, 2], [0, 1, 2]] = 1.0   # each hop on its own token: A A^T = I
    A[1, [0, 1, 2], [4, 2, 0]] = 1.0
    assert float(attention_penalty(A)) == 0.0


def test_penalty_computed_example():
    # A = [[.5, .5], [.5, .5]]: A A^T = [[.5, .5], [.5, .5]], minus I = [[-.5, .5], [.5, -.5]], ||.||^2 = 1
    same = torch.full((1, 2, 2), 0.5)
    assert float(attention_penalty(same)) == pytest.approx(1.0)
    # A = [[1, 0], [1, 0]] (both hops on token 0): A A^T - I = [[0, 1], [1, 0]] -> 2; batch mean (1 + 2) / 2
    both = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(attention_penalty(torch.cat([same, both]))) == pytest.approx(1.5)


def test_self_attention_is_a_distribution_over_real_tokens_only():
    torch.manual_seed(0)
    model = SelfAttentiveClassifier(30, 4, embed_dim=8, hidden=6, attention_dim=5, hops=3, mlp_hidden=7).eval()
    ids, lengths = pad_batch([[3, 4], list(range(2, 12))])
    with torch.no_grad():
        logits, A = model.forward_with_attention(ids, lengths)
        alone, A_alone = model.forward_with_attention(*pad_batch([[3, 4]]))
    assert logits.shape == (2, 4) and A.shape == (2, 3, 10)
    torch.testing.assert_close(A.sum(dim=2), torch.ones(2, 3))
    assert float(A[0, :, 2:].abs().sum()) == 0.0
    torch.testing.assert_close(alone[0], logits[0])
    torch.testing.assert_close(A_alone[0], A[0, :, :2])
