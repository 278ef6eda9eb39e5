"""A CTC encoder with an intermediate CTC head whose blank posterior lets frames skip the top layers.

CTC blank-triggered dynamic layer skipping (after Hou et al., "CTC Blank Triggered Dynamic
Layer-Skipping for Efficient CTC-based Speech Recognition", ASRU 2023, which reports 29 % faster
inference with minor degradation). Frames that the intermediate CTC head at layer k is confident
are blank carry no label information; they skip layers k+1..L:

    h_k          = layers_1..k(frontend(x))                                  (B, T, d)
    p_blank      = P_inter(blank | h_k)                                      (B, T)
    keep_t       = p_blank_t <= threshold, then dilated by `spike_extension` frames
                   (a frame next to a kept, i.e. non-blank, frame is kept too)
    h_L[keep]    = layers_k+1..L(h_k[keep])     (attention among kept frames only)
    h_L[~keep]   = h_k[~keep]                   (skipped frames keep their layer-k values)
    P_final      = softmax(W h_L)               (the final head sees every frame)

Training runs every frame through every layer, with the joint loss

    L = (1 - w) CTC(P_final) + w CTC(P_inter) + lambda KL(sg(P_final) || P_inter)

(w: `inter_ctc_weight`; lambda: `distill_weight`, knowledge distillation from the final head's
detached posteriors). The intermediate head may be *factorized*:

    P_inter(blank)         = sigmoid(z_b)                      z_b = u^T h  (one logit)
    P_inter(c | non-blank) = softmax(V h)_c                    c = 1..C
    P_inter(c)             = (1 - sigmoid(z_b)) softmax(V h)_c (sums to 1 with P(blank))

so the blank decision that drives skipping is its own binary classifier.

Vocabulary: index 0 is the CTC blank, index d + 1 is digit d.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLANK = 0


class ConvSubsampling(nn.Module):
    """Two 1-D convolutions over time (kernel 3, stride 2; mel bins as input channels): 4x fewer
    frames, 40 ms apart, each seeing 7 feature frames (85 ms of audio); then a residual
    depthwise-separable convolution over `context` frames, since 85 ms is little of a digit.
    (Why not a 2-D front end over (time, mel): docs/results/asr.md, "Model".)"""

    def __init__(self, n_mels: int, d_model: int, channels: int, context: int = 7):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(n_mels, channels, 3, 2), nn.ReLU(),
                                  nn.Conv1d(channels, d_model, 3, 2), nn.ReLU())
        self.context = nn.Sequential(nn.Conv1d(d_model, d_model, context, padding=context // 2, groups=d_model),
                                     nn.Conv1d(d_model, d_model, 1), nn.ReLU())
        self.proj = nn.Linear(d_model, d_model)          # no activation: LayerNorms follow

    @staticmethod
    def out_lengths(lens: torch.Tensor) -> torch.Tensor:
        """Frames after subsampling: each 3-wide stride-2 conv maps T to (T - 1) // 2."""
        return ((lens - 1) // 2 - 1) // 2

    def forward(self, x: torch.Tensor, out_lens: torch.Tensor) -> torch.Tensor:
        """x (B, T, M), out_lens (B,) -> (B, T', d). Frames past an utterance's end are zeroed
        before the context convolution, so a padded batch computes what each utterance alone does."""
        x = self.conv(x.transpose(1, 2))                 # (B, d, T')
        x = x * (torch.arange(x.shape[2])[None] < out_lens[:, None])[:, None]
        return self.proj((x + self.context(x)).transpose(1, 2))     # (B, T', d)


def sinusoids(length: int, d: int) -> torch.Tensor:
    """(length, d) sinusoidal position encodings (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class EncoderLayer(nn.Module):
    """Pre-norm Transformer layer: x + MHA(LN x), then x + FFN(LN x)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, d); mask (B, T) True on real frames, or None when every frame is real."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]          # (B, 1, 1, T) keys
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)     # (B, h, T, d/h)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class InterHead(nn.Module):
    """The intermediate CTC head: log P over (blank, digits), factorized or a plain softmax."""

    def __init__(self, d_model: int, vocab: int, factorized: bool):
        super().__init__()
        self.factorized = factorized
        self.proj = nn.Linear(d_model, vocab)     # factorized: column 0 is the blank logit z_b

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.proj(h)                                                      # (B, T, V)
        if not self.factorized:
            return F.log_softmax(z, -1)
        log_blank = F.logsigmoid(z[..., :1])                                  # log sigmoid(z_b)
        log_nonblank = F.logsigmoid(-z[..., :1])                              # log (1 - sigmoid(z_b))
        return torch.cat([log_blank, log_nonblank + F.log_softmax(z[..., 1:], -1)], -1)   # (B, T, V)


class CTCSkipEncoder(nn.Module):
    """Conv subsampling + `layers` pre-norm Transformer layers, a final CTC head and an
    intermediate one after layer `inter_layer` (1-based).

    No LayerNorm before the heads: a frame's norm tells speech from pause, and normalising it
    away hides exactly that from them (with one, training stayed on CTC's all-blank plateau:
    docs/results/asr.md, "Model")."""

    def __init__(self, *, n_mels: int = 40, d_model: int = 144, heads: int = 4, layers: int = 6,
                 inter_layer: int = 3, ff_dim: int = 576, conv_channels: int = 32, dropout: float = 0.1,
                 vocab: int = 11, factorized: bool = True):
        super().__init__()
        if not 1 <= inter_layer < layers:
            raise ValueError(f"inter_layer must be in 1..layers-1 = 1..{layers - 1}, got {inter_layer}")
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.inter_layer, self.n_layers = inter_layer, layers
        self.frontend = ConvSubsampling(n_mels, d_model, conv_channels)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ff_dim, dropout) for _ in range(layers))
        self.inter_head = InterHead(d_model, vocab, factorized)
        self.final_head = nn.Linear(d_model, vocab)
        self.drop = nn.Dropout(dropout)

    def embed(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """feats (B, T, M), lens (B,) -> x (B, T', d), mask (B, T') or None, out_lens (B,)."""
        out_lens = ConvSubsampling.out_lengths(lens)
        x = self.frontend(feats, out_lens)
        x = self.drop(x * math.sqrt(x.shape[2]) + sinusoids(x.shape[1], x.shape[2]))   # scaled as ESPnet does
        mask = torch.arange(x.shape[1])[None] < out_lens[:, None]
        return x, (None if bool(mask.all()) else mask), out_lens

    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Both heads read the residual stream without a LayerNorm: see the class docstring."""
        return F.log_softmax(self.final_head(h), -1)                          # (B, T, V)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor):
        """Every frame through every layer -> (final log-probs, intermediate log-probs, out_lens)."""
        h, mask, out_lens = self.embed(feats, lens)
        inter = None
        for i, layer in enumerate(self.layers, 1):
            h = layer(h, mask)
            if i == self.inter_layer:
                inter = self.inter_head(h)
        return self.final(h), inter, out_lens

    def full(self, feats: torch.Tensor, lens: torch.Tensor):
        """Inference without skipping and without the intermediate head -> (log-probs, out_lens)."""
        h, mask, out_lens = self.embed(feats, lens)
        for layer in self.layers:
            h = layer(h, mask)
        return self.final(h), out_lens

    def keep_mask(self, h: torch.Tensor, out_lens: torch.Tensor, threshold: float, spike_extension: int):
        """(B, T) True for real frames that go on through the top layers: intermediate
        P(blank) <= threshold, dilated by spike_extension frames each side."""
        valid = torch.arange(h.shape[1])[None] < out_lens[:, None]            # (B, T)
        keep = (self.inter_head(h)[..., BLANK].exp() <= threshold) & valid
        if spike_extension > 0:
            w = 2 * spike_extension + 1
            keep = F.max_pool1d(keep[:, None].float(), w, 1, spike_extension)[:, 0].bool() & valid
        return keep

    def skipping(self, feats: torch.Tensor, lens: torch.Tensor, threshold: float, spike_extension: int = 1):
        """Inference with blank-triggered skipping -> (log-probs, out_lens, skipped (B,) frames).

        A frame skips layers inter_layer+1..L when its intermediate P(blank) > threshold and no
        frame within `spike_extension` frames of it is kept."""
        h, mask, out_lens = self.embed(feats, lens)
        for layer in self.layers[:self.inter_layer]:
            h = layer(h, mask)
        b, t, d = h.shape
        keep = self.keep_mask(h, out_lens, threshold, spike_extension)         # (B, T)
        n_keep = keep.sum(1)                                                   # (B,)
        tk = int(n_keep.max())
        if tk == 0:
            return self.final(h), out_lens, out_lens.clone()
        # 1. gather: kept frames first, in time order (stable sort), padded to the longest
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :tk]   # (B, Tk)
        index = order[..., None].expand(b, tk, d)
        g0 = torch.gather(h, 1, index)                                        # (B, Tk, d)
        kmask = torch.arange(tk)[None] < n_keep[:, None]                      # (B, Tk)
        kmask[n_keep == 0] = True        # a row with nothing kept: attend to anything, then discarded
        g = g0
        # 2. the remaining layers, attention among kept frames only
        for layer in self.layers[self.inter_layer:]:
            g = layer(g, None if bool(kmask.all()) else kmask)
        # 3. scatter back; padding positions write their own layer-k values back (no change)
        g = torch.where((torch.arange(tk)[None] < n_keep[:, None])[..., None], g, g0)
        out = h.scatter(1, index, g)
        return self.final(out), out_lens, out_lens - n_keep


def ctc_losses(model: CTCSkipEncoder, feats, lens, targets, target_lens) -> dict[str, torch.Tensor]:
    """CTC of both heads and the distillation KL(sg(P_final) || P_inter), each a mean scalar."""
    final, inter, out_lens = model(feats, lens)                              # (B, T, V) x2, (B,)
    too_short = out_lens < target_lens
    if bool(too_short.any()):
        raise ValueError(f"utterance of {int(lens[too_short][0])} feature frames is too short for "
                         f"{int(target_lens[too_short][0])} labels after 4x subsampling")
    ctc = lambda lp: F.ctc_loss(lp.transpose(0, 1), targets, out_lens, target_lens, blank=BLANK,
                                reduction="mean", zero_infinity=True)
    valid = (torch.arange(final.shape[1])[None] < out_lens[:, None]).float()  # (B, T)
    teacher = final.detach()
    kl = (teacher.exp() * (teacher - inter)).sum(-1)                          # (B, T)
    return {"final": ctc(final), "inter": ctc(inter), "kd": (kl * valid).sum() / valid.sum()}


def greedy(log_probs: torch.Tensor, out_lens: torch.Tensor) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks -> digits per utterance."""
    best = log_probs.argmax(-1)                                               # (B, T)
    out = []
    for row, n in zip(best.tolist(), out_lens.tolist()):
        seq, prev = [], BLANK
        for s in row[:n]:
            if s != prev and s != BLANK:
                seq.append(s - 1)
            prev = s
        out.append(seq)
    return out
