"""The structured self-attentive sentence embedding: Lin et al., "A Structured Self-Attentive
Sentence Embedding", ICLR 2017; nlc's model.

    H = BiLSTM(embeddings)                       (n, 2u)   u hidden units per direction
    A = softmax(W_s2 tanh(W_s1 H^T))             (r, n)    r hops, softmax over the n tokens
    M = A H                                      (r, 2u)   the sentence embedding
    logits = MLP(flatten(M))                     2 layers, ReLU, dropout
    loss = cross-entropy + penalty * ||A A^T - I||_F^2   (averaged over the batch)

The penalty pushes the r hops to attend to different, focused parts of the sentence.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .text import PAD_ID


def attention_penalty(A: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2017), eq. 8: mean over the batch of ||A A^T - I||_F^2 for A of shape (B, r, n)."""
    eye = torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
    return ((A @ A.transpose(1, 2) - eye) ** 2).sum(dim=(1, 2)).mean()


class SelfAttentiveClassifier(nn.Module):
    """Structured self-attentive sentence embedding + 2-layer MLP (Lin et al. 2017; see the
    module docstring for the equations). Sizes in the paper (Yelp, Age): embeddings 100, u = 300,
    d_a = 350, r = 30, MLP 3000 / 2000 units, dropout 0.5; smaller defaults suit short queries and
    two CPU cores (see NLC).
    """

    def __init__(self, vocab_size: int, classes: int, *, embed_dim: int = 100, hidden: int = 150,
                 attention_dim: int = 100, hops: int = 4, mlp_hidden: int = 300, dropout: float = 0.5,
                 embed_dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.ws1 = nn.Linear(2 * hidden, attention_dim, bias=False)   # W_s1: d_a x 2u
        self.ws2 = nn.Linear(attention_dim, hops, bias=False)         # W_s2: r x d_a
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(hops * 2 * hidden, mlp_hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(mlp_hidden, classes))

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) ids, (B,) lengths -> M (B, r, 2u) and the attention A (B, r, n), zero on padding."""
        x = self.embed_dropout(self.embed(tokens))                      # (B, n, E)
        # packed, so the backward direction starts at each sentence's last word, not at padding
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        H, _ = self.lstm(packed)
        H, _ = nn.utils.rnn.pad_packed_sequence(H, batch_first=True, total_length=tokens.shape[1])  # (B, n, 2u)
        scores = self.ws2(torch.tanh(self.ws1(H))).transpose(1, 2)      # (B, r, n)
        pad = torch.arange(tokens.shape[1]) >= lengths[:, None]         # (B, n)
        A = torch.softmax(scores.masked_fill(pad[:, None, :], float("-inf")), dim=2)
        return A @ H, A                                                 # (B, r, 2u), (B, r, n)

    def forward_with_attention(self, tokens: torch.Tensor, lengths: torch.Tensor):
        M, A = self.encode(tokens, lengths)
        return self.mlp(M.flatten(1)), A

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(tokens, lengths)[0]
