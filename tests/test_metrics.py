"""Retrieval metrics against hand-computed ranks."""

import numpy as np
import pytest
import torch

from vl.evaluation.retrieval import best_ranks, gt_ranks, rank_changes, rank_metrics, retrieval_metrics, sign_test_worse


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
    from vl.evaluation.retrieval import NonFiniteError

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
    from vl.evaluation.retrieval import NonFiniteError

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
    from vl.evaluation.retrieval import NonFiniteError
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


# ---------------------------------------------------------------- time order: reversal and shuffle accuracy


def test_order_accuracy_by_hand_ties_count_half():
    from vl.evaluation.retrieval import NonFiniteError, order_accuracy, order_outcomes, order_tie_tolerance

    true = torch.tensor([0.9, 0.2, 0.5, 0.3])
    altered = torch.tensor([0.1, 0.4, 0.5, 0.3 + 1e-7])  # win, loss, exact tie, a rounding-size loss
    assert order_outcomes(true, altered).tolist() == [1.0, 0.0, 0.5, 0.0]
    assert order_accuracy(true, altered) == pytest.approx(100 * 1.5 / 4)
    assert order_outcomes(true, altered, tie_tol=1e-6).tolist() == [1.0, 0.0, 0.5, 0.5]
    assert order_accuracy(true, altered, tie_tol=1e-6) == pytest.approx(50.0)
    assert order_accuracy(true, true) == 50.0  # an order-blind scorer: every caption ties
    assert order_accuracy(torch.ones(3), torch.zeros(3)) == 100.0
    assert order_accuracy(torch.zeros(3), torch.ones(3)) == 0.0
    assert order_tie_tolerance(torch.float32) == 1e-6
    assert order_tie_tolerance(torch.float32, torch.bfloat16) == 2.0 ** -7
    with pytest.raises(NonFiniteError, match="altered-order scores"):
        order_accuracy(true, torch.tensor([0.1, NAN, 0.5, 0.3]))
    with pytest.raises(ValueError, match="no captions"):
        order_accuracy(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="altered-order scores"):
        order_outcomes(true, altered[:2])


def test_padded_clip_reverses_and_shuffles_only_its_real_frames():
    from vl.evaluation.frame_order import reorder_frames, reversed_order, shuffled_order

    video = torch.arange(8.0).view(1, 8, 1, 1, 1).repeat(2, 1, 1, 1, 1)  # (2, 8, 1, 1, 1): pixel = frame number
    mask = torch.tensor([[True] * 3 + [False] * 5, [True] * 8])  # 3 real frames padded to 8; a full clip
    assert reorder_frames(video, mask, reversed_order).flatten(1).tolist() == [
        [2, 1, 0, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0]]  # padding stays at the end
    assert reorder_frames(video, None, reversed_order).flatten(1).tolist()[0] == [7, 6, 5, 4, 3, 2, 1, 0]
    shuffled = reorder_frames(video, mask, shuffled_order).flatten(1)
    assert shuffled[0, 3:].tolist() == [3, 4, 5, 6, 7] and sorted(shuffled[0, :3].tolist()) == [0, 1, 2]
    assert video.flatten(1)[0].tolist() == list(range(8))  # the input is left as it was
    for n in range(3, 17):  # fixed, and neither the identity nor the reversal
        perm = shuffled_order(n)
        assert sorted(perm.tolist()) == list(range(n))
        assert not torch.equal(perm, torch.arange(n)) and not torch.equal(perm, reversed_order(n))
        shuffled_order.cache_clear()
        assert torch.equal(shuffled_order(n), perm)


def test_caption_temporal_flags_come_from_the_json_only():
    from vl.evaluation.frame_order import caption_temporal_flags

    meta = [{"temporal": True}, {"captions": ["a dog runs", "a red ball"], "temporal": [True, False]},
            {"captions": ["first a square, then a circle"]}]  # says nothing: unknown, whatever the words
    captions = ["x", "y", "a red ball", "a dog runs", "first a square, then a circle"]
    index = torch.tensor([0, 0, 1, 1, 2])
    assert caption_temporal_flags(meta, captions, index).tolist() == [1, 1, 0, 1, -1]
    assert caption_temporal_flags(meta, ["p", "a dog runs a red ball", "q"], torch.arange(3),
                                  joined=True).tolist() == [1, 1, -1]
    assert caption_temporal_flags([], captions, index).tolist() == [-1] * 5  # a batch without json
    with pytest.raises(ValueError, match="one entry per caption"):
        caption_temporal_flags([{"key": "k0", "captions": ["a", "b"], "temporal": [True]}], ["a"], torch.tensor([0]))


ORDER_BLIND = {"num_frames": 8, "img_size": 32, "patch_size": 16, "temporal": "none", "tubelet_size": 1}


def order_batch():
    """3 clips of 8 frames (8, 3 and 1 real), 2 captions each, with json temporal flags on clips 0 and 1."""
    from datapipes.batch import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (6, 10), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    frame_mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5, [True] + [False] * 7])
    return Batch(video=torch.randn(3, 8, 3, 32, 32, generator=g), text_ids=ids, text_mask=torch.ones_like(ids),
                 keys=["k0", "k1", "k2"], text_video_index=torch.tensor([0, 0, 1, 1, 2, 2]), frame_mask=frame_mask,
                 texts=["a", "b", "c", "d", "e", "f"],
                 meta=[{"temporal": True}, {"captions": ["c", "d"], "temporal": [True, False]}, {}])


def test_pretraining_evaluation_of_an_order_blind_model_is_exactly_chance():
    """An encoder that pools a re-ordered clip to the same embedding (``temporal: none`` with 1-frame
    tubelets) scores exactly 50% on reversal and shuffle, padded clips included (a reversal that moved the
    padding would change the embedding); a model that sees order gets no tie; one-frame clips are left out."""
    from vl.lit.pretrain import PretrainModule

    torch.manual_seed(0)
    blind = PretrainModule(video=ORDER_BLIND).eval()
    with torch.no_grad():
        blind._eval_step(order_batch(), blind.test_retrieval)
    metrics, _, _, _ = blind.test_retrieval.compute()
    assert metrics["reversal_acc"] == 50.0 and metrics["shuffle_acc"] == 50.0
    assert metrics["reversal_captions"] == 4 == metrics["shuffle_captions"]  # clip 2 has a single frame
    assert metrics["reversal_acc_temporal"] == 50.0 and metrics["reversal_captions_temporal"] == 3
    assert metrics["shuffle_acc_nontemporal"] == 50.0 and metrics["shuffle_captions_nontemporal"] == 1

    seeing = PretrainModule(video={**ORDER_BLIND, "temporal": "joint"}).eval()
    acc = seeing.test_retrieval
    with torch.no_grad():
        seeing._eval_step(order_batch(), acc)
    video, text, index, _ = acc.gathered()
    order = acc.gathered_order()
    true = (text * video[index]).sum(-1)  # (Nt,)
    for name in ("reversal", "shuffle"):
        moved = (true - (text * order["altered"][name][index]).sum(-1)).abs()[:4]  # the clips with 8 and 3 frames
        assert bool((moved > 10 * order["tie_tol"]).all()), name  # no tie: it sees the order

    off = PretrainModule(video=ORDER_BLIND, reversal_eval=False).eval()
    assert "reversal_eval" not in off.hparams  # an evaluation option: `vl test` takes it from the command line
    with torch.no_grad():
        off._eval_step(order_batch(), off.test_retrieval)
    assert not any(k.startswith(("reversal", "shuffle")) for k in off.test_retrieval.compute()[0])


def test_pretraining_test_writes_and_prints_reversal_accuracy(tmp_path, synth_dir, monkeypatch):
    """`vl test` of a pretraining model: reversal and shuffle accuracy in test_metrics.json and beside R@1 in
    the printed summary; the synthetic shards' json flags no caption as temporal, so no per-group keys."""
    import json
    import warnings

    import lightning.pytorch as pl

    import vl.lit.module as base
    import vl.lit.pretrain as pretrain
    from vl.lit.data import VideoTextDataModule

    printed: list[str] = []
    monkeypatch.setattr(base, "rank_zero_info", lambda msg, *a, **k: printed.append(str(msg)))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.manual_seed(0)
    module = pretrain.PretrainModule(video=ORDER_BLIND)
    data = VideoTextDataModule(root=synth_dir["dir"], num_frames=8, frame_size=32, max_text_len=16,
                               eval_batch_size=8, num_workers=0, persistent_workers=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    trainer.test(module, datamodule=data, verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["reversal_acc"] == 50.0 and metrics["shuffle_acc"] == 50.0
    assert metrics["reversal_captions"] == 48  # 12 test clips, 4 captions each
    assert not any(k.endswith("temporal") for k in metrics)
    summary = next(p for p in printed if "text-to-video retrieval over 12 clips" in p)
    r1 = next(line for line in summary.splitlines() if line.strip().startswith("R@1 "))
    assert "reversal 50.00% (48 captions), shuffle 50.00% (48 captions) (chance 50%)" in r1
