"""Retrieval metrics against hand-computed ranks."""

import pytest
import torch

from vl.metrics import best_ranks, gt_ranks, rank_metrics, retrieval_metrics


def test_gt_ranks_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.8], [0.0, 0.0, 0.1]])
    assert gt_ranks(sim, torch.tensor([0, 1, 2])).tolist() == [1, 2, 1]


def test_ties_count_against_the_query():
    sim = torch.zeros(4, 4)  # a constant scorer must not get R@1 = 100
    ranks = gt_ranks(sim, torch.arange(4))
    assert ranks.tolist() == [4, 4, 4, 4]
    assert rank_metrics(ranks)["R@1"] == 0.0


def test_best_ranks_several_positives():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    pos = torch.tensor([[True, False, True, False]])
    assert best_ranks(sim, pos).tolist() == [3]  # best positive 0.5 is behind 0.9 and 0.7
    with pytest.raises(ValueError):
        best_ranks(sim, torch.zeros_like(pos))


def test_retrieval_metrics_multi_caption():
    # 3 videos, 5 captions: captions 0,1 -> video 0; 2 -> video 1; 3,4 -> video 2.
    index = torch.tensor([0, 0, 1, 2, 2])
    sim = torch.full((5, 3), 0.0)
    sim[0, 0] = 1.0  # right at rank 1
    sim[1, 1] = 1.0  # wrong video first; right video ties with the third -> rank 3
    sim[2, 1] = 1.0
    sim[3, 0], sim[3, 2] = 0.9, 0.5  # right at rank 2
    sim[4, 2] = 1.0
    m = retrieval_metrics(sim, index, ks=(1, 5))
    assert m["t2v_R@1"] == pytest.approx(60.0)  # captions 0, 2, 4
    assert m["t2v_MdR"] == 1.0
    assert m["t2v_MnR"] == pytest.approx((1 + 3 + 1 + 2 + 1) / 5)
    # v2t: videos 0 and 2 have a caption at rank 1; video 1's caption ties with caption 1 -> rank 2.
    assert m["v2t_R@1"] == pytest.approx(200 / 3)
    assert m["v2t_MnR"] == pytest.approx(4 / 3)
    assert m["t2v_chance_R@1"] == pytest.approx(100 / 3)
