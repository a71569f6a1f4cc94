"""Token-sparse video encoding for pretraining (FLIP, UMT; MGMAE / EVEREST for motion-guided choice).

Each clip of a training step is encoded on a subset of its grid tokens, and that one encoding serves
VTC, VTM and MLM. This module chooses the subset; the encoders drop the rest before their first block
(``forward_features(video, drop=drop)``, ``VideoLanguageModel.encode_video(video, drop=drop)``).

A selection is a boolean ``drop`` mask (B, N_grid) in the convention of the encoders' MVM ``mask``:
True = dropped, N_grid = T'*H'*W' in (t, h, w) row-major order. Every clip keeps the same number of tokens
(the encoders stack clips into one batch), and what an encoder can take is its ``token_layout``:

- ``any`` (``vit_st`` joint): ``num_kept(N_grid, keep_ratio)`` tokens anywhere in the clip;
- ``per_frame`` (``vit_st`` divided / rolling / none, ``clip_st``): ``num_kept(H'*W', keep_ratio)`` tokens
  in every time step, since their attention runs per frame;
- None (``swin3d``): refused with a ValueError saying why.

Methods:

- ``random``: uniformly random tokens (per token; per time step in the ``per_frame`` layout);
- ``tube``: one random set of spatial cells, kept in every time step (VideoMAE's tubes, inverted): the
  natural choice for divided and rolling attention, whose time attention then sees every kept cell in
  every frame;
- ``motion``: the tokens whose pixels change most between consecutive frames (mean absolute frame
  difference pooled over each token's cell, ``vl.objectives.masking.motion_scores``), normalised by the
  clip's largest and plus ``jitter`` x uniform noise, so that static clips (no motion at all) still get a
  fresh random subset at every step and near-ties among moving cells vary.

Padded frames (``frame_mask`` False): in the ``any`` layout their tokens are dropped first (kept only when
a short clip has fewer real tokens than the kept count). The ``per_frame`` layouts and ``tube`` keep the
same cells in every time step, padded ones included; either way the encoders' ``token_keep`` marks kept
padded tokens, so pooling and fusion ignore them.

``TokenSparsity`` is the pretraining option: a keep ratio, a method and an optional dense final phase;
``drop_mask(...)`` returns the step's mask, or None when the step is dense (always in evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from vl.objectives.masking import motion_scores

from .layers import blank_padded_frames

Grid = tuple[int, int, int]
Method = Literal["random", "tube", "motion"]
METHODS: tuple[str, ...] = ("random", "tube", "motion")


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """round(keep_ratio * num_tokens) (halves rounded up), at least 1."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"token sparsity: keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, int(math.floor(keep_ratio * num_tokens + 0.5)))


def _uniform(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Uniform [0, 1) noise drawn on the generator's device (CPU generators for CUDA clips), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _keep_top(scores: Tensor, k: int) -> Tensor:
    """scores (..., M) -> drop (..., M) bool: False for the ``k`` highest scores of each last-axis row."""
    drop = torch.ones_like(scores, dtype=torch.bool)
    return drop.scatter_(-1, scores.topk(k, dim=-1).indices, False)


def real_cells(frame_mask: Tensor, time_cells: int) -> Tensor:
    """frame_mask (B, T) True = real -> (B, T') True for time cells holding a real frame."""
    B, T = frame_mask.shape
    if T % time_cells:
        raise ValueError(f"token sparsity: {T} frames do not split into {time_cells} time cells")
    return frame_mask.bool().view(B, time_cells, -1).any(dim=2)


def token_scores(video: Tensor, grid: Grid, method: Method, frame_mask: Tensor | None = None,
                 generator: Optional[torch.Generator] = None, jitter: float = 0.1) -> Tensor:
    """video (B, T, C, H, W) -> (B, T', H'*W') float: higher = kept first (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"token sparsity: method must be one of {METHODS}, got {method!r}")
    B, (T, H, W) = video.shape[0], grid
    noise = _uniform((B, T, H * W), generator, video.device)  # (B, T', S)
    if method == "random":
        return noise
    if method == "tube":
        return noise[:, :1].expand(B, T, H * W)  # the same cells first in every time step
    with torch.no_grad():
        motion = motion_scores(blank_padded_frames(video.detach().float(), frame_mask), grid).view(B, T, H * W)
        top = motion.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]  # (B, 1, 1)
    return motion / top + jitter * noise  # (B, T', S): motion in [0, 1] plus a little randomness


def select_tokens(video: Tensor, grid: Grid, keep_ratio: float, method: Method = "random", *,
                  per_frame: bool = False, frame_mask: Tensor | None = None,
                  generator: Optional[torch.Generator] = None, jitter: float = 0.1) -> Tensor:
    """Choose the tokens to encode: video (B, T, C, H, W) on an encoder grid (T', H', W') -> drop (B, N) bool,
    True = dropped. ``per_frame``: keep ``num_kept(H'*W', keep_ratio)`` tokens in every time step (the
    ``per_frame`` layout; ``tube`` always does), else ``num_kept(N, keep_ratio)`` anywhere, real frames first.
    The same ``generator`` state gives the same selection."""
    B, (T, H, W) = video.shape[0], grid
    scores = token_scores(video, grid, method, frame_mask, generator, jitter)  # (B, T', S)
    if per_frame or method == "tube":
        return _keep_top(scores, num_kept(H * W, keep_ratio)).flatten(1)  # (B, N)
    scores = scores.flatten(1)  # (B, N)
    if frame_mask is not None:  # padded cells below every real one (scores of real cells are >= 0)
        real = real_cells(frame_mask, T)[:, :, None].expand(B, T, H * W).flatten(1)  # (B, N)
        scores = torch.where(real, scores, torch.full_like(scores, -1.0))
    return _keep_top(scores, num_kept(T * H * W, keep_ratio))


@dataclass
class TokenSparsity:
    """The token-sparse pretraining option (``token_sparsity`` in a config; not to be confused with the
    encoders' ``token_keep(frame_mask)``, the real-frame flags of their output tokens).

    Every training step encodes each clip on ``keep_ratio`` of its grid tokens, chosen by ``method``, once,
    and VTC, VTM and MLM all use that encoding (MVM keeps its own masked pass); the last
    ``dense_final_steps`` steps encode the full clip, which closes most of the gap to dense training
    (FLIP's unmasked tuning). ``dense_every: n`` also makes every n-th step dense, so that the model keeps
    seeing whole clips throughout (and a validation in mid-run scores a model that has): a motion-guided
    selection keeps the moving object, whose tokens pool to another embedding than the whole clip's, mostly
    background. Evaluation always encodes the full clip.
    """

    keep_ratio: float = 1.0  # share of grid tokens encoded per clip; 1.0 = dense (every token, no selection)
    method: Method = "random"  # random | tube | motion (see vl.models.sparse)
    dense_final_steps: int | float = 0  # final dense phase: a number of steps (int) or a share of max_steps (float < 1)
    dense_every: int = 0  # every n-th step dense too (steps n-1, 2n-1, ...); 0: only the final phase
    motion_jitter: float = 0.1  # weight of the uniform noise added to the [0, 1] motion scores (method: motion)

    def __post_init__(self) -> None:
        num_kept(1, self.keep_ratio)  # validates the ratio
        if self.method not in METHODS:
            raise ValueError(f"token_sparsity.method must be one of {METHODS}, got {self.method!r}")
        final = self.dense_final_steps
        if isinstance(final, bool) or not isinstance(final, (int, float)) or final < 0 or (
                isinstance(final, float) and final >= 1.0):
            raise ValueError(f"token_sparsity.dense_final_steps must be a number of steps (int >= 0) or a share of "
                             f"the run (float in [0, 1)), got {final!r}")
        if isinstance(self.dense_every, bool) or not isinstance(self.dense_every, int) or self.dense_every < 0:
            raise ValueError(f"token_sparsity.dense_every must be a number of steps (int >= 0), "
                             f"got {self.dense_every!r}")
        if self.motion_jitter < 0:
            raise ValueError(f"token_sparsity.motion_jitter must be >= 0, got {self.motion_jitter}")

    def dense_from(self, max_steps: int | None) -> int | None:
        """The first step (0-based) of the final dense phase, or None without one."""
        final = self.dense_final_steps
        if not final:
            return None
        if max_steps is None or max_steps <= 0:
            raise ValueError("token_sparsity.dense_final_steps needs the run's length in steps (trainer.max_steps, "
                             f"or the trainer's estimated_stepping_batches), got max_steps={max_steps!r}")
        count = math.ceil(final * max_steps) if isinstance(final, float) else int(final)
        return max(max_steps - count, 0)

    def is_sparse(self, step: int, max_steps: int | None) -> bool:
        """Whether training step ``step`` encodes a subset of the tokens."""
        if self.keep_ratio >= 1.0 or (self.dense_every and (step + 1) % self.dense_every == 0):
            return False
        start = self.dense_from(max_steps)
        return start is None or step < start

    def drop_mask(self, video: Tensor, frame_mask: Tensor | None, encoder: nn.Module, step: int,
                  max_steps: int | None, generator: Optional[torch.Generator] = None) -> Tensor | None:
        """The drop mask (B, N_grid) bool, True = dropped, of training step ``step`` for ``encoder``, or None
        when the step is dense: ``keep_ratio`` 1.0, the final dense phase, or the encoder in eval mode.
        ValueError when the encoder cannot drop tokens (Video Swin)."""
        if not encoder.training or not self.is_sparse(step, max_steps):
            return None
        layout = encoder.check_token_layout()
        return select_tokens(video, encoder.grid, self.keep_ratio, self.method, per_frame=layout == "per_frame",
                             frame_mask=frame_mask, generator=generator, jitter=self.motion_jitter)
