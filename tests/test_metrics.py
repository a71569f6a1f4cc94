"""Retrieval metrics against hand-computed ranks."""

import numpy as np
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


# ---------------------------------------------------------------- non-finite scores are an error, never a rank

NAN = float("nan")


def test_nan_scores_are_an_error_not_a_perfect_rank():
    from vl.metrics import NonFiniteError

    sim = torch.full((3, 3), NAN)  # a model with NaN weights: every comparison with NaN is false
    with pytest.raises(NonFiniteError, match="non-finite similarity scores: 3 of 3 rows"):
        gt_ranks(sim, torch.arange(3))
    with pytest.raises(NonFiniteError, match="non-finite"):
        best_ranks(sim, torch.eye(3, dtype=torch.bool))
    one_bad = torch.eye(3)
    one_bad[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="1 of 3 rows"):
        retrieval_metrics(one_bad, torch.arange(3))


def test_pretraining_evaluation_refuses_nan_embeddings():
    from vl.lit.evaluation import RetrievalAccumulator
    from vl.metrics import NonFiniteError

    acc = RetrievalAccumulator()
    video = torch.randn(4, 8)
    video[2] = NAN
    acc.add(video, torch.randn(4, 8), torch.arange(4), [f"k{i}" for i in range(4)])
    with pytest.raises(NonFiniteError, match="non-finite val video embeddings: 1 of 4 rows"):
        acc.compute(topk=5, split="val")


def test_vl_index_refuses_a_nan_model(tmp_path, synth_dir, capsys):
    """`vl index` on a checkpoint with NaN weights fails naming the embeddings instead of 'indexed 12 videos'
    whose every query returns nothing."""
    from vl.cli import main
    from vl.metrics import NonFiniteError
    from vl.models import create_model
    from vl.search.faiss_index import FaissSpec, build_faiss

    model = create_model("vl_tiny")
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state["model.video_proj.weight"] = torch.full_like(state["model.video_proj.weight"], NAN)
    ckpt = tmp_path / "nan.ckpt"
    torch.save({"vl_model_config": model.config, "state_dict": state,
                "vl_preprocess": {"num_frames": 4, "frame_size": 32, "tokenizer": "minilm", "max_text_len": 16}}, ckpt)
    rc = main(["index", "--ckpt", str(ckpt), "--videos", synth_dir["test"], "--out", str(tmp_path / "index"),
               "--quiet", "--batch-size", "4", "--workers", "1", "--threads", "1"])
    out = capsys.readouterr()
    assert rc != 0 and "indexed" not in out.out
    assert "non-finite video embeddings: 4 of 4 rows" in out.err
    assert not (tmp_path / "index" / "config.json").exists()  # no index a Searcher would open
    emb = np.ones((3, 4), np.float32)
    emb[1, 0] = NAN
    with pytest.raises(NonFiniteError, match="1 of 3 rows"):
        build_faiss(emb, FaissSpec("flat"))
