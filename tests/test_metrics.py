"""Retrieval metrics against hand-computed ranks."""

import pytest
import torch

from vl.metrics import best_ranks, gt_ranks, rank_changes, rank_metrics, retrieval_metrics, sign_test_worse


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


def test_sign_test_worse_by_hand():
    assert sign_test_worse(0, 0) == 1.0  # nothing changed: no evidence of harm
    assert sign_test_worse(5, 0) == pytest.approx(1 / 32)
    assert sign_test_worse(0, 5) == 1.0
    assert sign_test_worse(8, 2) == pytest.approx((45 + 10 + 1) / 1024)  # P(X >= 8), X ~ Bin(10, 1/2)
    assert sign_test_worse(131, 96) < 0.05 < sign_test_worse(54, 58)  # large n: exact big-integer sums


def test_rank_changes_counts_moves_and_hits():
    before = torch.tensor([1, 2, 3, 1, 5])
    after = torch.tensor([2, 1, 3, 1, 9])  # query 0 loses its hit, 1 gains one, 2 and 3 stay, 4 drops
    out = rank_changes(before, after, "rerank/t2v_")
    assert {k: out[f"rerank/t2v_{k}"] for k in ("queries_up", "queries_down", "hits_gained", "hits_lost")} == {
        "queries_up": 1.0, "queries_down": 2.0, "hits_gained": 1.0, "hits_lost": 1.0}
    assert out["rerank/t2v_p_worse"] == pytest.approx(sign_test_worse(2, 1)) == pytest.approx(4 / 8)
    assert out["rerank/t2v_hits_p_worse"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="ranks before"):
        rank_changes(before, after[:3])
