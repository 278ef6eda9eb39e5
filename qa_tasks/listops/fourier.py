"""Sequence classifiers for long inputs: a Transformer encoder and the Fourier Transformer.

The Fourier Transformer (He, Liu, Fang, Sun, Huang, Ji, "Fourier Transformer: Fast Long Range
Modeling by Removing Sequence Redundancy with FFT Operator", Findings of ACL 2023) keeps the
Transformer's layers and weights and shortens the hidden sequence between layers: the hidden
states (B, T, C) are taken to the frequency domain along the sequence with the orthonormal
DCT-II, only the first ceil(p * T) coefficients (the low frequencies) are kept, and the inverse
DCT of that shorter spectrum gives a sequence of length ceil(p * T) that later layers run on.
Attention costs O(T^2), so layers after a shortening by p cost about p^2 as much.

    h' = sqrt(T'/T) * IDCT_T'( DCT_T(h)[:T'] ),   T' = ceil(p * T)

The factor sqrt(T'/T) makes the operation a resampling (a constant sequence stays the same
constant; the orthonormal pair alone would scale it by sqrt(T/T')), so the residual stream keeps
its scale. (With pre-LN blocks it mattered little in the one check made, docs/results/lra.md.)
No parameters are added: the two models have identical state_dicts, so a trained Transformer's
weights carry over (see `inherit`).

The DCT is computed with torch.fft (Makhoul, "A fast cosine transform in one and two
dimensions", 1980: reorder, one FFT of the same length, one twiddle), so it runs on any device
and backpropagates; it equals scipy.fft.dct(x, type=2, norm="ortho").

Padding: sequences are right-padded; each sequence is transformed over its own length L only
(padding never mixes into the spectrum) and becomes ceil(p * L) long, so the padding mask
shrinks with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- the DCT via FFT ----------------------------------------------------------------------------


def _dct_perm(n: int, device) -> torch.Tensor:
    # Makhoul's reordering: even samples in order, then odd samples reversed
    return torch.cat([torch.arange(0, n, 2, device=device), torch.arange(1, n, 2, device=device).flip(0)])


def _ortho_scale(n: int, x: torch.Tensor) -> torch.Tensor:
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=x.dtype, device=x.device)
    scale[0] = math.sqrt(1.0 / n)
    return scale


def dct(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II over the last dimension: (..., N) -> (..., N).

    X_k = s_k * sum_n x_n cos(pi (2n + 1) k / (2N)),  s_0 = sqrt(1/N), s_k = sqrt(2/N).
    """
    n = x.shape[-1]
    v = x[..., _dct_perm(n, x.device)]                              # (..., N) reordered
    V = torch.fft.fft(v, dim=-1)                                    # (..., N) complex
    k = torch.arange(n, dtype=x.dtype, device=x.device)
    twiddle = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))
    return (V * twiddle).real * _ortho_scale(n, x)                 # (..., N)


def idct(X: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct` (orthonormal DCT-III) over the last dimension: (..., N) -> (..., N)."""
    n = X.shape[-1]
    Xu = X / _ortho_scale(n, X)                                     # unnormalised coefficients
    # V_k = exp(i pi k / 2N) (X_k - i X_{N-k}) with X_N = 0 is the FFT of the reordered signal
    X_rev = torch.cat([torch.zeros_like(Xu[..., :1]), Xu.flip(-1)[..., :-1]], dim=-1)  # X_{N-k}
    k = torch.arange(n, dtype=X.dtype, device=X.device)
    twiddle = torch.polar(torch.ones_like(k), math.pi * k / (2 * n))
    V = twiddle * torch.complex(Xu, -X_rev)                         # (..., N) Hermitian
    v = torch.fft.irfft(V[..., : n // 2 + 1], n=n, dim=-1)          # (..., N) real
    return v[..., torch.argsort(_dct_perm(n, X.device))]            # undo the reordering


def dct_shorten(x: torch.Tensor, length: int) -> torch.Tensor:
    """Keep the first `length` DCT coefficients over the last dimension and return to the
    signal domain at that length: (..., N) -> (..., length), scaled by sqrt(length / N)."""
    n = x.shape[-1]
    if not 1 <= length <= n:
        raise ValueError(f"cannot shorten a sequence of {n} to {length}: need 1 <= length <= {n}")
    return idct(dct(x)[..., :length]) * math.sqrt(length / n)


def shortened_length(n: int, ratio: float) -> int:
    """ceil(ratio * n), at least 1 (rounded first so 0.1 * 30 is 3, not 4)."""
    return max(1, math.ceil(round(ratio * n, 9)))


def shorten_padded(x: torch.Tensor, mask: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier shortening of a right-padded batch, each sequence over its own length.

    x: (B, T, C) hidden states; mask: (B, T) bool, True on tokens, a prefix of each row.
    Returns (B, T', C) and its (B, T') mask, T' = the longest shortened length.
    """
    B, T, C = x.shape
    lengths = mask.sum(dim=1)                                       # (B,)
    if not torch.equal(mask, torch.arange(T, device=mask.device) < lengths[:, None]):
        raise ValueError("the padding mask must be right-padding (tokens first, then padding) "
                         "for Fourier shortening; pad at the end of each sequence")
    if int(lengths.min()) < 1:
        raise ValueError("a sequence in the batch has no tokens; every sequence needs at least one")
    new_lengths = [shortened_length(int(n), ratio) for n in lengths.tolist()]
    out = x.new_zeros(B, max(new_lengths), C)                      # (B, T', C)
    for n in sorted(set(lengths.tolist())):                        # one FFT per distinct length
        rows = (lengths == n).nonzero().squeeze(1)
        m = shortened_length(n, ratio)
        seq = x[rows, :n].transpose(1, 2)                           # (b, C, n): DCT along time
        out[rows, :m] = dct_shorten(seq, m).transpose(1, 2)         # (b, m, C)
    new_mask = torch.arange(out.shape[1], device=x.device) < torch.tensor(new_lengths, device=x.device)[:, None]
    return out, new_mask


# ---- the models ---------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    vocab_size: int
    n_classes: int
    max_len: int = 2048          # positions available (learned table size)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 128
    dropout: float = 0.0
    positions: str = "learned"   # "learned" | "sinusoidal"
    pooling: str = "mean"        # "mean" over tokens | "cls" (the first token)
    pad_id: int = 0
    # Fourier Transformer: shorten the sequence by fourier_ratio before each of these layers
    fourier_layers: tuple[int, ...] = ()
    fourier_ratio: float = 0.5

    def __post_init__(self):
        self.fourier_layers = tuple(int(i) for i in self.fourier_layers)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', not {self.positions!r}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if not 0.0 < self.fourier_ratio <= 1.0:
            raise ValueError(f"fourier_ratio must be in (0, 1], got {self.fourier_ratio}")
        bad = [i for i in self.fourier_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"fourier_layers {bad} out of range: layers are 0..{self.n_layers - 1}")


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],  # keys: (B, 1, 1, T)
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))        # (B, T, C)


class Block(nn.Module):
    """Pre-LN encoder layer: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


def sinusoids(n: int, d: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions: (n, d), sin on even and cos on odd channels."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class TransformerClassifier(nn.Module):
    """Token ids (B, T) -> class logits (B, n_classes). cfg.fourier_layers is ignored here."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        else:  # not in the state_dict, so both kinds of model keep the same keys
            self.register_buffer("pos_table", sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def shorten_before(self, layer: int) -> bool:
        return False

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_len {self.cfg.max_len}; "
                             "build the model with a larger max_len")
        if mask is None:
            mask = ids != self.cfg.pad_id                           # (B, T) True on tokens
        pos = self.pos.weight[:T] if self.cfg.positions == "learned" else self.pos_table[:T]
        x = self.drop(self.tok(ids) + pos)                          # (B, T, C)
        for i, block in enumerate(self.blocks):
            if self.shorten_before(i):
                x, mask = shorten_padded(x, mask, self.cfg.fourier_ratio)  # (B, T', C), (B, T')
            x = block(x, mask)
        x = self.ln_f(x)
        if self.cfg.pooling == "cls":
            pooled = x[:, 0]                                        # (B, C)
        else:
            m = mask.unsqueeze(-1).to(x.dtype)                      # (B, T, 1)
            pooled = (x * m).sum(1) / m.sum(1)                      # (B, C) mean over tokens
        return self.head(pooled)                                    # (B, n_classes)


class FourierTransformerClassifier(TransformerClassifier):
    """The Transformer with DCT shortening before cfg.fourier_layers (same parameters).

    With cls pooling the first position after a shortening is a low-pass mix of the start of
    the sequence, not the CLS token alone: mean pooling is the natural choice here.
    """

    def shorten_before(self, layer: int) -> bool:
        return layer in self.cfg.fourier_layers


def build(cfg: ModelConfig, kind: str) -> TransformerClassifier:
    """kind "transformer" or "fourier"."""
    if kind == "transformer":
        return TransformerClassifier(cfg)
    if kind == "fourier":
        if not cfg.fourier_layers:
            raise ValueError("a Fourier Transformer needs fourier_layers (e.g. (1,)): with none "
                             "it is the plain Transformer")
        return FourierTransformerClassifier(cfg)
    raise ValueError(f"model must be 'transformer' or 'fourier', not {kind!r}")


def inherit(transformer_state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> FourierTransformerClassifier:
    """A Fourier Transformer holding a trained Transformer's weights (the paper's recipe for
    pretrained models: load, then fine-tune). The parameter sets are identical, so the load is
    strict: any missing or unexpected key is an error."""
    model = build(cfg, "fourier")
    model.load_state_dict(transformer_state_dict, strict=True)
    return model
