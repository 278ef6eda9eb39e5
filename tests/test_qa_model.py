"""qa_tasks/answer_selection/model.py: the similarities, the ranking loss and the kernel match on
hand-computed examples."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qa_tasks.answer_selection.model import KernelMatch, cosine, gesd, kernel_centres, ranking_loss


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


# -- the kernel match (K-NRM with question-word gating) ---------------------------------------------

def test_kernel_centres_are_k_nrm_s():
    mu, sigma = kernel_centres(11)
    assert mu.tolist() == pytest.approx([1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9])
    assert sigma.tolist() == pytest.approx([1e-3] + [0.1] * 10)
    with pytest.raises(ValueError, match="at least 2 kernels"):
        kernel_centres(1)


def _orthogonal_match(kernels: int = 11) -> KernelMatch:
    """Word i (1..4) has the unit vector e_i: distinct words have cosine 0, a word with itself 1.
    The output reads the exact-match kernel only, so a score is the gated log(1 + exact matches)."""
    match = KernelMatch(vocab_size=5, embed_dim=4, kernels=kernels)
    with torch.no_grad():
        match.embed.weight.copy_(torch.cat([torch.zeros(1, 4), torch.eye(4)]))
        match.out.weight.zero_()
        match.out.weight[0, 0] = 1.0
    return match


def test_kernel_match_counts_exact_matches_gated_per_question_word():
    match = _orthogonal_match()
    with torch.no_grad():
        match.gate.weight.zero_()                 # equal gates: the mean over question words
    q = torch.tensor([[1, 2], [1, 2], [1, 2]])
    a = torch.tensor([[1, 3, 4], [1, 1, 2], [3, 4, 3]])
    # row 0: word 1 matches once, word 2 never: (log 2 + log 1) / 2; row 1: (log 3 + log 2) / 2
    expected = [math.log(2) / 2, (math.log(3) + math.log(2)) / 2, 0.0]
    assert match(q, a).tolist() == pytest.approx(expected, abs=1e-5)
    # padding on either side changes nothing (PAD = 0)
    padded = match(torch.tensor([[1, 2, 0, 0]] * 3), torch.cat([a, torch.zeros(3, 2, dtype=torch.long)], 1))
    assert padded.tolist() == pytest.approx(expected, abs=1e-5)
    # the gate weighs question words: all weight on word 2 (e_2's logit 50 against 0)
    with torch.no_grad():
        match.gate.weight[0, 1] = 50.0
    assert match(q, a).tolist() == pytest.approx([0.0, math.log(2), 0.0], abs=1e-5)


def test_kernel_match_pool_scores_as_forward_does():
    torch.manual_seed(0)
    match = KernelMatch(vocab_size=30, embed_dim=8, kernels=5)
    nn.init.normal_(match.out.weight)
    q = torch.tensor([3, 7, 9, 0])
    a = torch.randint(1, 30, (6, 10))
    a[2, 4:] = 0
    vocab = match.words(torch.arange(30))
    expected = match(q.expand(6, -1), a)
    assert torch.allclose(match.pool(q, a, vocab), expected, atol=1e-5)


def test_kernel_match_trains_its_embedding_gate_and_output():
    torch.manual_seed(0)
    match = KernelMatch(vocab_size=30, embed_dim=8)
    nn.init.normal_(match.out.weight)
    match(torch.randint(1, 30, (4, 3)), torch.randint(1, 30, (4, 7))).sum().backward()
    for p in (match.embed.weight, match.gate.weight, match.out.weight):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_kernel_match_with_fixed_vectors_has_no_embedding_parameter():
    vectors = torch.randn(30, 8)
    fixed = KernelMatch(vocab_size=30, embed_dim=8, fixed=vectors)
    assert {name for name, _ in fixed.named_parameters()} == {"gate.weight", "gate.bias", "out.weight", "out.bias"}
    assert "fixed" not in fixed.state_dict()          # rebuilt with the model, never checkpointed
    assert torch.allclose(fixed.words(torch.tensor([3])), nn.functional.normalize(vectors[3:4], dim=-1))
    with pytest.raises(ValueError, match="fixed vectors must be"):
        KernelMatch(vocab_size=30, embed_dim=4, fixed=vectors)
