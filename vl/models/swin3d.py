"""``swin3d``: Video Swin Transformer (Liu et al. 2022), the video encoder of VIOLET.

3D patch embedding (2x4x4 tubelets), attention inside non-overlapping 3D windows with a relative
position bias, windows shifted by half a window in every other block, and 2x2 spatial patch merging
(timm's ``PatchMerging``, applied frame by frame) between stages. timm has no 3D Swin, so the windowing
is written here; Mlp, DropPath, trunc_normal_ and PatchMerging come from timm.

Masks (B, T'*H'*W') index the *output* token grid; each masked cell hides the block of input patches
it covers, replaced by a learned mask token.

A ``frame_mask`` (B, T), False for the padded frames of a short clip, is honoured only in part: padded
frames are blanked before the patch embedding (so no output depends on what the pipeline filled them
with) and ``pool`` averages the tokens of real frames only, but window attention is not masked. A
window spanning real and padded frames mixes them, so real tokens near the end of a short clip do see
the blank padding; masking keys per window would leave all-padding windows with no key to attend.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.swin_transformer import PatchMerging
from torch import Tensor, nn

from .layers import (PatchEmbed3D, VideoEncoder, blank_padded_frames, check_mask, drop_path_rates, init_weights,
                     replace_masked, run_blocks)
from .registry import VIDEO_ENCODERS, build

Size3 = tuple[int, int, int]


def fit_window(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Shrink the window to the feature size where it is larger, with no shift along that axis."""
    win = tuple(min(s, w) for s, w in zip(size, window))
    sft = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return win, sft  # type: ignore[return-value]


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """x (B, T, H, W, C) -> windows (B, nW, wt*wh*ww, C)."""
    B, T, H, W, C = x.shape
    wt, wh, ww = window
    x = x.view(B, T // wt, wt, H // wh, wh, W // ww, ww, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, nT, nH, nW, wt, wh, ww, C)
    return x.reshape(B, -1, wt * wh * ww, C)


def window_reverse(windows: Tensor, window: Size3, size: Size3) -> Tensor:
    """windows (B, nW, wt*wh*ww, C) -> x (B, T, H, W, C)."""
    B, _, _, C = windows.shape
    (T, H, W), (wt, wh, ww) = size, window
    x = windows.view(B, T // wt, H // wh, W // ww, wt, wh, ww, C)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, nT, wt, nH, wh, nW, ww, C)
    return x.reshape(B, T, H, W, C)


def relative_position_index(window: Size3, table_window: Size3, device: torch.device) -> Tensor:
    """(N, N) index into a bias table built for ``table_window`` for each pair of tokens of ``window``.

    Built per call, not cached: a tensor cached under ``torch.inference_mode`` (validation) could not be
    saved for backward in a later training step."""
    axes = [torch.arange(w, device=device) for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N)
    rel = rel + torch.tensor([w - 1 for w in table_window], device=device).view(3, 1, 1)
    _, wh, ww = table_window
    return (rel[0] * (2 * wh - 1) + rel[1]) * (2 * ww - 1) + rel[2]  # (N, N)


def shifted_window_mask(size: Size3, window: Size3, shift: Size3, device: torch.device) -> Tensor:
    """(nW, N, N) bool, True where two tokens of a shifted window came from the same region."""
    regions = torch.zeros(1, *size, 1, device=device)
    label = 0
    spans = [(slice(None),) if s == 0 else (slice(-w), slice(-w, -s), slice(-s, None))
             for w, s in zip(window, shift)]
    for t in spans[0]:
        for h in spans[1]:
            for w in spans[2]:
                regions[:, t, h, w, :] = label
                label += 1
    labels = window_partition(regions, window)[0, :, :, 0]  # (nW, N)
    return labels[:, :, None] == labels[:, None, :]


class WindowAttention3D(nn.Module):
    """Multi-head attention inside 3D windows with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: Size3, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        table = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def bias(self, window: Size3, device: torch.device) -> Tensor:
        """Relative position bias (heads, N, N) for a window of size ``window``."""
        index = relative_position_index(window, self.window_size, device)  # (N, N)
        return self.relative_position_bias_table[index].permute(2, 0, 1)  # (h, N, N)

    def forward(self, x: Tensor, window: Size3, mask: Tensor | None = None) -> Tensor:
        """x (B, nW, N, C), mask (nW, N, N) True = may attend -> (B, nW, N, C)."""
        B, nW, N, C = x.shape
        qkv = self.qkv(x).view(B, nW, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, h, N, hd) each
        bias = self.bias(window, x.device).unsqueeze(0)  # (1, h, N, N)
        if mask is not None:
            bias = bias.masked_fill(~mask.unsqueeze(1), float("-inf"))  # (nW, h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B, nW, h, N, hd)
        out = out.transpose(2, 3).reshape(B, nW, N, C)
        return self.proj(out)


class SwinBlock3D(nn.Module):
    """(Shifted) window attention + MLP, both pre-norm with residuals: (B, T, H, W, C) -> same."""

    def __init__(self, dim: int, num_heads: int, window_size: Size3, shift: bool, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(w // 2 for w in window_size) if shift else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def window_attention(self, x: Tensor) -> Tensor:
        """Pad to whole windows, shift, attend within windows, unshift, unpad: (B, T, H, W, C) -> same."""
        B, T, H, W, C = x.shape
        window, shift = fit_window((T, H, W), self.window_size, self.shift_size)
        pads = [(-s) % w for s, w in zip((T, H, W), window)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))  # (B, Tp, Hp, Wp, C)
        size = tuple(x.shape[1:4])
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            mask = shifted_window_mask(size, window, shift, x.device)  # (nW, N, N)
        x = window_reverse(self.attn(window_partition(x, window), window, mask), window, size)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :T, :H, :W].contiguous()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage3D(nn.Module):
    """Blocks alternating plain and shifted windows, then optional 2x2 spatial merging (C -> 2C)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Size3, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock3D(dim, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=drop_paths[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, H, W, C) -> (B, T, H/2, W/2, 2C) with merging, else same."""
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        if self.downsample is None:
            return x
        B, T, H, W, C = x.shape
        x = self.downsample(x.reshape(B * T, H, W, C))  # (B*T, H/2, W/2, 2C)
        return x.view(B, T, *x.shape[1:])


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
    ) -> None:
        super().__init__()
        if len(window_size) != 3:
            raise ValueError(f"swin3d: window_size must be (t, h, w), got {tuple(window_size)}")
        if len(depths) != len(num_heads):
            raise ValueError(f"swin3d: depths {depths} and num_heads {num_heads} must have one entry per stage")
        stride = patch_size * 2 ** (len(depths) - 1)
        if img_size % stride or num_frames % tubelet_size:
            raise ValueError(f"swin3d: img_size {img_size} must be a multiple of patch_size * 2^(stages-1) = "
                             f"{stride} and num_frames {num_frames} a multiple of tubelet_size {tubelet_size}")
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.embed_dim = width * 2 ** (len(depths) - 1)
        self.grid = (num_frames // tubelet_size, img_size // stride, img_size // stride)
        self.token_size = (tubelet_size, stride, stride)
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, width, norm=True)
        self.mask_token = nn.Parameter(torch.zeros(width))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList([
            Stage3D(width * 2**i, d, h, tuple(window_size), mlp_ratio, rates[s:s + d], i < len(depths) - 1)
            for i, (d, h, s) in enumerate(zip(depths, num_heads, starts))
        ])
        self.norm = nn.LayerNorm(self.embed_dim)
        trunc_normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        tables = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return {"mask_token", *tables}

    def embed(self, video: Tensor, mask: Tensor | None, frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> patch embeddings (B, T', H/p, W/p, C), masked cells replaced and padded
        frames (``frame_mask`` False) blanked."""
        self.check_video(video)
        x = self.patch_embed(blank_padded_frames(video, frame_mask))  # (B, T', H/p, W/p, C)
        if mask is None:
            return x
        B = x.shape[0]
        mask = check_mask(mask, B, self.num_grid_tokens, "swin3d").view(B, *self.grid)  # (B, T', H', W')
        factor = self.token_size[1] // self.patch_size
        mask = mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # (B, T', H/p, W/p)
        return replace_masked(x.flatten(1, 3), mask.flatten(1), self.mask_token).view_as(x)

    def forward_features(self, video: Tensor, mask: Tensor | None = None,
                         frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W), mask (B, T'*H'*W') True = masked, frame_mask (B, T) True = real frame ->
        tokens (B, T'*H'*W', D)."""
        if frame_mask is not None:
            self.frame_keep(frame_mask)  # validates its shape and that every clip has a real frame
        x = self.embed(video, mask, frame_mask)
        for stage in self.stages:
            x = stage(x)  # (B, T', h, w, c)
        return self.norm(x.flatten(1, 3))  # (B, N, D)


@VIDEO_ENCODERS.register(SwinTransformer3D)
def swin3d_tiny(**kw) -> SwinTransformer3D:
    """Debug size: width 32, depths (2, 2, 2), heads (1, 2, 4), window 2x4x4, 32 px, 4 frames."""
    return build(SwinTransformer3D, dict(img_size=32, num_frames=4, width=32, depths=(2, 2, 2),
                                         num_heads=(1, 2, 4), window_size=(2, 4, 4)), kw)


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
