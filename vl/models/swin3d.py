"""``swin3d``: Video Swin Transformer (Liu et al. 2022), the video encoder of VIOLET, built on torchvision.

The network is torchvision's ``SwinTransformer3d`` (``torchvision.models.video``): its ``PatchEmbed3d``
(2x4x4 tubelets, LayerNorm), its ``SwinTransformerBlock`` with ``ShiftedWindowAttention3d`` (attention in
3D windows with a relative position bias, shifted by half a window in every other block, windows shrunk
to the feature size where it is smaller) and its 2x2 ``PatchMerging`` between stages, built by
torchvision's own constructor and used as they are. What this module adds around them:

- token output: ``forward_features`` returns the normed last-stage features as (B, T'*H'*W', D) tokens
  (torchvision's ``forward`` pools and classifies; its ``head`` is not kept);
- MVM masking: masks (B, T'*H'*W') index the *output* token grid; each masked cell hides the block of
  patch embeddings it covers, replaced by a learned mask token after the patch embedding;
- activation checkpointing: the blocks of each stage run one by one, under ``torch.utils.checkpoint``
  when ``set_grad_checkpointing(True)``;
- the stages regrouped as ``stages[i].blocks`` (torchvision's ``features[2i]``) and
  ``stages[i].downsample`` (``features[2i + 1]``), the layout of the official release, so that
  torchvision's and the official checkpoints both load by renaming alone (``swin3d_checkpoints``).

Nothing of the network is written here. The attention is torchvision's explicit softmax(QK^T + bias)
rather than ``scaled_dot_product_attention``, so the ``attention`` kernel choice of a config does not
reach swin3d's windows (a window holds at most 8*7*7 tokens, so the explicit matrices stay small).

``pretrained``: a local Video Swin checkpoint (torchvision's ``swin3d_t/s/b`` weight files or an official
Video-Swin-Transformer release file), loaded strictly by ``swin3d_checkpoints.load_swin3d_weights``; its
parameters are then reported by ``pretrained_parameter_names`` (the optimiser's lower learning rate).

A ``frame_mask`` (B, T), False for the padded frames of a short clip, is honoured only in part: padded
frames are blanked before the patch embedding (so no output depends on what the pipeline filled them
with) and ``pool`` averages the tokens of real frames only, but window attention is not masked. A
window spanning real and padded frames mixes them, so real tokens near the end of a short clip do see
the blank padding; masking keys per window would leave all-padding windows with no key to attend, and
would change the network the public checkpoints were trained as.

Token-sparse encoding (``drop=``, ``vl.models.sparse``) is refused with a ValueError (``token_layout`` is
None): its windows and merging need every cell of the grid (see ``NO_TOKEN_DROP``).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Sequence

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torchvision.models.video.swin_transformer import PatchEmbed3d, SwinTransformer3d

from .layers import VideoEncoder, blank_padded_frames, check_mask, replace_masked, run_blocks
from .registry import VIDEO_ENCODERS, build
from .swin3d_checkpoints import load_swin3d_weights


NO_TOKEN_DROP = (
    "swin3d cannot encode a subset of its tokens (token-sparse encoding): its shifted 3D windows and its 2x2 "
    "patch merging work on the full (T', H', W') grid of every stage, so a dropped token would leave windows of "
    "unequal length and merged tokens without their neighbours; train swin3d dense (token sparsity keep_ratio "
    "1.0), or use MVM's mask=, which replaces tokens by a mask token instead of dropping them")


class SwinStage(nn.Module):
    """One stage of torchvision's Video Swin: its blocks, then its patch merging (C -> 2C) if any."""

    def __init__(self, blocks: nn.Sequential, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = blocks  # torchvision SwinTransformerBlock(attn_layer=ShiftedWindowAttention3d), alternating shift
        self.downsample = downsample  # torchvision PatchMerging: 2x2 spatial neighbours -> one token
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, H, W, C) -> (B, T, H/2, W/2, 2C) with merging, else same."""
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return x if self.downsample is None else self.downsample(x)


class SwinTransformer3D(VideoEncoder):
    """Video Swin: video (B, T, C, H, W) -> tokens (B, T'*H'*W', D) with T' = T/tubelet_size,
    H' = H/(patch_size * 2^(stages-1)) and D = width * 2^(stages-1). ``pool`` = token mean."""

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 32,
        patch_size: int = 4,
        tubelet_size: int = 2,
        in_chans: int = 3,
        width: int = 128,  # channels of the first stage (Swin's ``embed_dim``); doubles every stage
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: Sequence[int] = (8, 7, 7),  # (t, h, w), shrunk where the features are smaller
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        pretrained: str | os.PathLike | None = None,  # a local Video Swin checkpoint (torchvision or official)
    ) -> None:
        super().__init__()
        if len(window_size) != 3:
            raise ValueError(f"swin3d: window_size must be (t, h, w), got {tuple(window_size)}")
        if len(depths) != len(num_heads):
            raise ValueError(f"swin3d: depths {depths} and num_heads {num_heads} must have one entry per stage")
        if sum(depths) < 2:
            raise ValueError(f"swin3d: depths {tuple(depths)} must hold at least two blocks in all")
        stride = patch_size * 2 ** (len(depths) - 1)
        if img_size % stride or num_frames % tubelet_size:
            raise ValueError(f"swin3d: img_size {img_size} must be a multiple of patch_size * 2^(stages-1) = "
                             f"{stride} and num_frames {num_frames} a multiple of tubelet_size {tubelet_size}")
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.width, self.depths, self.num_heads = width, tuple(depths), tuple(num_heads)
        self.window_size, self.mlp_ratio = tuple(window_size), mlp_ratio
        self.embed_dim = width * 2 ** (len(depths) - 1)
        self.grid = (num_frames // tubelet_size, img_size // stride, img_size // stride)
        self.token_size = (tubelet_size, stride, stride)
        swin = SwinTransformer3d(
            patch_size=[tubelet_size, patch_size, patch_size], embed_dim=width, depths=list(depths),
            num_heads=list(num_heads), window_size=list(window_size), mlp_ratio=mlp_ratio,
            stochastic_depth_prob=drop_path_rate, num_classes=1,
            patch_embed=partial(PatchEmbed3d, in_channels=in_chans),
        )
        self.patch_embed = swin.patch_embed  # (B, C, T, H, W) -> (B, T', H/p, W/p, width)
        self.stages = nn.ModuleList([
            SwinStage(swin.features[k], swin.features[k + 1] if k + 1 < len(swin.features) else None)
            for k in range(0, len(swin.features), 2)
        ])
        self.norm = swin.norm
        self.mask_token = nn.Parameter(torch.zeros(width))
        trunc_normal_(self.mask_token, std=0.02)
        self.is_pretrained = pretrained is not None
        self._pretrained_names: set[str] = set()
        if pretrained is not None:
            self._pretrained_names = load_swin3d_weights(self, pretrained)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        tables = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return {"mask_token", *tables}

    def pretrained_parameter_names(self) -> set[str]:
        """Names of the parameters loaded from the ``pretrained`` checkpoint (all but ``mask_token``), or none."""
        return set(self._pretrained_names)

    def size_options(self) -> dict[str, object]:
        """The constructor options that fix the shape of every weight (what a checkpoint must agree with)."""
        return dict(width=self.width, depths=self.depths, num_heads=self.num_heads, window_size=self.window_size,
                    patch_size=self.patch_size, tubelet_size=self.tubelet_size, in_chans=self.in_chans,
                    mlp_ratio=self.mlp_ratio)

    def embed(self, video: Tensor, mask: Tensor | None, frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> patch embeddings (B, T', H/p, W/p, C), masked cells replaced and padded
        frames (``frame_mask`` False) blanked."""
        self.check_video(video)
        x = self.patch_embed(blank_padded_frames(video, frame_mask).transpose(1, 2))  # (B, T', H/p, W/p, C)
        if mask is None:
            return x
        B = x.shape[0]
        mask = check_mask(mask, B, self.num_grid_tokens, "swin3d").view(B, *self.grid)  # (B, T', H', W')
        factor = self.token_size[1] // self.patch_size
        mask = mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # (B, T', H/p, W/p)
        return replace_masked(x.flatten(1, 3), mask.flatten(1), self.mask_token).view_as(x)

    def check_token_layout(self) -> str:
        """Always a ValueError: Video Swin cannot drop tokens (``NO_TOKEN_DROP`` says why)."""
        raise ValueError(NO_TOKEN_DROP)

    def forward_features(self, video: Tensor, mask: Tensor | None = None,
                         frame_mask: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W), mask (B, T'*H'*W') True = masked, frame_mask (B, T) True = real frame ->
        tokens (B, T'*H'*W', D). A token ``drop`` mask raises ValueError (``NO_TOKEN_DROP``)."""
        if drop is not None:
            self.check_token_layout()
        if frame_mask is not None:
            self.frame_keep(frame_mask)  # validates its shape and that every clip has a real frame
        x = self.embed(video, mask, frame_mask)
        for stage in self.stages:
            x = stage(x)  # (B, T', h, w, c)
        return self.norm(x).flatten(1, 3)  # (B, N, D)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_tiny(**kw) -> SwinTransformer3D:
    """Debug size: width 32, depths (2, 2, 2), heads (1, 2, 4), window 2x4x4, 32 px, 4 frames."""
    return build(SwinTransformer3D, dict(img_size=32, num_frames=4, width=32, depths=(2, 2, 2),
                                         num_heads=(1, 2, 4), window_size=(2, 4, 4)), kw)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_t(**kw) -> SwinTransformer3D:
    """Video Swin-T (torchvision's ``swin3d_t``; ``_tiny`` is vl's debug size): width 96, depths (2, 2, 6, 2),
    heads (3, 6, 12, 24), window 8x7x7."""
    return build(SwinTransformer3D, dict(width=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                         drop_path_rate=0.1), kw)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_s(**kw) -> SwinTransformer3D:
    """Video Swin-S (torchvision's ``swin3d_s``): width 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24), window 8x7x7."""
    return build(SwinTransformer3D, dict(width=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                         drop_path_rate=0.1), kw)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_base(**kw) -> SwinTransformer3D:
    """Video Swin-B (VIOLET's encoder): width 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), window 8x7x7."""
    return build(SwinTransformer3D, dict(width=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                         drop_path_rate=0.2), kw)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_large(**kw) -> SwinTransformer3D:
    """Video Swin-L: width 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48), window 8x7x7."""
    return build(SwinTransformer3D, dict(width=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                         drop_path_rate=0.2), kw)
