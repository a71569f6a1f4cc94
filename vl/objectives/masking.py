"""Video token masking for masked visual modelling (DESIGN §5).

Every strategy is a pure function over the encoder's token grid ``(T', H', W')`` that returns a mask
``(B, N)`` bool, ``N = T'*H'*W'`` in (t, h, w) row-major order, True = masked, with the same number of
masked tokens in every row (what sparse encoding of the visible tokens needs):

- ``random``: uniformly random tokens.
- ``blockwise``: BEiT's blockwise masking extended to space-time: random 3D blocks (random duration,
  area and aspect ratio) until the count is reached (VIOLET's BM).
- ``tube``: VideoMAE's tube masking: one random set of spatial positions, masked in every frame.
- ``attended``: the tokens the text attends to most (VIOLET's AM); scores = text-to-video attention.
- ``text_guided``: the tokens whose embedding best matches the caption's; scores = cosine similarity.
- ``motion``: the tokens where frames change most; scores = mean absolute frame difference.

Score-driven strategies take ``scores (B, N)`` and mask the ``k`` highest (ties broken at random).
``k = num_masked(N, ratio)`` (round half up); ``tube`` masks ``T' * num_masked(H'*W', ratio)``, which
lies within ``1 / (H'*W')`` of the ratio. ``VideoMasker`` draws one strategy per sample (as VIOLET
mixes BM and AM) from ``MaskSpec`` entries, each with its own ratio.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Grid = tuple[int, int, int]
Strategy = Literal["random", "blockwise", "tube", "attended", "text_guided", "motion"]
STRATEGIES: tuple[str, ...] = ("random", "blockwise", "tube", "attended", "text_guided", "motion")
SCORED: tuple[str, ...] = ("attended", "text_guided", "motion")  # strategies that need per-token scores

# Blockwise block shape (BEiT's defaults, as fractions of one frame of the grid).
BLOCK_MIN_AREA = 0.08  # smallest block area: 16 of 196 patches in BEiT
BLOCK_MAX_AREA = 0.4  # largest block area per frame
BLOCK_ASPECT = 0.3  # aspect ratio drawn log-uniformly in [0.3, 1/0.3]
BLOCK_MAX_MISSES = 10  # stop drawing blocks after this many in a row add no new cell


@dataclass
class MaskSpec:
    """One masking strategy of a mix: its name, the share of tokens it masks and how often it is drawn."""

    strategy: Strategy = "blockwise"
    ratio: float = 0.15  # share of grid tokens masked (VIOLET: 0.15; VideoMAE tube: 0.9)
    weight: float = 1.0  # relative probability of drawing this strategy for a sample


def num_masked(num_tokens: int, ratio: float) -> int:
    """round(ratio * num_tokens), halves rounded up."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"masking ratio must be in [0, 1], got {ratio}")
    return int(math.floor(ratio * num_tokens + 0.5))


def expected_count(strategy: str, grid: Grid, ratio: float) -> int:
    """How many of the grid's tokens ``strategy`` masks per row at ``ratio``."""
    T, H, W = grid
    if strategy == "tube":
        return T * num_masked(H * W, ratio)
    return num_masked(T * H * W, ratio)


def _rand(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device | str | None) -> Tensor:
    """Uniform [0, 1) noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device).to(device)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """scores (B, N) -> mask (B, N) bool with the ``k`` highest scores of each row True."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask


def _tie_break(scores: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """scores (B, N) float with random noise far below their smallest gap, so ties are broken at random
    without reordering distinct scores."""
    scores = scores.detach().float()
    noise = _rand(scores.shape, generator, scores.device)  # (B, N) in [0, 1)
    sorted_scores = scores.sort(dim=1).values
    gaps = sorted_scores.diff(dim=1)
    positive = gaps[gaps > 0]
    eps = float(positive.min()) * 0.5 if positive.numel() else 1.0
    return scores + noise * eps


def random_mask(batch: int, grid: Grid, ratio: float, generator: Optional[torch.Generator] = None,
                device: torch.device | str | None = None) -> Tensor:
    """Uniformly random tokens: (B, N) bool with ``num_masked(N, ratio)`` True per row."""
    N = grid[0] * grid[1] * grid[2]
    return top_k_mask(_rand((batch, N), generator, device), num_masked(N, ratio))


def tube_mask(batch: int, grid: Grid, ratio: float, generator: Optional[torch.Generator] = None,
              device: torch.device | str | None = None) -> Tensor:
    """VideoMAE tubes: the same ``num_masked(H'*W', ratio)`` spatial positions masked in every frame (B, N)."""
    T, H, W = grid
    spatial = top_k_mask(_rand((batch, H * W), generator, device), num_masked(H * W, ratio))  # (B, H'*W')
    return spatial[:, None, :].expand(batch, T, H * W).reshape(batch, T * H * W)  # (B, N)


def _draw_block(grid: Grid, remaining: int, rng: random.Random) -> tuple[slice, slice, slice]:
    """One random 3D block: duration in [1, T'], area and aspect as BEiT, volume near ``remaining``."""
    T, H, W = grid
    u = [rng.random() for _ in range(6)]
    t = 1 + int(u[0] * T)
    lo = max(1.0, BLOCK_MIN_AREA * H * W)
    hi = max(lo, min(BLOCK_MAX_AREA * H * W, remaining / t))
    area = lo + u[1] * (hi - lo)
    aspect = math.exp(math.log(BLOCK_ASPECT) + u[2] * 2 * math.log(1 / BLOCK_ASPECT))
    h = min(H, max(1, round(math.sqrt(area * aspect))))
    w = min(W, max(1, round(math.sqrt(area / aspect))))
    t0, h0, w0 = int(u[3] * (T - t + 1)), int(u[4] * (H - h + 1)), int(u[5] * (W - w + 1))
    return slice(t0, t0 + t), slice(h0, h0 + h), slice(w0, w0 + w)


def _block_priority(grid: Grid, k: int, rng: random.Random) -> np.ndarray:
    """(T', H', W') float: cells covered by earlier blocks score higher; uncovered cells score 0.

    Blocks are added until ``k`` cells are covered, or (as BEiT) until ``BLOCK_MAX_MISSES`` blocks in a
    row add no new cell; the mask's remaining cells are then drawn at random."""
    T, H, W = grid
    priority = np.zeros((T, H, W), dtype=np.float32)  # numpy: small in-place updates are cheap
    covered, step, misses = 0, 0, 0
    while covered < k and misses < BLOCK_MAX_MISSES:
        block = priority[_draw_block(grid, k - covered, rng)]  # a view into ``priority``
        new = block == 0
        block[new] = float(T * H * W * 10 - step)  # > 0, decreasing with every block
        added = int(new.sum())
        covered, step, misses = covered + added, step + 1, 0 if added else misses + 1
    return priority


def blockwise_mask(batch: int, grid: Grid, ratio: float, generator: Optional[torch.Generator] = None,
                   device: torch.device | str | None = None) -> Tensor:
    """Random space-time blocks (BEiT's blockwise masking in 3D): (B, N) bool, ``num_masked(N, ratio)``
    True per row. Where the last block overshoots, random cells of that block alone stay visible."""
    T, H, W = grid
    k = num_masked(T * H * W, ratio)
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))  # block shapes: Python floats are fast
    priority = torch.from_numpy(np.stack([_block_priority(grid, k, rng).ravel() for _ in range(batch)]))  # (B, N)
    noise = torch.rand(priority.shape, generator=generator)  # < 1: reorders cells of one block only
    return top_k_mask(priority + noise, k).to(device)


def scored_mask(scores: Tensor, ratio: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """scores (B, N) -> (B, N) bool masking the ``num_masked(N, ratio)`` highest-scoring tokens per row."""
    return top_k_mask(_tie_break(scores, generator), num_masked(scores.shape[1], ratio))


def attention_scores(attentions: Tensor, text_mask: Tensor) -> Tensor:
    """Text-to-video attention (B, L, N) and text mask (B, L) -> (B, N): attention each video token
    receives, averaged over the real text tokens (VIOLET's attended masking)."""
    weights = text_mask.to(attentions.dtype).unsqueeze(-1)  # (B, L, 1)
    return (attentions * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, N)


def similarity_scores(token_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """Per-token video embeddings (B, N, E) and caption embeddings (B, E) -> cosine similarity (B, N)."""
    return torch.einsum("bne,be->bn", F.normalize(token_embeds, dim=-1), F.normalize(text_embeds, dim=-1))


def motion_scores(video: Tensor, grid: Grid) -> Tensor:
    """video (B, T, C, H, W) -> (B, N): mean absolute change from the previous frame over the pixels
    each token covers (the first frame is compared with the second)."""
    B, T = video.shape[:2]
    diff = (video[:, 1:] - video[:, :-1]).abs().mean(dim=2)  # (B, T-1, H, W)
    diff = torch.cat([diff[:, :1], diff], dim=1) if T > 1 else torch.zeros_like(video[:, :, 0])  # (B, T, H, W)
    return F.adaptive_avg_pool3d(diff.unsqueeze(1), grid).flatten(1)  # (B, N)


class VideoMasker:
    """A per-sample mix of masking strategies.

    ``draw(B) -> (B,)`` picks a strategy index per sample (probabilities from the specs' weights);
    ``__call__(grid, choice, scores) -> (B, N)`` builds each sample's mask with its strategy; ``scores``
    maps each scored strategy drawn (``attended``, ``text_guided``, ``motion``) to (B, N) scores.
    Generators are CPU ``torch.Generator``s (masks are drawn on the CPU or with it, then moved).
    """

    def __init__(self, specs: Sequence[MaskSpec]) -> None:
        if not specs:
            raise ValueError("masking: give at least one strategy")
        for spec in specs:
            if spec.strategy not in STRATEGIES:
                raise ValueError(f"masking: unknown strategy {spec.strategy!r}; valid: {', '.join(STRATEGIES)}")
            num_masked(1, spec.ratio)  # validates the ratio
            if spec.weight <= 0:
                raise ValueError(f"masking: weight of {spec.strategy!r} must be positive, got {spec.weight}")
        self.specs = list(specs)
        self.probs = torch.tensor([s.weight for s in specs], dtype=torch.float64)
        self.probs /= self.probs.sum()

    def counts(self, grid: Grid) -> dict[str, int]:
        """Masked tokens per row of every strategy on ``grid``."""
        return {s.strategy: expected_count(s.strategy, grid, s.ratio) for s in self.specs}

    def draw(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """(B,) long: the index of the spec each sample uses."""
        if len(self.specs) == 1:
            return torch.zeros(batch, dtype=torch.long)
        return torch.multinomial(self.probs, batch, replacement=True, generator=generator)

    def needed(self, choice: Tensor) -> set[str]:
        """The scored strategies that ``choice`` uses (their scores must be passed to ``__call__``)."""
        used = {self.specs[i].strategy for i in choice.unique().tolist()}
        return used & set(SCORED)

    def __call__(self, grid: Grid, choice: Tensor, scores: Mapping[str, Tensor] | None = None,
                 generator: Optional[torch.Generator] = None, device: torch.device | str | None = None) -> Tensor:
        """Masks (B, N) bool, sample b built by ``specs[choice[b]]``."""
        scores = scores or {}
        B, N = choice.shape[0], grid[0] * grid[1] * grid[2]
        mask = torch.zeros(B, N, dtype=torch.bool, device=device)
        for i, spec in enumerate(self.specs):
            rows = (choice == i).nonzero().flatten().tolist()
            if rows:
                mask[rows] = self._one(spec, grid, rows, scores, generator, device)
        return mask

    @staticmethod
    def _one(spec: MaskSpec, grid: Grid, rows: list[int], scores: Mapping[str, Tensor],
             generator: Optional[torch.Generator], device: torch.device | str | None) -> Tensor:
        """Masks (len(rows), N) of one strategy for the given samples."""
        if spec.strategy in SCORED:
            if spec.strategy not in scores:
                raise ValueError(f"masking: strategy {spec.strategy!r} needs scores (B, N)")
            return scored_mask(scores[spec.strategy][rows], spec.ratio, generator).to(device)  # (b, N)
        build = {"random": random_mask, "blockwise": blockwise_mask, "tube": tube_mask}[spec.strategy]
        return build(len(rows), grid, spec.ratio, generator, device)
