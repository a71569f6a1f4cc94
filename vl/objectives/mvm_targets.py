"""What masked visual modelling predicts for each token of the encoder's grid (DESIGN §5).

A target maps the clip to one target per grid token, ``forward(video (B, T, C, H, W)) -> (B, N, ...)``,
computed without gradients, and turns predictions at the masked tokens into a loss,
``loss(pred (M, out_dim), target (M, ...)) -> {"mvm_loss", metrics}``. Each token covers
``token_size = (tt, ph, pw)`` of the clip (a ``vit_st`` tubelet x patch; a ``swin3d`` output cell, e.g.
2 x 32 x 32 for the base model):

- ``pixel`` (VideoMAE): the token's pixels, normalised per channel over the token (mean 0, std 1);
  tokens wider than ``max_patch`` pixels are first average-pooled to ``max_patch`` (swin3d's 32 px
  cells give 16 x 16). MSE.
- ``hog`` (MaskFeat): per frame and channel, histograms of unsigned gradient orientation (``bins`` bins,
  linear vote, magnitude-weighted) over 2 x 2 cells of the token, averaged over the token's ``tt``
  frames and L2-normalised per channel. MSE.
- ``vq`` (VIOLET/BEiT): the code ids of a frozen visual tokenizer run on every frame resized so that its
  code grid equals the token grid (one code per token and frame: ``tt`` classifications per token).
  Cross-entropy; ``mvm_acc``.
- ``feature`` (MVD/MILAN-style distillation): a frozen teacher video encoder's tokens, resampled
  (trilinear) to the student's grid and layer-normalised. MSE; ``mvm_cos``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vl.models.dalle import NORM_STATS

Grid = tuple[int, int, int]


def renormalize(video: Tensor, source: str, target: str) -> Tensor:
    """Re-normalise a clip (..., 3, H, W) from ``source`` statistics to ``target`` ones."""
    if source == target:
        return video
    (m0, s0), (m1, s1) = NORM_STATS[source], NORM_STATS[target]
    shape = (1,) * (video.dim() - 3) + (3, 1, 1)
    as_t = lambda v: torch.tensor(v, dtype=video.dtype, device=video.device).view(shape)  # noqa: E731
    return (video * as_t(s0) + as_t(m0) - as_t(m1)) / as_t(s1)


def to_tokens(x: Tensor, grid: Grid) -> Tensor:
    """x (B, C, T'*a, H'*b, W'*c) -> (B, N, a*b*c, C): the values inside each grid cell, cells in (t, h, w) order."""
    B, C, T, H, W = x.shape
    t, h, w = grid
    x = x.view(B, C, t, T // t, h, H // h, w, W // w)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', a, b, c, C)
    return x.reshape(B, t * h * w, (T // t) * (H // h) * (W // w), C)


class Target(nn.Module):
    """Base: frozen parts stay in eval mode; ``out_dim`` is the width of the prediction head."""

    out_dim: int

    def train(self, mode: bool = True) -> "Target":
        super().train(False)  # nothing here trains; a frozen tokenizer or teacher stays in eval mode
        return self

    def compute(self, video: Tensor, keys: Optional[Sequence[str]] = None) -> Tensor:
        """Targets of a batch (B, N, ...); ``keys`` (the samples' keys) let a target use precomputed values."""
        return self(video)

    def loss(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Predictions (M, out_dim) and targets (M, out_dim) -> MSE (regression targets)."""
        return {"mvm_loss": F.mse_loss(pred.float(), target.float())}


class PixelTarget(Target):
    """Per-token normalised pixels (VideoMAE): (B, N, tt * p * p * C) with p = min(patch, max_patch)."""

    def __init__(self, grid: Grid, token_size: Grid, channels: int = 3, max_patch: int = 16) -> None:
        super().__init__()
        self.grid = grid
        tt, ph, pw = token_size
        self.cell = (tt, min(ph, max_patch), min(pw, max_patch))
        self.out_dim = channels * math.prod(self.cell)

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        size = tuple(g * c for g, c in zip(self.grid, self.cell))
        x = F.adaptive_avg_pool3d(video.transpose(1, 2).float(), size)  # (B, C, T'*tt, H'*p, W'*p)
        x = to_tokens(x, self.grid)  # (B, N, tt*p*p, C)
        x = (x - x.mean(dim=2, keepdim=True)) / (x.var(dim=2, keepdim=True, unbiased=True) + 1e-6).sqrt()
        return x.flatten(2)  # (B, N, tt*p*p*C)


class HOGTarget(Target):
    """Histograms of oriented gradients per token (MaskFeat): (B, N, cells^2 * bins * C)."""

    def __init__(self, grid: Grid, token_size: Grid, channels: int = 3, bins: int = 9, cells: int = 2) -> None:
        super().__init__()
        tt, ph, pw = token_size
        if ph % cells or pw % cells:
            raise ValueError(f"mvm hog: token size {ph}x{pw} px is not divisible into {cells}x{cells} cells")
        self.grid, self.bins, self.cells, self.channels = grid, bins, cells, channels
        self.cell_px = (ph // cells, pw // cells)
        self.out_dim = cells * cells * bins * channels
        self.register_buffer("kernel", torch.tensor([-1.0, 0.0, 1.0]), persistent=False)

    def histograms(self, frames: Tensor) -> Tensor:
        """frames (M, 1, H, W) -> per-cell orientation histograms (M, bins, H/cell_h, W/cell_w)."""
        gx = F.conv2d(F.pad(frames, (1, 1, 0, 0), mode="replicate"), self.kernel.view(1, 1, 1, 3))
        gy = F.conv2d(F.pad(frames, (0, 0, 1, 1), mode="replicate"), self.kernel.view(1, 1, 3, 1))
        magnitude = torch.sqrt(gx**2 + gy**2)  # (M, 1, H, W)
        angle = torch.atan2(gy, gx) % math.pi  # unsigned orientation in [0, pi)
        pos = angle / (math.pi / self.bins) - 0.5  # bin centres at (i + 0.5) * pi / bins
        low = pos.floor()
        w_high = pos - low
        low = low.long() % self.bins
        hist = torch.zeros(frames.shape[0], self.bins, *frames.shape[2:], device=frames.device)
        hist.scatter_add_(1, low, magnitude * (1 - w_high))
        hist.scatter_add_(1, (low + 1) % self.bins, magnitude * w_high)  # (M, bins, H, W)
        ch, cw = self.cell_px
        return F.avg_pool2d(hist, (ch, cw)) * (ch * cw)  # (M, bins, H/ch, W/cw)

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        B, T, C, H, W = video.shape
        hist = self.histograms(video.float().reshape(B * T * C, 1, H, W))  # (B*T*C, bins, h, w)
        hist = hist.view(B, T, C * self.bins, *hist.shape[2:]).transpose(1, 2)  # (B, C*bins, T, h, w)
        x = to_tokens(hist, self.grid)  # (B, N, tt*cells*cells, C*bins)
        tt = T // self.grid[0]
        x = x.view(B, x.shape[1], tt, self.cells * self.cells, C, self.bins).mean(dim=2)  # (B, N, cells^2, C, bins)
        x = x.transpose(2, 3).flatten(3)  # (B, N, C, cells^2*bins)
        return F.normalize(x, dim=-1).flatten(2)  # (B, N, C*cells^2*bins)


class VQTarget(Target):
    """Code ids of a frozen visual tokenizer (VIOLET): (B, N, tt) long; head width tt * codebook_size.

    ``tokenizer`` keeps the interface of ``vl.models.vq_tokenizer``: ``encode``, ``codebook_size``,
    ``downsample``, ``norm``. Frames are resized to (H' * f, W' * f) so that codes align with tokens;
    ``input_norm`` is the normalisation of the clips it receives. ``precomputed`` maps sample keys to codes
    (T, H', W') written by ``vl data vq-targets``; ``compute`` uses them when every key of a batch has some."""

    def __init__(self, tokenizer: nn.Module, grid: Grid, token_size: Grid, input_norm: str = "imagenet",
                 precomputed: Optional[dict[str, Tensor]] = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.precomputed = precomputed or {}
        self.grid, self.tt, self.input_norm = grid, token_size[0], input_norm
        self.num_classes = int(tokenizer.codebook_size)
        self.out_dim = self.tt * self.num_classes

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        B, T = video.shape[:2]
        t, h, w = self.grid
        f = self.tokenizer.downsample
        frames = renormalize(video.flatten(0, 1).float(), self.input_norm, self.tokenizer.norm)  # (B*T, C, H, W)
        if frames.shape[-2:] != (h * f, w * f):
            frames = F.interpolate(frames, size=(h * f, w * f), mode="bilinear", antialias=True, align_corners=False)
        ids = self.tokenizer.encode(frames)  # (B*T, H', W')
        return self.to_tokens(ids.view(B, T, h, w))

    def to_tokens(self, codes: Tensor) -> Tensor:
        """codes (B, T, H', W') -> (B, N, tt): each token's code in each of its frames."""
        B, T, h, w = codes.shape
        t = self.grid[0]
        ids = codes.view(B, t, T // t, h, w).permute(0, 1, 3, 4, 2)  # (B, T', H', W', tt)
        return ids.reshape(B, t * h * w, T // t)  # (B, N, tt)

    def compute(self, video: Tensor, keys: Optional[Sequence[str]] = None) -> Tensor:
        expected = (video.shape[1], *self.grid[1:])
        if keys and self.precomputed and all(k in self.precomputed for k in keys):
            codes = torch.stack([self.precomputed[k] for k in keys]).to(video.device)  # (B, T, H', W')
            if tuple(codes.shape[1:]) != expected:
                raise ValueError(f"mvm vq: precomputed codes are {tuple(codes.shape[1:])} per clip, the model needs "
                                 f"{expected} (frames, grid); rerun `vl data vq-targets` with --frames/--grid")
            return self.to_tokens(codes)
        return self(video)

    def loss(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        logits = pred.float().view(-1, self.num_classes)  # (M*tt, V)
        labels = target.reshape(-1)  # (M*tt,)
        acc = (logits.detach().argmax(dim=-1) == labels).float().mean()
        return {"mvm_loss": F.cross_entropy(logits, labels), "mvm_acc": acc}


class FeatureTarget(Target):
    """A frozen teacher video encoder's tokens on the student's grid, layer-normalised: (B, N, D_teacher).

    The clip is re-normalised from ``input_norm`` to ``teacher_norm``, resized to the teacher's frame size
    and (if the frame counts differ) sampled uniformly in time to its frame count."""

    def __init__(self, teacher: nn.Module, grid: Grid, input_norm: str = "imagenet",
                 teacher_norm: Optional[str] = None) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.grid, self.input_norm = grid, input_norm
        self.teacher_norm = teacher_norm or input_norm
        self.out_dim = int(teacher.embed_dim)

    def teacher_input(self, video: Tensor) -> Tensor:
        """video (B, T, C, H, W) -> the teacher's clip (B, T_teacher, C, S, S)."""
        teacher = self.teacher
        video = renormalize(video.float(), self.input_norm, self.teacher_norm)
        if video.shape[1] != teacher.num_frames:
            index = torch.linspace(0, video.shape[1] - 1, teacher.num_frames, device=video.device).round().long()
            video = video[:, index]
        B, T = video.shape[:2]
        if video.shape[-1] != teacher.img_size or video.shape[-2] != teacher.img_size:
            frames = F.interpolate(video.flatten(0, 1), size=(teacher.img_size,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False)
            video = frames.view(B, T, *frames.shape[1:])
        return video

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        teacher = self.teacher
        tokens = teacher.forward_features(self.teacher_input(video))[:, teacher.num_prefix_tokens:]  # (B, Nt, D)
        B, _, D = tokens.shape
        x = tokens.transpose(1, 2).reshape(B, D, *teacher.grid)  # (B, D, Tt', Ht', Wt')
        if tuple(teacher.grid) != tuple(self.grid):
            x = F.interpolate(x, size=self.grid, mode="trilinear", align_corners=False)  # (B, D, T', H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return F.layer_norm(x, (D,))

    def loss(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        out = super().loss(pred, target)
        out["mvm_cos"] = F.cosine_similarity(pred.detach().float(), target.float(), dim=-1).mean()
        return out
