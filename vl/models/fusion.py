"""Fusion of video and text tokens (DESIGN §4).

- ``single_stream`` (VIOLET, All-in-one): text and video tokens, each projected to the fusion width and
  tagged with a type embedding, are concatenated (text first) and run through transformer blocks.
- ``cross_attention`` (ALBEF, VindLU): text blocks that attend to themselves, then to the video tokens.

Both are built from the pre-norm ``FusionBlock`` of ``layers.py``. transformers' ``BertLayer`` was not
used: in transformers v5 a cross-attention ``BertLayer`` must be a decoder, which makes its
self-attention causal, and it no longer returns attention weights.

``forward(video_tokens (B, N, Dv), text_tokens (B, L, Dt), text_mask (B, L), video_mask (B, N) | None,
return_attention=False) -> dict``: ``tokens`` (all fused tokens), ``text_tokens`` (B, L, D),
``cls`` (B, D) (the fused first text token), ``pooled`` (B, D) (what the VTM, QA and multiple-choice heads
read: ``pooling: cls`` the fused first text token, as BERT, ALBEF and VIOLET read it; ``pooling: mean`` the mean
of the fused text tokens under ``text_mask``) and, when asked, ``attentions`` (B, L, N): the last block's
text-to-video attention, averaged over heads (VIOLET's attended masking reads it). Masks are attention
masks: 1/True = a real token to attend to.

``causal=True`` makes the fusion a decoder over the text (SwinBERT-style captioning): text token i attends
to text tokens 0..i and to every video token; video tokens never attend to text (in single-stream
fusion they attend to video only), so no output depends on a later text token.

``pooling: mean`` is for text encoders whose first token carries nothing yet (trained from scratch: a randomly
initialised BERT's CLS output is the same for every caption, cosine 0.9999): with ``pooling: cls`` the VTM
head then reads a query that starts out the same for every pair and must gather both modalities and
compare them within the fusion's depth; each fused text token can compare its own word with the video
after one block (the measured effect on the VTM head: BENCHMARKS.md, "Fusion pooling").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import FusionBlock, drop_path_rates, init_weights
from .registry import FUSIONS, build


def causal_text_mask(text_mask: Tensor) -> Tensor:
    """(B, L) keep -> (B, L, L) keep: query i may attend to the real text tokens 0..i."""
    L = text_mask.shape[1]
    lower = torch.ones(L, L, dtype=torch.bool, device=text_mask.device).tril()  # (L, L)
    return lower[None] & text_mask.bool()[:, None, :]  # (B, L, L)


def causal_single_stream_mask(text_mask: Tensor, video_mask: Tensor) -> Tensor:
    """(B, L), (B, N) keep -> (B, L + N, L + N) keep for text-first single-stream decoding: text attends
    causally to text and to all video; video attends to video only."""
    B, L = text_mask.shape
    N = video_mask.shape[1]
    mask = torch.zeros(B, L + N, L + N, dtype=torch.bool, device=text_mask.device)
    mask[:, :L, :L] = causal_text_mask(text_mask)
    mask[:, :, L:] = video_mask.bool()[:, None, :]  # every query sees the real video tokens
    return mask


FUSION_POOLINGS = ("cls", "mean")


class Fusion(nn.Module):
    """Shared input projections and block stack; subclasses say how text meets video."""

    cross_attention: bool = False

    def __init__(self, video_dim: int, text_dim: int, dim: int | None, depth: int, num_heads: int | None,
                 mlp_ratio: float, dropout: float, drop_path_rate: float, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in FUSION_POOLINGS:
            raise ValueError(f"fusion: pooling must be one of {FUSION_POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.dim = dim or text_dim
        heads = num_heads or max(self.dim // 64, 1)
        self.video_proj = nn.Linear(video_dim, self.dim)
        self.text_proj = nn.Identity() if text_dim == self.dim else nn.Linear(text_dim, self.dim)
        self.blocks = nn.ModuleList([
            FusionBlock(self.dim, heads, mlp_ratio, self.cross_attention, drop=dropout, drop_path=dp)
            for dp in drop_path_rates(drop_path_rate, depth)
        ])
        self.norm = nn.LayerNorm(self.dim)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        return set()

    def pool(self, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """Fused text tokens (B, L, D), mask (B, L) -> (B, D) as ``pooling`` says."""
        if self.pooling == "cls":
            return text_tokens[:, 0]
        keep = text_mask.to(text_tokens.dtype)[..., None]  # (B, L, 1)
        return (text_tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)

    def run(self, x: Tensor, mask: Tensor, context: Tensor | None, context_mask: Tensor | None,
            need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """Blocks in order; the last one returns its attention weights when asked."""
        weights = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, weights = torch.utils.checkpoint.checkpoint(
                    block, x, mask, context, context_mask, need_weights and last, use_reentrant=False)
            else:
                x, weights = block(x, mask, context, context_mask, need_weights and last)
        return self.norm(x), weights


class SingleStreamFusion(Fusion):
    """Text and video tokens concatenated through shared blocks: tokens (B, L + N, D), text first."""

    def __init__(self, video_dim: int, text_dim: int, dim: int | None = None, depth: int = 2,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 drop_path_rate: float = 0.0, pooling: str = "cls") -> None:
        super().__init__(video_dim, text_dim, dim, depth, num_heads, mlp_ratio, dropout, drop_path_rate, pooling)
        self.type_embed = nn.Embedding(2, self.dim)  # 0 = text, 1 = video
        nn.init.trunc_normal_(self.type_embed.weight, std=0.02)
        self.apply(init_weights)

    def forward(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
                video_mask: Tensor | None = None, return_attention: bool = False,
                causal: bool = False) -> dict[str, Tensor]:
        B, L = text_mask.shape
        N = video_tokens.shape[1]
        t = self.text_proj(text_tokens) + self.type_embed.weight[0]  # (B, L, D)
        v = self.video_proj(video_tokens) + self.type_embed.weight[1]  # (B, N, D)
        if video_mask is None:
            video_mask = text_mask.new_ones(B, N)
        if causal:
            mask = causal_single_stream_mask(text_mask, video_mask)  # (B, L + N, L + N)
        else:
            mask = torch.cat([text_mask.bool(), video_mask.bool()], dim=1)  # (B, L + N)
        x, weights = self.run(torch.cat([t, v], dim=1), mask, None, None, return_attention)  # (B, L + N, D)
        out = {"tokens": x, "text_tokens": x[:, :L], "video_tokens": x[:, L:], "cls": x[:, 0],
               "pooled": self.pool(x[:, :L], text_mask)}
        if weights is not None:
            out["attentions"] = weights[:, :, :L, L:].mean(dim=1)  # (B, L, N)
        return out


class CrossAttentionFusion(Fusion):
    """Text blocks with cross-attention to the video tokens: tokens (B, L, D)."""

    cross_attention = True

    def __init__(self, video_dim: int, text_dim: int, dim: int | None = None, depth: int = 2,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 drop_path_rate: float = 0.0, pooling: str = "cls") -> None:
        super().__init__(video_dim, text_dim, dim, depth, num_heads, mlp_ratio, dropout, drop_path_rate, pooling)
        self.apply(init_weights)

    def forward(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
                video_mask: Tensor | None = None, return_attention: bool = False,
                causal: bool = False) -> dict[str, Tensor]:
        t = self.text_proj(text_tokens)  # (B, L, D)
        v = self.video_proj(video_tokens)  # (B, N, D)
        mask = None if video_mask is None else video_mask.bool()
        self_mask = causal_text_mask(text_mask) if causal else text_mask.bool()  # (B, L, L) or (B, L)
        x, weights = self.run(t, self_mask, v, mask, return_attention)  # (B, L, D)
        out = {"tokens": x, "text_tokens": x, "cls": x[:, 0], "pooled": self.pool(x, text_mask)}
        if weights is not None:
            out["attentions"] = weights.mean(dim=1)  # (B, L, N)
        return out


@FUSIONS.register(SingleStreamFusion)
def single_stream(**kw) -> SingleStreamFusion:
    """VIOLET-style single-stream fusion; ``depth`` blocks at width ``dim`` (default: the text width)."""
    return build(SingleStreamFusion, {}, kw)


@FUSIONS.register(CrossAttentionFusion)
def cross_attention(**kw) -> CrossAttentionFusion:
    """ALBEF/VindLU-style fusion: text blocks with cross-attention to video; ``depth`` blocks."""
    return build(CrossAttentionFusion, {}, kw)
