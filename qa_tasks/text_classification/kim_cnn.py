"""The CNN sentence classifier of

    Yoon Kim. "Convolutional Neural Networks for Sentence Classification." EMNLP 2014.

qc's model, and nlc's baseline.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import PAD_ID


class KimCNN(nn.Module):
    """CNN sentence classifier, Kim (2014), the CNN-rand variant.

    Word embeddings (random init, trained) -> for each filter width w in `widths`, `maps`
    feature maps c_i = relu(W . x_{i:i+w-1} + b) -> max-over-time pooling c^ = max_i c_i ->
    concatenate -> dropout -> linear layer to the classes. Kim: widths 3/4/5, 100 maps each,
    dropout 0.5, 300-dimensional embeddings (CNN-rand initialises them uniform in [-0.25, 0.25]).

    As in Kim's code, every sentence is padded with w - 1 zero vectors on both sides, so the
    first and last words (the "what" / "who" of a question) fill every position of a filter.
    Difference from the paper (on purpose): windows made of padding only are left out of the
    max (Kim pads every sentence to the longest in the corpus and lets the padding compete), so
    a sentence's prediction does not depend on the sentences it is batched with.
    """

    def __init__(self, vocab_size: int, classes: int, *, embed_dim: int = 300,
                 widths: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"filter widths must be a non-empty list of positive ints, not {widths}")
        self.widths = tuple(widths)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        nn.init.uniform_(self.embed.weight, -0.25, 0.25)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        # padding w - 1 on both sides: a "wide" convolution, windows (B, maps, T + w - 1)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, w, padding=w - 1) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(maps * len(self.widths), classes)

    def features(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B,) lengths -> (B, maps * len(widths)) pooled features."""
        x = self.embed(tokens).transpose(1, 2)                     # (B, E, T)
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            c = F.relu(conv(x))                                    # (B, maps, T + w - 1)
            # window i covers padded positions i..i+w-1, i.e. words i-w+1..i: it touches the
            # sentence iff i < len + w - 1 (the trailing batch padding adds windows past that)
            valid = torch.arange(c.shape[2]) < (lengths + w - 1)[:, None]              # (B, T+w-1)
            pooled.append(c.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=2))  # (B, maps)
        return torch.cat(pooled, dim=1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B,) lengths -> (B, classes) logits."""
        return self.out(self.dropout(self.features(tokens, lengths)))
