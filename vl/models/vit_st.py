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

Token-sparse encoding (``forward_features(video, drop=drop)``, ``drop`` (B, N) True = dropped, see
``vl.models.sparse``) really removes the dropped grid tokens before the first block, in every mode, and
returns ``[P prefix tokens, kept grid tokens in (t, h, w) order]``; each kept token carries the position
embedding of its own cell. ``joint`` takes any mask keeping the same count per clip (it is its MVM path:
attention over the kept tokens only). The per-frame modes (``divided``, ``rolling``, ``none``) need the
same number K of kept tokens in every time step, since their space attention runs per frame on
(B*T', K) tokens:

- ``divided``: space attention runs within each frame over its K kept tokens; time attention runs, at
  each spatial cell, over the time steps that kept that cell (a token kept in one frame only attends to
  itself in time). With ``tube`` selection (the same cells in every frame) this is the dense block on the
  sub-grid of kept cells, computed slot by slot; otherwise the queries, keys and values (computed on the
  kept tokens only) are scattered to the (cell, time) grid for the T'xT' attention, a cheap step beside
  the per-token projections.
- ``rolling``: a kept token in the rolled slices (cells of the first ``roll_ratio/2`` and next
  ``roll_ratio/2`` of the grid, as dense) takes the token of the same cell in the previous / next time
  step when that step kept the cell (and is a real frame); otherwise it keeps its own, as at a padded
  neighbour. With ``tube`` selection every rolled cell is kept in every frame.
- ``none``: attention within each frame over its kept tokens.

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
first), so ``random`` stays the class default, for pretrained starts whose checkpoints bring their own
tables; ``vit_st_tiny``, which is trained from scratch, starts from ``sincos`` (README, "Learning time").

``class_token`` adds one CLS token per time step (timm's ViT has one per image): it sits first in its
frame, attends within its frame in ``none``/``divided``/``rolling`` (and across time to the other frames'
CLS tokens in ``divided``'s time attention; ``rolling`` never rolls it), and takes part in ``joint``
attention like any token. Tokens come out as ``[T' CLS tokens, T'*H'*W' grid tokens]``
(``num_prefix_tokens = T'``) and ``pool`` is then the mean of the real frames' CLS tokens, as timm pools an
image. One CLS token per frame, rather than TimeSformer's single shared one, is what lets a ViT inflated
from an image checkpoint compute exactly the image model on every frame (a shared token mixes the frames
after the first block).

``pos_table`` is ``space_time`` (learned space and time tables, summed) or ``flat_sincos``: VideoMAE's
fixed 1D sin-cos table over the flattened (t, h, w) token index, a buffer that is not learned.
``final_norm: false`` drops the closing LayerNorm (VideoMAE with ``use_mean_pooling`` has none) and
``norm_eps`` is the LayerNorm epsilon: by default 1e-6 when ``pretrained`` is a timm ViT (timm's value),
else 1e-5 (PyTorch's); VideoMAE folders need 1e-12 (their ``layer_norm_eps``, checked on load).

``pretrained`` is a local checkpoint read by ``vl.models.pretrained`` (``pretrained_format``: ``timm`` for
a timm ViT, inflated to video so that step 0 computes the image model on every frame; ``videomae`` for a
Hugging Face VideoMAE ``save_pretrained`` folder); ``pretrained_parameter_names`` lists what it loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerNorm, build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .layers import (PatchEmbed3D, VideoEncoder, blank_padded_frames, check_mask, drop_path_rates, init_weights,
                     keep_visible, kept_cells, masked_mean, replace_masked, run_blocks, sincos_1d)
from .pretrained import PretrainedFormat, load_vit_st_weights
from .registry import VIDEO_ENCODERS, build

Temporal = Literal["none", "joint", "divided", "rolling"]
TEMPORAL_MODES: tuple[str, ...] = ("none", "joint", "divided", "rolling")
PosTable = Literal["space_time", "flat_sincos"]
POS_TABLES: tuple[str, ...] = ("space_time", "flat_sincos")


def sincos_flat(length: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """1D sin-cos table (length, dim) with sines on even channels and cosines on odd ones, channel pair i at
    frequency ``temperature ** (-2i / dim)`` (the original Transformer's layout, which VideoMAE uses over its
    flattened token index); computed in float64, returned as float32."""
    pair = torch.arange(dim, dtype=torch.float64).div(2, rounding_mode="floor") * 2  # (dim,): 0, 0, 2, 2, ...
    angle = torch.arange(length, dtype=torch.float64)[:, None] / temperature ** (pair / dim)  # (length, dim)
    even = torch.arange(dim) % 2 == 0
    return torch.where(even, angle.sin(), angle.cos()).float()


# Every block takes x (B, N, D), the grid (T', H', W'), keep (B, N) bool | None: True for tokens of real
# frames (see VideoViT.token_keep), and slots (FrameSlots | None) for token-sparse per-frame tokens; blocks
# never let a real token attend to a padded one.


@dataclass
class FrameSlots:
    """Where the tokens of a token-sparse, per-frame sequence sit: x (B, T'*Q, D) holds Q tokens per time step
    (its CLS token, then its K kept grid cells), token j of step t at position ``index[b, t, j]`` of the
    step's ``positions`` (prefix + H'*W'; positions ascend within a step)."""

    index: Tensor  # (B, T', Q) long: the position each token holds in its time step
    positions: int  # positions per time step in the dense layout (CLS token + H'*W' cells)
    prefix: int  # CLS tokens per time step (0 or 1), never dropped and never rolled
    tube: bool  # every time step holds the same positions (time attention then runs slot by slot)

    @classmethod
    def from_cells(cls, cells: Tensor, spatial: int, prefix: int) -> "FrameSlots":
        """cells (B, T', K) kept grid cells, ascending -> slots with ``prefix`` CLS positions first."""
        B, T, _ = cells.shape
        index = torch.cat([torch.arange(prefix, device=cells.device).expand(B, T, prefix), cells + prefix], dim=2)
        return cls(index, prefix + spatial, prefix, bool((cells == cells[:, :1]).all()))


def time_keep(keep: Tensor | None, T: int) -> Tensor | None:
    """Token keep (B, T'*S) over the full grid -> (B, T') keep per time step (None stays None)."""
    return None if keep is None else keep.view(keep.shape[0], T, -1)[:, :, 0]


class JointBlock(Block):
    """timm ViT block over all space-time tokens: (B, N, D) -> (B, N, D); padded tokens are not attended."""

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None, slots: FrameSlots | None = None) -> Tensor:
        return super().forward(x, attn_mask=None if keep is None else keep[:, None, None, :])  # (B, 1, 1, N)


class FrameBlock(Block):
    """timm ViT block applied to each frame separately: (B, T'*S, D) -> (B, T'*S, D)."""

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None, slots: FrameSlots | None = None) -> Tensor:
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


def roll_sources(slots: FrameSlots, ratio: float, frames: Tensor | None = None) -> Tensor:
    """``roll_tokens`` for token-sparse frames, as indices: (B, T'*Q) long, the token of the flat (B, T'*Q)
    sequence each token takes. A token whose cell lies in the first ``ratio/2`` of the grid cells takes the
    same cell of the previous time step, one in the next ``ratio/2`` that of the following step (cyclic),
    when that step kept the cell and is real (``frames`` (B, T')); every other token (CLS tokens included)
    keeps its own."""
    index = slots.index  # (B, T', Q)
    B, T, Q = index.shape
    own = torch.arange(T * Q, device=index.device).view(1, T, Q).expand(B, T, Q)
    fold = int((slots.positions - slots.prefix) * ratio) // 2
    if fold == 0 or T == 1:
        return own.flatten(1)
    slot_of = index.new_full((B, T, slots.positions), -1).scatter_(2, index, own % Q)  # (B, T', positions)
    cell = index - slots.prefix  # (B, T', Q); negative for CLS tokens
    steps = torch.arange(T, device=index.device)[None, :, None]  # (1, T', 1)
    source = own
    for shift, lo, hi in ((-1, fold, 2 * fold), (1, 0, fold)):  # next first, so that prev wins (slices are disjoint)
        src_slot = slot_of.roll(shift, dims=1).gather(2, index)  # (B, T', Q): same cell, step t - shift
        ok = (cell >= lo) & (cell < hi) & (src_slot >= 0)
        if frames is not None:
            ok = ok & frames.roll(shift, dims=1)[:, :, None]
        source = torch.where(ok, (steps - shift) % T * Q + src_slot, source)
    return source.flatten(1)


class RollingBlock(Block):
    """All-in-one block: per-frame attention whose input has tokens rolled across adjacent frames. The first
    ``roll_skip`` tokens of each frame (its CLS token) are never rolled."""

    def __init__(self, *args, roll_ratio: float = 0.25, roll_skip: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.roll_ratio, self.roll_skip = roll_ratio, roll_skip

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None, slots: FrameSlots | None = None) -> Tensor:
        B, N, D = x.shape
        T, k = grid[0], self.roll_skip
        if slots is None:
            frames = x.view(B, T, N // T, D)  # (B, T', k + S, D)
            patches = roll_tokens(frames[:, :, k:], self.roll_ratio, time_keep(keep, T))  # (B, T', S, D)
            rolled = torch.cat([frames[:, :, :k], patches], dim=2)  # (B, T', k + S, D)
        else:  # token-sparse: Q = k + K tokens per time step
            source = roll_sources(slots, self.roll_ratio, time_keep(keep, T))  # (B, N)
            rolled = x.gather(1, source[:, :, None].expand(-1, -1, D))  # (B, N, D)
        rolled = rolled.reshape(B * T, N // T, D)  # (B*T', S, D)
        x = x.reshape(B * T, N // T, D)  # (B*T', S, D)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(rolled))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x.reshape(B, N, D)


class DividedBlock(Block):
    """TimeSformer block: attention over time at each position, then over space in each frame, then MLP."""

    def __init__(self, dim: int, num_heads: int, *args, norm_layer: type[nn.Module] = LayerNorm, **kwargs) -> None:
        super().__init__(dim, num_heads, *args, norm_layer=norm_layer, **kwargs)
        self.norm_t = norm_layer(dim)
        self.attn_t = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int, int],  # type: ignore[override]
                keep: Tensor | None = None, slots: FrameSlots | None = None) -> Tensor:
        B, N, D = x.shape
        T, S = grid[0], N // grid[0]  # token-sparse: S = the Q tokens kept per time step
        frames = time_keep(keep, T)  # (B, T') | None
        if slots is not None and not slots.tube:  # time attention per cell over the steps that kept it
            xt = x.view(B, T, S, D)
            xt = xt + self.drop_path1(self.temporal_fc(self.sparse_time_attention(xt, slots, frames)))
            xs = xt.reshape(B * T, S, D)  # (B*T', S, D)
            return super().forward(xs).reshape(B, N, D)
        time_mask = None if frames is None else frames.repeat_interleave(S, dim=0)[:, None, None, :]  # (B*S, 1, 1, T')
        xt = x.view(B, T, S, D).transpose(1, 2).reshape(B * S, T, D)  # (B*S, T', D)
        xt = xt + self.drop_path1(self.temporal_fc(self.attn_t(self.norm_t(xt), attn_mask=time_mask)))
        xs = xt.view(B, S, T, D).transpose(1, 2).reshape(B * T, S, D)  # (B*T', S, D)
        xs = super().forward(xs)  # space attention + MLP
        return xs.reshape(B, N, D)


    def sparse_time_attention(self, x: Tensor, slots: FrameSlots, frames: Tensor | None) -> Tensor:
        """``attn_t(norm_t(.))`` of token-sparse frames x (B, T', Q, D) -> (B, T', Q, D): each token attends to
        the tokens of its own position in the time steps that kept it (and are real frames). Projections run
        on the kept tokens only; the T'xT' attention runs on the (position, time) grid."""
        attn, (B, T, Q, D), P = self.attn_t, x.shape, slots.positions
        h, hd = attn.num_heads, attn.head_dim
        index = slots.index[..., None]  # (B, T', Q, 1)
        qkv = attn.qkv(self.norm_t(x))  # (B, T', Q, 3D)
        grid = qkv.new_zeros(B, T, P, qkv.shape[-1]).scatter(2, index.expand_as(qkv), qkv)  # (B, T', P, 3D)
        present = torch.zeros(B, T, P, dtype=torch.bool, device=x.device).scatter(2, slots.index, True)
        if frames is not None:
            present = present & frames[:, :, None]
        present = present | ~present.any(dim=1, keepdim=True)  # a position no step kept: its rows are discarded
        grid = grid.view(B, T, P, 3, h, hd).permute(3, 0, 2, 4, 1, 5).reshape(3, B * P, h, T, hd)
        q, k, v = grid.unbind(0)  # (B*P, h, T', hd) each
        q, k = attn.q_norm(q), attn.k_norm(k)
        key_mask = present.transpose(1, 2).reshape(B * P, 1, 1, T)  # (B*P, 1, 1, T')
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                             dropout_p=attn.attn_drop.p if self.training else 0.0)
        out = out.permute(0, 2, 1, 3).reshape(B, P, T, D).transpose(1, 2)  # (B, T', P, D)
        out = attn.norm(out.gather(2, index.expand(-1, -1, -1, D)))  # (B, T', Q, D)
        if attn.gate is not None:
            out = out * attn.gate(self.norm_t(x)).sigmoid()
        return attn.proj_drop(attn.proj(out))


BLOCKS: dict[str, type[Block]] = {
    "none": FrameBlock, "joint": JointBlock, "divided": DividedBlock, "rolling": RollingBlock,
}


class VideoViT(VideoEncoder):
    """Space-time ViT: video (B, T, C, H, W) -> tokens (B, P + T'*H'*W', D), or (B, P + N_visible, D) for a
    masked ``joint`` encoder, where P = T' CLS tokens with ``class_token`` and 0 without. Without CLS tokens
    ``pool`` is the mean of the grid tokens (per frame, then over frames, which is the same mean); with
    them, the mean of the CLS tokens."""

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
        pos_table: PosTable = "space_time",  # learned space + time tables, or VideoMAE's fixed flat sin-cos
        class_token: bool = False,  # one CLS token per time step (timm ViTs have one per image)
        final_norm: bool = True,  # closing LayerNorm (False for VideoMAE with use_mean_pooling)
        norm_eps: float | None = None,  # LayerNorm epsilon; None: 1e-6 with a timm checkpoint, else 1e-5
        pretrained: str | os.PathLike | None = None,  # a local checkpoint (file or folder) of pretrained_format
        pretrained_format: PretrainedFormat = "timm",  # timm: a timm ViT file; videomae: a HF VideoMAE folder
    ) -> None:
        super().__init__()
        if pos_init not in ("random", "sincos"):
            raise ValueError(f"vit_st: pos_init must be 'random' or 'sincos', got {pos_init!r}")
        if pos_table not in POS_TABLES:
            raise ValueError(f"vit_st: pos_table must be one of {POS_TABLES}, got {pos_table!r}")
        self.pos_init, self.pos_table = pos_init, pos_table
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"vit_st: temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"vit_st: img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames "
                f"{num_frames} a multiple of tubelet_size {tubelet_size}"
            )
        if norm_eps is None:  # timm's ViTs use 1e-6; from scratch, PyTorch's LayerNorm default
            norm_eps = 1e-6 if pretrained is not None and pretrained_format == "timm" else 1e-5
        self.img_size, self.num_frames, self.temporal = img_size, num_frames, temporal
        self.token_layout = "any" if temporal == "joint" else "per_frame"  # token-sparse encoding (drop=)
        self.patch_size, self.tubelet_size, self.embed_dim = patch_size, tubelet_size, embed_dim
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.token_size = (tubelet_size, patch_size, patch_size)
        self.num_heads, self.mlp_ratio, self.init_values, self.norm_eps = num_heads, mlp_ratio, init_values, norm_eps
        self.final_norm = final_norm
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        learned = pos_table == "space_time"
        self.pos_embed_space = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], embed_dim)) if learned else None
        # `none` has no time positions: its frames are an unordered set (TimeSformer's space-only model).
        self.pos_embed_time = (nn.Parameter(torch.zeros(1, self.grid[0], embed_dim))
                               if learned and temporal != "none" else None)
        self.register_buffer("pos_embed_flat", None if learned else sincos_flat(self.num_grid_tokens, embed_dim)[None],
                             persistent=False)  # (1, N, D): fixed, rebuilt from the sizes, never saved
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.num_prefix_tokens = self.grid[0] if class_token else 0
        # Joint attention drops masked tokens, so only the other modes need a mask token.
        self.drops_masked_tokens = temporal == "joint"  # joint attention runs on the visible tokens only
        self.mask_token = None if self.drops_masked_tokens else nn.Parameter(torch.zeros(embed_dim))
        norm_layer = partial(LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList([self._block(temporal, dpr, embed_dim, num_heads, mlp_ratio, roll_ratio,
                                                 init_values, norm_layer, int(class_token))
                                     for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self._init_weights()
        self._pretrained_names: set[str] = set()
        if pretrained is not None:
            self._pretrained_names = load_vit_st_weights(self, pretrained, pretrained_format)
            self.is_pretrained = True

    @staticmethod
    def _block(temporal: str, drop_path: float, dim: int, heads: int, mlp_ratio: float, roll_ratio: float,
               init_values: float | None, norm_layer: type[nn.Module], prefix: int) -> Block:
        kwargs = dict(mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path, init_values=init_values,
                      norm_layer=norm_layer)
        if temporal == "rolling":
            kwargs.update(roll_ratio=roll_ratio, roll_skip=prefix)
        return BLOCKS[temporal](dim, heads, **kwargs)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _init_weights(self) -> None:
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed_space is None:  # flat_sincos: a fixed buffer, nothing to initialise
            pass
        elif self.pos_init == "sincos":
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
        names = ("pos_embed_space", "pos_embed_time", "mask_token", "cls_token")
        return {n for n in names if getattr(self, n) is not None}

    def pretrained_parameter_names(self) -> set[str]:
        """Names of the parameters that hold a tensor of the ``pretrained`` checkpoint (empty without one).
        What the loader initialised instead (time positions, divided's temporal attention) is not listed."""
        return set(self._pretrained_names)

    def pos_embed(self) -> Tensor:
        """Grid position embeddings (1, T'*H'*W', D): a time and a space table, summed (``none``: the space table
        in every frame), or the fixed flat sin-cos table."""
        if self.pos_embed_flat is not None:
            return self.pos_embed_flat
        pos = self.pos_embed_space[:, None, :, :].expand(-1, self.grid[0], -1, -1)  # (1, T', S, D)
        if self.pos_embed_time is not None:
            pos = pos + self.pos_embed_time[:, :, None, :]
        return pos.flatten(1, 2)  # (1, N, D)

    def token_keep(self, frame_mask: Tensor | None, mask: Tensor | None = None,
                   drop: Tensor | None = None) -> Tensor | None:
        """(B, P + N, P + N_visible or P + N_kept) True for tokens of real frames, in the order
        ``forward_features`` returns them (a frame's CLS token is real when its time step holds a real frame)."""
        keep = super().token_keep(frame_mask, drop=drop)  # (B, P + N or P + N_kept)
        if keep is None:
            return None
        P = self.num_prefix_tokens
        if P:
            keep[:, :P] = self.frame_keep(frame_mask)
        if mask is None or not self.drops_masked_tokens or drop is not None:
            return keep
        mask = check_mask(mask, keep.shape[0], self.num_grid_tokens, "vit_st")
        return torch.cat([keep[:, :P], keep_visible(keep[:, P:, None], mask)[..., 0]], dim=1)  # (B, P + N_visible)

    def embed(self, video: Tensor, mask: Tensor | None, frame_mask: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> embedded tokens with positions (B, P + N, D), CLS tokens first; masked
        grid tokens replaced, or dropped for ``joint`` (then (B, P + N_visible, D)). Padded frames
        (``frame_mask`` False) are blanked."""
        self.check_video(video)
        x = self.patch_embed(blank_padded_frames(video, frame_mask)).flatten(1, 3)  # (B, N, D)
        if mask is None:
            x = x + self.pos_embed()
        else:
            mask = check_mask(mask, x.shape[0], x.shape[1], "vit_st")
            if self.drops_masked_tokens:
                x = keep_visible(x + self.pos_embed(), mask)  # (B, N_visible, D)
            else:
                x = replace_masked(x, mask, self.mask_token) + self.pos_embed()
        if self.cls_token is None:
            return x
        cls = self.cls_token.expand(x.shape[0], self.grid[0], -1)  # (B, T', D)
        if self.pos_embed_time is not None:
            cls = cls + self.pos_embed_time
        return torch.cat([cls, x], dim=1)  # (B, T' + N, D)

    def embed_kept(self, video: Tensor, cells: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """Token-sparse embedding for the per-frame modes: video (B, T, C, H, W), cells (B, T', K) kept cells
        of each time step -> (B, P + T'*K, D), CLS tokens first, each kept token with its own cell's position."""
        self.check_video(video)
        x = self.patch_embed(blank_padded_frames(video, frame_mask)).flatten(2, 3)  # (B, T', S, D)
        x = (x + self.pos_embed().view(1, *x.shape[1:])).gather(2, cells[..., None].expand(-1, -1, -1, x.shape[-1]))
        x = x.flatten(1, 2)  # (B, T'*K, D)
        if self.cls_token is None:
            return x
        cls = self.cls_token.expand(x.shape[0], self.grid[0], -1)  # (B, T', D)
        if self.pos_embed_time is not None:
            cls = cls + self.pos_embed_time
        return torch.cat([cls, x], dim=1)  # (B, T' + T'*K, D)

    def frame_major(self, x: Tensor) -> Tensor:
        """(B, T' + T'*S, ...) CLS tokens first -> (B, T'*(1 + S), ...) each frame's CLS token before its grid."""
        T = self.grid[0]
        grid = x[:, T:].reshape(x.shape[0], T, -1, *x.shape[2:])  # (B, T', S, ...)
        return torch.cat([x[:, :T, None], grid], dim=2).flatten(1, 2)

    def prefix_first(self, x: Tensor) -> Tensor:
        """The inverse of ``frame_major``: (B, T'*(1 + S), D) -> (B, T' + T'*S, D)."""
        x = x.view(x.shape[0], self.grid[0], -1, x.shape[-1])  # (B, T', 1 + S, D)
        return torch.cat([x[:, :, 0], x[:, :, 1:].flatten(1, 2)], dim=1)

    def forward_features(self, video: Tensor, mask: Tensor | None = None,
                         frame_mask: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W), mask (B, N) True = masked, frame_mask (B, T) True = real frame, drop (B, N)
        True = dropped (token-sparse encoding, see the module doc) -> tokens (B, P + N, P + N_visible or
        P + N_kept, D). The per-frame modes run on frame-major tokens (each CLS token before its frame's grid,
        which is how their blocks split frames); ``joint`` runs on the output order."""
        if drop is not None:
            drop = self.check_drop(drop, mask, video.shape[0])
            if self.temporal == "joint":  # joint attention over the kept tokens: the MVM path
                return self.forward_features(video, drop, frame_mask)
            return self.forward_kept(video, drop, frame_mask)
        keep = self.token_keep(frame_mask, mask)  # (B, P + N or P + N_visible) | None
        x = self.embed(video, mask, frame_mask)
        per_frame = self.num_prefix_tokens > 0 and self.temporal != "joint"
        if per_frame:
            x, keep = self.frame_major(x), None if keep is None else self.frame_major(keep)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, self.grid, keep)
        x = self.norm(x)
        return self.prefix_first(x) if per_frame else x

    def forward_kept(self, video: Tensor, drop: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """Token-sparse per-frame modes: video (B, T, C, H, W), drop (B, N) with K kept tokens per time step ->
        tokens (B, P + T'*K, D), CLS tokens first."""
        cells = kept_cells(drop, self.grid)  # (B, T', K)
        keep = self.token_keep(frame_mask, drop=drop)  # (B, P + T'*K) | None
        x = self.embed_kept(video, cells, frame_mask)  # (B, P + T'*K, D)
        P = self.num_prefix_tokens
        if P:
            x, keep = self.frame_major(x), None if keep is None else self.frame_major(keep)
        slots = FrameSlots.from_cells(cells, self.grid[1] * self.grid[2], int(P > 0))
        x = run_blocks(self.blocks, x, self.grad_checkpointing, self.grid, keep, slots)
        x = self.norm(x)
        return self.prefix_first(x) if P else x

    def pool(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        """tokens (B, P + N, D), keep (B, P + N) | None -> (B, D): the mean of the real frames' CLS tokens
        with ``class_token``, else of the real grid tokens."""
        P = self.num_prefix_tokens
        if not P:
            return super().pool(tokens, keep)
        return masked_mean(tokens[:, :P], None if keep is None else keep[:, :P])


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_tiny(**kw) -> VideoViT:
    """Debug size: 128 wide, 2 deep, 2 heads, 32 px, 4 frames; the from-scratch recipe that learns time: one
    frame per token (``tubelet_size=1``: attention sees the order of frames, a tubelet would average two) and
    sin-cos-initialised position tables (positions and time usable from the first step)."""
    return build(VideoViT, dict(img_size=32, num_frames=4, patch_size=8, embed_dim=128, depth=2, num_heads=2,
                                tubelet_size=1, pos_init="sincos"), kw)


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_base(**kw) -> VideoViT:
    """ViT-B/16 on 2x16x16 tubelets (VideoMAE-B): 768 wide, 12 deep, 12 heads."""
    return build(VideoViT, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), kw)


@VIDEO_ENCODERS.register(VideoViT)
def vit_st_large(**kw) -> VideoViT:
    """ViT-L/16 on 2x16x16 tubelets (VideoMAE-L): 1024 wide, 24 deep, 16 heads."""
    return build(VideoViT, dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), kw)
