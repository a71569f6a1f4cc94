"""Masking strategies: asked ratio and shape, tubes constant over time, blocks contiguous, scored strategies
masking the highest-scoring tokens, and the per-sample mix."""

from __future__ import annotations

import pytest
import torch

from vl.objectives.masking import (STRATEGIES, MaskSpec, VideoMasker, attention_scores, blockwise_mask,
                                   expected_count, motion_scores, num_masked, random_mask, scored_mask,
                                   similarity_scores, tube_mask)

GRIDS = [(2, 4, 4), (4, 7, 7), (8, 14, 14), (1, 3, 5)]
RATIOS = [0.0, 0.15, 0.5, 0.75, 0.9, 1.0]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(strategy: str, batch: int, grid, ratio: float, seed: int = 0) -> torch.Tensor:
    """A mask of any strategy; scored ones get random scores."""
    if strategy in ("attended", "text_guided", "motion"):
        scores = torch.rand(batch, grid[0] * grid[1] * grid[2], generator=gen(seed + 100))
        return scored_mask(scores, ratio, gen(seed))
    return {"random": random_mask, "blockwise": blockwise_mask, "tube": tube_mask}[strategy](batch, grid, ratio, gen(seed))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("grid", GRIDS)
def test_every_strategy_masks_the_asked_ratio_with_the_same_count_per_row(strategy, grid):
    N = grid[0] * grid[1] * grid[2]
    for ratio in RATIOS:
        mask = build(strategy, 5, grid, ratio)
        assert mask.shape == (5, N) and mask.dtype == torch.bool
        counts = mask.sum(dim=1)
        assert (counts == expected_count(strategy, grid, ratio)).all(), (strategy, grid, ratio, counts)
        tolerance = 1 / (grid[1] * grid[2]) if strategy == "tube" else 1 / N
        assert abs(counts[0].item() / N - ratio) <= tolerance / 2 + 1e-9


def test_num_masked_rounds_half_up_and_rejects_bad_ratios():
    assert num_masked(10, 0.15) == 2 and num_masked(10, 0.25) == 3 and num_masked(196, 0.9) == 176
    with pytest.raises(ValueError, match="ratio"):
        num_masked(10, 1.5)


def test_tube_masks_are_constant_over_time_and_differ_between_samples():
    grid = (8, 7, 7)
    mask = tube_mask(6, grid, 0.9, gen()).view(6, *grid)  # (B, T', H', W')
    assert (mask == mask[:, :1]).all()
    assert not (mask[0] == mask[1]).all()


def test_random_masks_differ_in_time():
    mask = random_mask(1, (8, 7, 7), 0.5, gen()).view(8, 49)
    assert not (mask == mask[:1]).all()


def test_blockwise_masks_are_made_of_blocks():
    """Masked cells cluster: far more masked neighbours than a random mask of the same ratio has."""
    grid = (4, 14, 14)

    def neighbour_agreement(mask: torch.Tensor) -> float:
        m = mask.view(-1, *grid).float()
        same = (m[:, :, 1:, :] == m[:, :, :-1, :]).float().mean() + (m[:, :, :, 1:] == m[:, :, :, :-1]).float().mean()
        return float(same) / 2

    blocks = blockwise_mask(8, grid, 0.4, gen())
    random = random_mask(8, grid, 0.4, gen())
    assert neighbour_agreement(blocks) > neighbour_agreement(random) + 0.2


def test_scored_masks_pick_the_highest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.4],
                           [5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 0.0]])
    mask = scored_mask(scores, 0.5, gen())
    assert mask[0].nonzero().flatten().tolist() == [1, 3, 5, 7]
    assert mask[1].nonzero().flatten().tolist() == [0, 4, 5, 6]


def test_scored_masks_break_ties_at_random():
    scores = torch.zeros(2, 100)
    scores[:, :10] = 1.0  # 10 clear winners, then 90 tied
    masks = [scored_mask(scores, 0.3, gen(s)) for s in range(2)]
    for m in masks:
        assert m[:, :10].all() and m.sum(dim=1).eq(30).all()
    assert not torch.equal(masks[0], masks[1])


def test_attended_scores_follow_text_attention():
    """Attention (B, L, N) averaged over real text tokens; padding rows are ignored."""
    attn = torch.zeros(1, 3, 6)
    attn[0, 0, 4] = attn[0, 1, 2] = 1.0  # the two real text tokens look at tokens 4 and 2
    attn[0, 2, 0] = 10.0  # a padding token attends to 0: ignored
    scores = attention_scores(attn, torch.tensor([[1, 1, 0]]))
    mask = scored_mask(scores, 2 / 6, gen())
    assert mask[0].nonzero().flatten().tolist() == [2, 4]


def test_text_guided_scores_pick_the_tokens_most_like_the_caption():
    text = torch.tensor([[1.0, 0.0, 0.0]])
    tokens = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.1, 0.0], [-1.0, 0.0, 0.0], [0.9, 0.0, 0.5], [0.0, 0.0, 1.0]]])
    mask = scored_mask(similarity_scores(tokens, text), 0.4, gen())
    assert mask[0].nonzero().flatten().tolist() == [1, 3]


def test_motion_masks_where_frames_change():
    """A clip that changes only in its top-left 8x8 corner: motion masking picks those tokens."""
    video = torch.zeros(2, 4, 3, 32, 32)
    video[:, 1::2, :, :8, :8] = 1.0  # flickers in frames 1 and 3
    grid = (2, 4, 4)  # tubelets of 2 frames x 8 px
    scores = motion_scores(video, grid)
    mask = scored_mask(scores, 2 / 32, gen()).view(2, *grid)
    assert mask[:, :, 0, 0].all() and mask.sum() == 4


def test_masker_mixes_strategies_per_sample():
    grid = (2, 4, 4)
    masker = VideoMasker([MaskSpec("tube", 0.5, 1.0), MaskSpec("attended", 0.25, 1.0)])
    choice = masker.draw(64, gen())
    assert set(choice.tolist()) == {0, 1}
    assert masker.needed(choice) == {"attended"}
    scores = torch.arange(32.0).repeat(64, 1)  # later tokens score higher
    mask = masker(grid, choice, {"attended": scores}, gen())
    counts = mask.sum(dim=1)
    assert (counts[choice == 0] == 16).all() and (counts[choice == 1] == 8).all()
    assert mask[choice == 1][:, 24:].all()  # attended: the 8 highest-scoring tokens
    tubes = mask[choice == 0].view(-1, *grid)
    assert (tubes == tubes[:, :1]).all()


def test_masker_rejects_unknown_strategies_and_missing_scores():
    with pytest.raises(ValueError, match="unknown strategy"):
        VideoMasker([MaskSpec("checkerboard", 0.5)])  # type: ignore[arg-type]
    masker = VideoMasker([MaskSpec("motion", 0.5)])
    with pytest.raises(ValueError, match="needs scores"):
        masker((2, 4, 4), masker.draw(2), {})
