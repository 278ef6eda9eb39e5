"""The answer-selection model of Feng, Xiang, Glass, Wang, Zhou, "Applying deep learning to answer
selection: a study and an open task", ASRU 2015 (arXiv:1508.01585), architecture II: the question
and the answer go through the same tower

    embedding -> hidden layer, tanh -> convolution (one or more widths) -> max over time -> tanh

and the two encodings are compared with cosine or GESD (Feng et al.'s best),

    GESD(x, y) = 1 / (1 + ||x - y||) * 1 / (1 + exp(-gamma (x.y + c)))     (gamma = 1, c = 1);

training minimises the margin ranking loss L = max(0, m - s(q, a+) + s(q, a-)).

The towers see the question and the answer apart; `KernelMatch` scores them together (K-NRM,
Xiong et al., "End-to-end neural ad-hoc ranking with kernel pooling", SIGIR 2017): the cosine of
every (question word, answer word) pair of word vectors, pooled per question word by RBF kernels
(soft counts of answer words at similarity 1, 0.9, 0.7, ..., -0.9), log-summed over the question
words with a learned gate per word (DRMM's term gating, Guo et al. 2016: which question words
matter), and a linear layer over the kernels. It sees the exact and the near matches the SOLR
pools were retrieved by, weighted by word, which a pair of fixed-size encodings blurs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .insuranceqa import PAD

# -- similarities and loss (pure functions: tests call them on hand-computed examples) -----------

def gesd(x: torch.Tensor, y: torch.Tensor, *, gamma: float = 1.0, c: float = 1.0) -> torch.Tensor:
    """Geometric mean of Euclidean and Sigmoid Dot product, over the last dimension (broadcasts).

    GESD(x, y) = 1 / (1 + ||x - y||) * 1 / (1 + exp(-gamma (x.y + c)))   (Feng et al. 2015)
    """
    # clamp before the square root: its gradient at 0 is infinite (x == y happens at init)
    dist = (x - y).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return 1.0 / (1.0 + dist) * torch.sigmoid(gamma * ((x * y).sum(-1) + c))


def cosine(x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """x.y / (||x|| ||y||) over the last dimension (broadcasts); 0 when either vector is 0."""
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(eps)


SIMILARITIES = ("gesd", "cosine")


def ranking_loss(pos: torch.Tensor, neg: torch.Tensor, neg_ok: torch.Tensor, margin: float,
                 order: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over questions of max(0, m - s(q, a+) + s(q, a-)), a- chosen among K sampled answers.

    pos: (B,) scores of the ground-truth answers; neg: (B, K) scores of the sampled answers;
    neg_ok: (B, K) bool, False where the sampled answer is one of that question's ground truths
    (then it is no negative). A question with no usable negative contributes 0.

    order None: a- is the hardest negative (highest score). order (B, K) int, a permutation of
    0..K-1 per question: a- is the first negative in that order that violates the margin, as the
    reference implementation's "sample until one violates" would find; when none violates the
    loss is 0 for that question, as it is for the hardest.
    """
    if order is None:
        chosen = neg.masked_fill(~neg_ok, -math.inf).max(dim=1).values          # (B,)
    else:
        violates = neg_ok & (margin - pos[:, None] + neg > 0)                   # (B, K)
        # the violator with the smallest position in the search order (K where none violates)
        first = torch.where(violates, order, neg.shape[1]).argmin(dim=1)        # (B,)
        chosen = neg.gather(1, first[:, None]).squeeze(1)
        chosen = chosen.masked_fill(~violates.any(dim=1), -math.inf)
    return torch.clamp(margin - pos + chosen, min=0.0).mean()


def softmax_loss(scores: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean over questions of the cross-entropy of question b's own positive, column b, among
    the columns `ok` allows it (InfoNCE with in-batch negatives).

    scores: (B, N) with N >= B, column b holding question b's ground-truth answer; ok: (B, N)
    bool, False where the column is another copy of one of question b's ground truths (no
    negative then); ok[b, b] must be True.
    """
    target = torch.arange(len(scores), device=scores.device)
    return nn.functional.cross_entropy(scores.masked_fill(~ok, -math.inf), target)


# -- the model ----------------------------------------------------------------------------------

class Tower(nn.Module):
    """embedding -> hidden (tanh) -> conv per width -> max over time -> tanh; one for Q and A."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, filters: int, widths: tuple[int, ...]):
        super().__init__()
        self.widths = widths
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.hidden = nn.Linear(embed_dim, hidden)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, filters, w) for w in widths)

    @property
    def dim(self) -> int:
        return sum(conv.out_channels for conv in self.convs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, right-padded with PAD, L >= max(widths) -> (B, filters * len(widths))."""
        lengths = (tokens != PAD).sum(1)                              # (B,)
        h = torch.tanh(self.hidden(self.embed(tokens)))               # (B, L, H)
        h = h.transpose(1, 2)                                         # (B, H, L)
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            c = conv(h)                                               # (B, F, L - w + 1)
            # max only over windows that start inside the text (at least one, for short texts),
            # so padding never wins the max and the length of the batch's padding is irrelevant
            starts = torch.arange(c.shape[2], device=c.device)
            valid = starts[None, :] < (lengths - w + 1).clamp_min(1)[:, None]   # (B, L - w + 1)
            pooled.append(c.masked_fill(~valid[:, None, :], -math.inf).max(dim=2).values)
        return torch.tanh(torch.cat(pooled, dim=1))


def kernel_centres(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K-NRM's kernels: an exact-match kernel (mu 1, sigma 1e-3) and n - 1 soft ones with centres
    spread evenly over (-1, 1) (n = 11: 0.9, 0.7, ..., -0.9) and sigma half their spacing."""
    if n < 2:
        raise ValueError(f"kernel pooling needs at least 2 kernels (exact match and one soft), not {n}")
    step = 2.0 / (n - 1)
    mu = [1.0] + [1.0 - step / 2 - i * step for i in range(n - 1)]
    sigma = [1e-3] + [step / 2] * (n - 1)
    return torch.tensor(mu), torch.tensor(sigma)


class KernelMatch(nn.Module):
    """K-NRM over word vectors with question-word gating: `forward(q, a)` scores (N, Lq) question
    tokens against (N, La) answer tokens, row by row, -> (N,)."""

    def __init__(self, vocab_size: int, embed_dim: int, kernels: int = 11, fixed: torch.Tensor | None = None):
        """`fixed`: (vocab_size, embed_dim) word vectors kept as they are (a buffer, rebuilt with
        the model, so no parameter); None: an embedding trained with the rest."""
        super().__init__()
        if fixed is None:
            self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        else:
            if tuple(fixed.shape) != (vocab_size, embed_dim):
                raise ValueError(f"fixed vectors must be {(vocab_size, embed_dim)}, not {tuple(fixed.shape)}")
            self.embed = None
            self.register_buffer("fixed", fixed.clone(), persistent=False)
        mu, sigma = kernel_centres(kernels)
        self.register_buffer("mu", mu, persistent=False)
        self.register_buffer("sigma", sigma, persistent=False)
        self.gate = nn.Linear(embed_dim, 1)
        self.out = nn.Linear(kernels, 1)
        # start at 0: the joint score begins as the towers' and the kernels' weight grows from there
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def words(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> unit word vectors (..., L, E) (PAD's vector is 0, so its cosines are 0)."""
        vectors = self.embed(tokens) if self.embed is not None else nn.functional.embedding(tokens, self.fixed)
        return nn.functional.normalize(vectors, dim=-1)

    def forward(self, q_tokens: torch.Tensor, a_tokens: torch.Tensor) -> torch.Tensor:
        q = self.words(q_tokens)
        sim = q @ self.words(a_tokens).transpose(1, 2)                             # (N, Lq, La)
        return self.pooled(sim, q, q_tokens != PAD, a_tokens != PAD)

    @torch.no_grad()
    def pool(self, q_tokens: torch.Tensor, a_tokens: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
        """One question's (Lq,) tokens against its pool's (P, La) -> (P,), as `forward` scores them;
        `vocab` is `words` of every id (V, E): the question's cosines to the vocabulary are looked
        up per answer word, instead of embedding the pool's P x La words."""
        q = self.words(q_tokens)                                                   # (Lq, E)
        sim = (q @ vocab.T)[:, a_tokens].transpose(0, 1)                           # (P, Lq, La)
        p = len(a_tokens)
        return self.pooled(sim, q.expand(p, -1, -1), (q_tokens != PAD).expand(p, -1), a_tokens != PAD)

    def pooled(self, sim: torch.Tensor, q: torch.Tensor, q_mask: torch.Tensor,
               a_mask: torch.Tensor) -> torch.Tensor:
        """Cosines sim (N, Lq, La), the question's unit vectors q (N, Lq, E) and the not-PAD masks
        (N, Lq), (N, La) -> scores (N,)."""
        # a padding column sits far from every kernel (its soft counts are 0)
        sim = sim.masked_fill(~a_mask[:, None, :], -10.0)
        k = torch.exp(-(sim[..., None] - self.mu) ** 2 / (2 * self.sigma ** 2))   # (N, Lq, La, K)
        soft_tf = torch.log1p(k.sum(2))                                            # (N, Lq, K)
        gate = self.gate(q).squeeze(-1).masked_fill(~q_mask, -math.inf)           # (N, Lq)
        # a question of only padding (never in the data) would give NaN: its weights become 0
        weights = torch.softmax(gate, dim=1).nan_to_num(0.0)
        return self.out((weights[..., None] * soft_tf).sum(1)).squeeze(-1)


class AnswerSelector(nn.Module):
    """The shared tower plus the similarity; `forward(q, a)` scores rows pairwise. With `match`
    (a KernelMatch) the score of a pair is the towers' similarity plus the match's."""

    def __init__(self, tower: Tower, similarity: str, gamma: float, c: float,
                 match: KernelMatch | None = None):
        super().__init__()
        self.tower = tower
        self.match = match
        self.similarity, self.gamma, self.c = similarity, gamma, c

    def score(self, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Similarity of encoded vectors over the last dimension (broadcasts)."""
        if self.similarity == "gesd":
            return gesd(q, a, gamma=self.gamma, c=self.c)
        return cosine(q, a)

    def forward(self, q_tokens: torch.Tensor, a_tokens: torch.Tensor) -> torch.Tensor:
        return self.score(self.tower(q_tokens), self.tower(a_tokens))
