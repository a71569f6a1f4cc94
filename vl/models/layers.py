"""Blocks shared by the model families: 3D patch embedding, attention that can return its weights,
fusion blocks, masking helpers and the checkpointed block loop.

What timm already has (Mlp, DropPath, LayerScale, trunc_normal_, its ViT ``Block``) is imported, not
rewritten; what it lacks in 3D or for cross-attention lives here.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class PatchEmbed3D(nn.Module):
    """Cut a clip into tubelets and embed each: (B, T, C, H, W) -> (B, T', H', W', D)."""

    def __init__(
        self,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, video: Tensor) -> Tensor:
        x = self.proj(video.transpose(1, 2))  # (B, D, T', H', W')
        x = x.permute(0, 2, 3, 4, 1)  # (B, T', H', W', D)
        return self.norm(x)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention through ``F.scaled_dot_product_attention``.

    ``forward(x (B, Nq, D), context (B, Nk, Dk) | None, key_mask (B, Nk) or (B, Nq, Nk) bool | None,
    need_weights)`` returns ``(out (B, Nq, D), weights (B, heads, Nq, Nk) | None)``; ``key_mask`` is True
    where a key may be attended (by every query, or per query: e.g. a causal mask). Weights are computed
    explicitly only when asked (SDPA does not return them).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, hd)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        context = x if context is None else context
        q = self._heads(self.q(x))  # (B, h, Nq, hd)
        k, v = (self._heads(t) for t in self.kv(context).chunk(2, dim=-1))  # (B, h, Nk, hd) each
        mask = None
        if key_mask is not None:  # (B, 1, 1, Nk) for every query, (B, 1, Nq, Nk) per query
            mask = (key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :]).bool()
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, h, Nq, Nk)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, self.attn_drop, self.training) @ v  # (B, h, Nq, hd)
        else:
            drop = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        out = out.transpose(1, 2).flatten(2)  # (B, Nq, D)
        return self.proj_drop(self.proj(out)), weights


class FusionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention to a context, MLP.

    With ``cross_attention=False`` it is a plain encoder block (single-stream fusion); with True it is
    the ALBEF/VindLU text block that attends to video tokens after attending to itself.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False,
                 context_dim: int | None = None, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attn_drop=drop, proj_drop=drop)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D), mask (B, N) or (B, N, N) keep -> (x (B, N, D), weights (B, h, N, N or Nc) | None).

        The weights are those of the cross-attention when there is one, else of the self-attention.
        """
        out, weights = self.attn(self.norm1(x), key_mask=mask, need_weights=need_weights and not self.cross_attention)
        x = x + self.drop_path(out)
        if self.cross_attention:
            if context is None:
                raise ValueError("a cross-attention fusion block needs video tokens as context")
            out, weights = self.cross_attn(self.norm_cross(x), context, context_mask, need_weights)
            x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


def run_blocks(blocks: Sequence[nn.Module], x: Tensor, checkpointing: bool, *args) -> Tensor:
    """``x = block(x, *args)`` for each block, under activation checkpointing when asked."""
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """1D sin-cos position table (length, dim): sines in the first half of the channels, cosines in the
    second, at geometric frequencies (the 1D counterpart of timm's ``build_sincos2d_pos_embed``)."""
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    omega = temperature ** -(torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))  # (dim/2,)
    angle = torch.arange(length, dtype=torch.float32)[:, None] * omega[None]  # (length, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over ``depth`` blocks (as timm)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal (0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_mask(mask: Tensor, batch: int, num_tokens: int, owner: str) -> Tensor:
    """Validate a token mask (B, N) bool, True = masked; return it as bool."""
    if mask.shape != (batch, num_tokens):
        raise ValueError(f"{owner}: mask must be (B, N) = ({batch}, {num_tokens}), got {tuple(mask.shape)}")
    return mask.bool()


def replace_masked(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """tokens (B, N, D), mask (B, N) True = masked, mask_token (D,) -> tokens with masked ones replaced."""
    return torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype).view(1, 1, -1), tokens)


def keep_visible(tokens: Tensor, mask: Tensor) -> Tensor:
    """tokens (B, N, D), mask (B, N) True = masked -> visible tokens (B, N_vis, D), in original order.

    Every row must hide the same number of tokens (as MAE/VideoMAE maskers do).
    """
    counts = (~mask).sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(
            f"dropping masked tokens needs the same number of visible tokens in every sample, got {counts.tolist()}"
        )
    B, _, D = tokens.shape
    return tokens[~mask].view(B, int(counts[0]), D)  # boolean indexing keeps row-major order


def check_drop(drop: Tensor, batch: int, grid: tuple[int, int, int], per_frame: bool, owner: str) -> Tensor:
    """Validate a token-drop mask (B, N_grid) bool, True = dropped (the same convention as an MVM ``mask``):
    every row must keep the same number of tokens and, with ``per_frame``, every time step of every row too
    (what per-frame attention over the kept tokens needs). Returns it as bool."""
    T, H, W = grid
    drop = check_mask(drop, batch, T * H * W, owner).bool()
    counts = (~drop).view(batch, T if per_frame else 1, -1).sum(dim=2)  # (B, T' or 1)
    if bool((counts != counts.flatten()[0]).any()) or int(counts.flatten()[0]) == 0:
        where = "time step of every clip" if per_frame else "clip"
        raise ValueError(f"{owner}: a token-drop mask must keep the same, non-zero number of tokens in every {where}, "
                         f"got kept counts {counts.tolist()}")
    return drop


def kept_cells(drop: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """drop (B, T'*S) True = dropped, the same count kept in every time step -> (B, T', K) long: the kept
    spatial cells of each time step in ascending (raster) order, K = kept tokens per time step."""
    B, T = drop.shape[0], grid[0]
    keep = ~drop.view(B, T, -1)  # (B, T', S)
    return keep.nonzero()[:, 2].view(B, T, -1)  # nonzero is row-major: cells ascend within each frame


def blank_padded_frames(video: Tensor, frame_mask: Tensor | None) -> Tensor:
    """video (B, T, C, H, W), frame_mask (B, T) True = real -> the video with padded frames set to 0 (the
    normalised mean), so that nothing downstream depends on what the data pipeline filled them with."""
    if frame_mask is None:
        return video
    return video * frame_mask.to(video.dtype)[:, :, None, None, None]


class VideoEncoder(nn.Module):
    """The contract every video encoder keeps (DESIGN §4).

    ``forward_features(video (B, T, C, H, W), mask (B, N_grid) bool | None, frame_mask (B, T) bool | None)
    -> tokens (B, N, D)``: the first ``num_prefix_tokens`` tokens are summary tokens (none for ``vit_st``
    and ``swin3d``, one per frame for ``clip_st``), the rest lie on ``grid`` = (T', H', W') in (t, h, w)
    row-major order, each covering ``token_size`` = (frames, pixels, pixels) of the clip. ``mask`` marks
    grid cells, True = masked. ``frame_mask`` (``Batch.frame_mask``) marks real frames, False = padding
    of a short clip: padded frames are blanked, and each family says in its docstring whether its
    attention also ignores them. ``token_keep(frame_mask, mask)`` -> (B, N) True for tokens of real
    frames; ``pool(tokens, keep) -> (B, D)`` averages only those.

    Token-sparse encoding (``vl.models.sparse``): ``forward_features(..., drop=drop)`` with ``drop``
    (B, N_grid) bool, True = dropped, encodes the clip on the kept grid cells only: dropped cells are
    removed before the first block (never replaced by a mask token), and the tokens come out as
    (B, prefix + N_kept, D), the kept ones in (t, h, w) order. ``token_layout`` says which drop masks an
    encoder takes: ``"any"`` (the same count kept in every clip), ``"per_frame"`` (the same count kept in
    every time step) or None (cannot drop tokens: ``check_token_layout`` says why).
    ``token_keep(frame_mask, drop=drop)`` is then (B, prefix + N_kept), and ``pool`` averages the kept
    tokens of real frames.

    ``drops_masked_tokens``: True when an MVM ``mask`` removes the masked cells from the encoded sequence
    (sparse encoding, MAE-style: every clip must then mask the same number of cells), False when they are
    encoded as a learned mask token.
    """

    embed_dim: int
    num_frames: int
    img_size: int
    grid: tuple[int, int, int]
    token_size: tuple[int, int, int]
    num_prefix_tokens: int = 0
    is_pretrained: bool = False
    token_layout: Literal["any", "per_frame"] | None = None  # which token-drop masks forward_features takes
    drops_masked_tokens: bool = False  # an MVM mask removes the masked cells (True) or replaces them (False)

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    @property
    def num_grid_tokens(self) -> int:
        """Number of grid cells, i.e. the length of a mask row."""
        t, h, w = self.grid
        return t * h * w

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.grad_checkpointing = enable

    def pretrained_parameter_names(self) -> set[str]:
        """Names of parameters loaded from pretrained weights (for a lower learning rate); none here."""
        return set()

    def check_video(self, video: Tensor) -> None:
        """Fail clearly when a clip does not have the frames and size this encoder was built for."""
        expected = (self.num_frames, self.img_size, self.img_size)
        if video.dim() != 5 or (video.shape[1], video.shape[3], video.shape[4]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects video (B, T, C, H, W) with T, H, W = {expected} (set "
                f"num_frames/img_size when creating it), got {tuple(video.shape)}"
            )

    def frame_keep(self, frame_mask: Tensor) -> Tensor:
        """frame_mask (B, T) True = real frame -> (B, T') True for time cells holding a real frame."""
        B = frame_mask.shape[0]
        if frame_mask.dim() != 2 or frame_mask.shape[1] != self.num_frames:
            raise ValueError(f"{type(self).__name__}: frame_mask must be (B, T) with T = {self.num_frames}, "
                             f"got {tuple(frame_mask.shape)}")
        frame_mask = frame_mask.bool()
        if not bool(frame_mask.any(dim=1).all()):
            raise ValueError(f"{type(self).__name__}: every clip needs a real frame; frame_mask rows "
                             f"{(~frame_mask.any(dim=1)).nonzero().flatten().tolist()} are all padding")
        return frame_mask.view(B, self.grid[0], -1).any(dim=2)  # (B, T')

    def check_token_layout(self) -> Literal["any", "per_frame"]:
        """This encoder's ``token_layout``; ValueError saying why when it cannot encode a subset of tokens."""
        if self.token_layout is None:
            raise ValueError(f"{type(self).__name__} cannot encode a subset of its tokens (token-sparse encoding)")
        return self.token_layout

    def check_drop(self, drop: Tensor, mask: Tensor | None, batch: int) -> Tensor:
        """Validate a token-drop mask for this encoder (see ``check_drop``); a drop and an MVM mask together
        are refused (MVM encodes its own masked pass)."""
        layout = self.check_token_layout()
        if mask is not None:
            raise ValueError(f"{type(self).__name__}: give a token-drop mask (drop=) or an MVM mask (mask=), not both")
        return check_drop(drop, batch, self.grid, layout == "per_frame", type(self).__name__)

    def token_keep(self, frame_mask: Tensor | None, mask: Tensor | None = None,
                   drop: Tensor | None = None) -> Tensor | None:
        """(B, N) True for the tokens ``forward_features`` returns that belong to real frames (None: all);
        with a token ``drop`` mask, (B, prefix + N_kept) for the kept tokens."""
        if frame_mask is None:
            return None
        cells = self.frame_keep(frame_mask)  # (B, T')
        grid = cells[:, :, None].expand(-1, -1, self.grid[1] * self.grid[2]).flatten(1)  # (B, N_grid)
        if drop is not None:
            grid = keep_visible(grid[..., None], drop.bool())[..., 0]  # (B, N_kept), kept tokens in (t, h, w) order
        prefix = cells.new_ones(cells.shape[0], self.num_prefix_tokens)
        return torch.cat([prefix, grid], dim=1)  # (B, prefix + N_grid or N_kept)

    def pool(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        """tokens (B, N, D), keep (B, N) True = real (None: all) -> (B, D): mean over the real grid tokens."""
        return masked_mean(tokens[:, self.num_prefix_tokens:],
                           None if keep is None else keep[:, self.num_prefix_tokens:])

    def forward(self, video: Tensor, mask: Tensor | None = None, frame_mask: Tensor | None = None,
                drop: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> pooled (B, D) (over the kept tokens of real frames with a ``drop``)."""
        if drop is None:
            tokens = self.forward_features(video, mask, frame_mask)
            return self.pool(tokens, self.token_keep(frame_mask, mask))
        tokens = self.forward_features(video, mask, frame_mask, drop=drop)
        return self.pool(tokens, self.token_keep(frame_mask, mask, drop=drop))


def masked_mean(tokens: Tensor, keep: Tensor | None) -> Tensor:
    """tokens (B, N, D), keep (B, N) bool | None -> (B, D): the mean over the kept tokens of each row."""
    if keep is None:
        return tokens.mean(dim=1)
    kept = tokens.masked_fill(~keep.bool()[..., None], 0.0)  # (B, N, D); a dropped token cannot leak, even as NaN
    return kept.sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1).to(tokens.dtype)

