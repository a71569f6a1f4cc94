"""``vit_st``: a space-time ViT on tubelets, with four ways of modelling time.

``temporal`` picks how attention crosses frames:

- ``none``: attention within each frame only (the per-frame "imagify" baseline); frames are
  mean-pooled at pooling. There is no time position table either (as TimeSformer's space-only model),
  so the encoder sees the frames as an unordered set: reversing a clip in time leaves its pooled
  embedding unchanged, and whatever depends on the order of events is out of its reach.
- ``joint``: attention over all space-time tokens (ViViT/VideoMAE). With a mask, masked tokens are
  dropped before the blocks and only the visible ones are returned, in their original (t, h, w) order.
- ``divided``: time attention then space attention in every block (TimeSformer).
- ``rolling``: All-in-one's temporal token rolling: before each attention, a slice of token positions
  is rolled one frame forward and another slice one frame back, then attention runs within each frame.
  It adds no parameters.

In every mode but ``joint``, masked tokens are replaced by a learned mask token.

A ``frame_mask`` (B, T), False for the padded frames of a short clip, is honoured in every mode: padded
frames are blanked before the patch embedding and ``pool`` averages the tokens of real frames only;
``joint`` masks the attention keys of padded tokens, ``divided`` masks padded time steps in its time
attention, ``rolling`` rolls no token in from a padded frame, and ``none`` attends within each frame
anyway. Real tokens therefore never depend on padded frames (a tubelet holding both a real and a padded
frame counts as real; its padded half is blank).

``pos_init`` is where the learned space and time position tables start: ``random`` (0.02-std normal, as
timm's ViT) or ``sincos`` (2D sin-cos over the patch grid, 1D over time, as MAE/VideoMAE). From a
random start, positions are drowned by the patch embeddings and a model trained from scratch takes
hundreds of steps before it can tell where or when anything is: a divided-attention ``vit_st_tiny``
(8 frames of 32 px, 4x4 patches) trained to classify the direction of motion of synthetic clips reached
28% after 400 steps from ``random`` (chance 25%) and 97.5% from ``sincos``. ``sincos`` also slows the
early learning of appearance (the input-independent position signal makes all clips' embeddings alike at
first), so ``random`` stays the default; ``tests/test_temporal.py`` pretrains with ``sincos`` to learn
the direction of motion contrastively.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import Attention, build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .layers import (PatchEmbed3D, VideoEncoder, blank_padded_frames, check_mask, drop_path_rates, init_weights,
                     keep_visible, replace_masked, run_blocks, sincos_1d)
from .registry import VIDEO_ENCODERS, build

Temporal = Literal["none", "joint", "divided", "rolling"]
TEMPORAL_MODES: tuple[str, ...] = ("none", "joint", "divided", "rolling")


# Every block takes x (B, N, D), the grid (T', H', W') and keep (B, N) bool | None: True for tokens of real
# frames (see VideoViT.token_keep); blocks never let a real token attend to a padded one.


def time_keep(keep: Tensor | None, T: int) -> Tensor | None:
    """Token keep (B, T'*S) over the full grid -> (B, T') keep per time step (None stays None)."""
    return None if keep is None else keep.view(keep.shape[0], T, -1)[:, :, 0]


class JointBlock(Block):
    """timm ViT block over all space-time tokens: (B, N, D) -> (B, N, D); padded tokens are not attended."""

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None) -> Tensor:
        return super().forward(x, attn_mask=None if keep is None else keep[:, None, None, :])  # (B, 1, 1, N)


class FrameBlock(Block):
    """timm ViT block applied to each frame separately: (B, T'*S, D) -> (B, T'*S, D)."""

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        T = grid[0]
        x = super().forward(x.reshape(B * T, N // T, D))  # (B*T', S, D)
        return x.reshape(B, N, D)


def roll_tokens(x: Tensor, ratio: float, frames: Tensor | None = None) -> Tensor:
    """x (B, T', S, D) -> same shape, the first ``ratio/2`` of positions taken from the previous frame
    and the next ``ratio/2`` from the following frame (cyclic in time). ``frames`` (B, T') True = real:
    a position whose neighbour frame is padding keeps its own token."""
    fold = int(x.shape[2] * ratio) // 2
    if fold == 0 or x.shape[1] == 1:
        return x
    from_prev = x[:, :, :fold].roll(1, dims=1)  # (B, T', fold, D)
    from_next = x[:, :, fold:2 * fold].roll(-1, dims=1)  # (B, T', fold, D)
    if frames is not None:
        prev_real = frames.roll(1, dims=1)[:, :, None, None]  # (B, T', 1, 1)
        next_real = frames.roll(-1, dims=1)[:, :, None, None]
        from_prev = torch.where(prev_real, from_prev, x[:, :, :fold])
        from_next = torch.where(next_real, from_next, x[:, :, fold:2 * fold])
    return torch.cat([from_prev, from_next, x[:, :, 2 * fold:]], dim=2)


class RollingBlock(Block):
    """All-in-one block: per-frame attention whose input has tokens rolled across adjacent frames."""

    def __init__(self, *args, roll_ratio: float = 0.25, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.roll_ratio = roll_ratio

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        T = grid[0]
        rolled = roll_tokens(x.view(B, T, N // T, D), self.roll_ratio, time_keep(keep, T))  # (B, T', S, D)
        rolled = rolled.reshape(B * T, N // T, D)  # (B*T', S, D)
        x = x.reshape(B * T, N // T, D)  # (B*T', S, D)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(rolled))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x.reshape(B, N, D)


class DividedBlock(Block):
    """TimeSformer block: attention over time at each position, then over space in each frame, then MLP."""

    def __init__(self, dim: int, num_heads: int, *args, **kwargs) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        T, S = grid[0], N // grid[0]
        frames = time_keep(keep, T)  # (B, T') | None
        time_mask = None if frames is None else frames.repeat_interleave(S, dim=0)[:, None, None, :]  # (B*S, 1, 1, T')
        xt = x.view(B, T, S, D).transpose(1, 2).reshape(B * S, T, D)  # (B*S, T', D)
        xt = xt + self.drop_path1(self.temporal_fc(self.attn_t(self.norm_t(xt), attn_mask=time_mask)))
        xs = xt.view(B, S, T, D).transpose(1, 2).reshape(B * T, S, D)  # (B*T', S, D)
        xs = super().forward(xs)  # space attention + MLP
        return xs.reshape(B, N, D)


BLOCKS: dict[str, type[Block]] = {
    "none": FrameBlock, "joint": JointBlock, "divided": DividedBlock, "rolling": RollingBlock,
}


class VideoViT(VideoEncoder):
    """Space-time ViT: video (B, T, C, H, W) -> tokens (B, T'*H'*W', D), or (B, N_visible, D) for a
    masked ``joint`` encoder. No CLS token: ``pool`` is the mean of the tokens (per frame, then over
    frames, which is the same mean)."""

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        temporal: Temporal = "joint",
        roll_ratio: float = 0.25,  # share of token positions rolled per frame (rolling only)
        drop_path_rate: float = 0.0,
        init_values: float | None = None,  # LayerScale init; None = no LayerScale
        pos_init: Literal["random", "sincos"] = "random",  # start of the learned position tables
    ) -> None:
        super().__init__()
        if pos_init not in ("random", "sincos"):
            raise ValueError(f"vit_st: pos_init must be 'random' or 'sincos', got {pos_init!r}")
        self.pos_init = pos_init
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"vit_st: temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"vit_st: img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames "
                f"{num_frames} a multiple of tubelet_size {tubelet_size}"
            )
        self.img_size, self.num_frames, self.temporal = img_size, num_frames, temporal
        self.patch_size, self.tubelet_size, self.embed_dim = patch_size, tubelet_size, embed_dim
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.token_size = (tubelet_size, patch_size, patch_size)
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        self.pos_embed_space = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], embed_dim))
        # `none` has no time positions: its frames are an unordered set (TimeSformer's space-only model).
        self.pos_embed_time = None if temporal == "none" else nn.Parameter(torch.zeros(1, self.grid[0], embed_dim))
        # Joint attention drops masked tokens, so only the other modes need a mask token.
        self.mask_token = None if temporal == "joint" else nn.Parameter(torch.zeros(embed_dim))
        self.blocks = nn.ModuleList([self._block(temporal, dpr, embed_dim, num_heads, mlp_ratio, roll_ratio,
                                                 init_values) for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()

    @staticmethod
    def _block(temporal: str, drop_path: float, dim: int, heads: int, mlp_ratio: float, roll_ratio: float,
               init_values: float | None) -> Block:
        kwargs = dict(mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path, init_values=init_values)
        if temporal == "rolling":
            kwargs["roll_ratio"] = roll_ratio
        return BLOCKS[temporal](dim, heads, **kwargs)

    def _init_weights(self) -> None:
        if self.pos_init == "sincos":
            # Learned tables that start as sin-cos (2D over the patch grid, 1D over time), as in MAE/VideoMAE.
            with torch.no_grad():
                self.pos_embed_space.copy_(build_sincos2d_pos_embed(list(self.grid[1:]), self.embed_dim)[None])
                if self.pos_embed_time is not None:
                    self.pos_embed_time.copy_(sincos_1d(self.grid[0], self.embed_dim)[None])
        else:
            trunc_normal_(self.pos_embed_space, std=0.02)
            if self.pos_embed_time is not None:
                trunc_normal_(self.pos_embed_time, std=0.02)
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        return {n for n in ("pos_embed_space", "pos_embed_time", "mask_token") if getattr(self, n) is not None}

    def pos_embed(self) -> Tensor:
        """Space-time position embeddings (1, T'*H'*W', D): a time and a space table, summed (``none``: the
        space table in every frame)."""
        pos = self.pos_embed_space[:, None, :, :].expand(-1, self.grid[0], -1, -1)  # (1, T', S, D)
        if self.pos_embed_time is not None:
            pos = pos + self.pos_embed_time[:, :, None, :]
        return pos.flatten(1, 2)  # (1, N, D)

    def token_keep(self, frame_mask: Tensor | None, mask: Tensor | None = None) -> Tensor | None:
        """(B, N or N_visible) True for tokens of real frames, in the order ``forward_features`` returns them."""
        keep = super().token_keep(frame_mask)  # (B, N)
        if keep is None or mask is None or self.mask_token is not None:
            return keep
        mask = check_mask(mask, keep.shape[0], keep.shape[1], "vit_st")
        return keep_visible(keep[..., None], mask)[..., 0]  # (B, N_visible)

    def embed(self, video: Tensor, mask: Tensor | None, frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> embedded tokens with positions (B, N, D); masked ones replaced, or
        dropped for ``joint`` (then (B, N_visible, D)). Padded frames (``frame_mask`` False) are blanked."""
        self.check_video(video)
        x = self.patch_embed(blank_padded_frames(video, frame_mask)).flatten(1, 3)  # (B, N, D)
        if mask is None:
            return x + self.pos_embed()
        mask = check_mask(mask, x.shape[0], x.shape[1], "vit_st")
        if self.mask_token is None:
            return keep_visible(x + self.pos_embed(), mask)  # (B, N_visible, D)
        return replace_masked(x, mask, self.mask_token) + self.pos_embed()

    def forward_features(self, video: Tensor, mask: Tensor | None = None,
                         frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W), mask (B, N) True = masked, frame_mask (B, T) True = real frame -> tokens
        (B, N or N_visible, D)."""
        keep = self.token_keep(frame_mask, mask)  # (B, N or N_visible) | None
        x = self.embed(video, mask, frame_mask)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, self.grid, keep)
        return self.norm(x)


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_tiny(**kw) -> VideoViT:
    """Debug size: 128 wide, 2 deep, 2 heads, 32 px, 4 frames."""
    return build(VideoViT, dict(img_size=32, num_frames=4, patch_size=8, embed_dim=128, depth=2, num_heads=2), kw)


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_base(**kw) -> VideoViT:
    """ViT-B/16 on 2x16x16 tubelets (VideoMAE-B): 768 wide, 12 deep, 12 heads."""
    return build(VideoViT, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), kw)


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_large(**kw) -> VideoViT:
    """ViT-L/16 on 2x16x16 tubelets (VideoMAE-L): 1024 wide, 24 deep, 16 heads."""
    return build(VideoViT, dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), kw)
