"""Fine-tuning tasks (vl/tasks): heads and shapes, every trainable parameter trained, VTM re-ranking only
reorders the top k, dual-softmax, beam search against greedy, the causal decoder sees no future token,
QA's out-of-vocabulary answers counted wrong through the module, checkpoints (answer vocabulary, init_from)
and the metrics/predictions files of ``vl test``."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import noisy_padded_tokens

from datapipes.batch import Batch
from vl.lit.data import VideoTextDataModule
from vl.evaluation.retrieval import gt_ranks
from vl.models import create_model
from vl.objectives import MATCH_SCORES
from vl.tasks import CaptioningModule, MultipleChoiceModule, QAModule, RetrievalModule
from vl.lit.module import with_heads
from vl.tasks.captioning import beam_search, greedy_decode
from vl.evaluation.qa import AnswerVocab
from vl.tasks.multiple_choice import choice_scores
from vl.tasks import retrieval
from vl.tasks.retrieval import dual_softmax, rerank_candidates, rerank_topk, two_way_metrics

B, T, S, L = 3, 8, 32, 12
VIDEO = {"num_frames": T, "img_size": S, "patch_size": 16}  # 4 x 2 x 2 = 16 video tokens: fast


def batch(seed: int = 0, choices: int = 0) -> Batch:
    """A random batch of B clips with one caption each ([CLS] words [SEP] padding), optionally K choices."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    ids[:, 0] = 101
    for i, n in enumerate((L, L - 3, L - 5)):
        ids[i, n - 1] = 102
        ids[i, n:], mask[i, n:] = 0, 0
    out = Batch(video=torch.randn(B, T, 3, S, S, generator=g), text_ids=ids, text_mask=mask,
                keys=[f"k{i}" for i in range(B)], references=[["a b", "c d"]] * B, texts=["q"] * B)
    if choices:
        out.choice_ids = ids[:, None].repeat(1, choices, 1)  # (B, K, L)
        out.choice_mask = mask[:, None].repeat(1, choices, 1)
        out.choice_ids[0, -1], out.choice_mask[0, -1] = 0, 0  # the first question has one choice fewer
        out.answer_idx = torch.tensor([0, 1, choices - 1])
    return out


def assert_trained_params_get_grads(module: pl.LightningModule, loss: torch.Tensor) -> None:
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


# ---------------------------------------------------------------- retrieval


def test_rerank_only_reorders_the_top_k() -> None:
    g = torch.Generator().manual_seed(0)
    sim, scores, k = torch.randn(20, 30, generator=g), torch.randn(20, 30, generator=g) * 50, 7
    out = rerank_topk(sim, scores, k)
    top = sim.topk(k, dim=1).indices
    new_top = out.topk(k, dim=1).indices
    for row in range(sim.shape[0]):
        assert set(new_top[row].tolist()) == set(top[row].tolist())  # same candidates in the top k
        order = scores[row, top[row]].argsort(descending=True)
        assert new_top[row].tolist() == top[row][order].tolist()  # ordered by the re-ranking scores
    rest = torch.ones_like(sim, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(out[rest], sim[rest])  # every other candidate keeps its score and order
    assert bool((out.gather(1, top).min(dim=1).values > out.masked_fill(~rest, -math.inf).max(dim=1).values).all())


def test_rerank_candidates_cover_both_directions() -> None:
    sim = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    pairs = rerank_candidates(sim, 2)
    for t in range(6):
        assert pairs[t, sim[t].topk(2).indices].all()
    for v in range(4):
        assert pairs[sim[:, v].topk(2).indices, v].all()
    assert int(pairs.sum()) <= 6 * 2 + 4 * 2


def test_dual_softmax_reweights_by_the_other_direction() -> None:
    # Video 0 is a "hub", close to every text; dual-softmax divides its pull among the texts.
    sim = torch.tensor([[0.90, 0.80, 0.1], [0.85, 0.2, 0.80], [0.95, 0.1, 0.2]])  # (Nt=3, Nv=3)
    out = dual_softmax(sim, temperature=0.05)
    prior = torch.softmax(sim / 0.05, dim=0)
    assert torch.allclose(out, sim * prior)
    assert out.shape == sim.shape
    assert sim[0].argmax() == 0 and out[0].argmax() == 1  # text 0 now retrieves its own video 1
    assert out[1].argmax() == 2 and out[2].argmax() == 0


@pytest.mark.parametrize("score", MATCH_SCORES)
def test_rerank_score_adds_what_it_names(score: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rerank_score`` re-orders the top k by VTM log-odds plus the dual encoder's logit (scale x cosine),
    plus the bare cosine, or alone; the figures and the written rankings both follow it."""
    module = RetrievalModule(video=VIDEO, rerank_k=2, rerank_score=score).eval()
    with torch.no_grad():
        module.model.logit_scale.fill_(math.log(30.0))
    b = batch(1)
    b.text_video_index = torch.tensor([0, 1, 2])
    module.eval_step(b, "test")
    data = module.eval_state.gathered()
    sim = data["text"] @ data["video"].T  # (3, 3)
    vtm = torch.tensor([[0.0, 2.0, 0.5], [1.0, -1.0, 0.0], [0.3, 0.2, 0.1]])
    monkeypatch.setattr(retrieval, "vtm_pair_scores", lambda model, vt, tt, tm, pairs, bs: vtm[pairs[:, 0], pairs[:, 1]])
    metrics, rows = module.evaluate(data)
    added = {"vtm+vtc": 30.0 * sim, "vtm+cos": sim, "vtm": torch.zeros_like(sim)}[score]
    t2v, v2t = rerank_topk(sim, vtm + added, 2), rerank_topk(sim.T, (vtm + added).T, 2)
    expected = two_way_metrics("rerank/", t2v, v2t, data["index"])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    # how re-ranking moved each text query against the dual encoder
    before, after = gt_ranks(sim, data["index"]), gt_ranks(t2v, data["index"])
    assert metrics["rerank/t2v_queries_up"] == float((after < before).sum())
    assert metrics["rerank/t2v_queries_down"] == float((after > before).sum())
    assert metrics["rerank/t2v_hits_lost"] == float(((before == 1) & (after > 1)).sum())
    assert 0.0 < metrics["rerank/t2v_p_worse"] <= 1.0 and "rerank/v2t_hits_p_worse" in metrics
    # the VTM head alone on the same pairs, reported beside a combined score (it is the score itself for "vtm")
    alone = two_way_metrics("rerank_vtm/", rerank_topk(sim, vtm, 2), rerank_topk(sim.T, vtm.T, 2), data["index"])
    if score == "vtm":
        assert not any(k.startswith("rerank_vtm/") for k in metrics)
    else:
        assert {k: metrics[k] for k in alone} == pytest.approx(alone)
    tops = [r["top"] for r in rows if r["method"] == "rerank" and r["direction"] == "t2v"]
    assert tops == [[b.keys[i] for i in row] for row in t2v.argsort(dim=1, descending=True).tolist()]
    with pytest.raises(ValueError, match="rerank_score"):
        RetrievalModule(video=VIDEO, rerank_score="itm")


def test_retrieval_module_losses_heads_and_evaluation() -> None:
    module = RetrievalModule(video=VIDEO, rerank_k=2, dual_softmax=True)
    assert module.model.vtm_head is not None and module.model.mlm_head is None
    out = module.compute_losses(batch())
    assert {"vtc_loss", "vtm_loss"} <= set(out)
    assert_trained_params_get_grads(module, out["vtc_loss"] + out["vtm_loss"])
    module.eval()
    b = batch(1)
    b.text_video_index = torch.tensor([0, 1, 2])
    for split in ("val", "test"):
        module.eval_step(b, split)
    data = module.eval_state.gathered()
    assert data["video"].shape[0] == 2 * B and data["video_tokens"].shape[0] == B  # val keeps no tokens (no re-ranking)
    module.eval_state.reset()
    module.eval_step(b, "test")
    metrics, rows = module.evaluate(module.eval_state.gathered())
    plain = RetrievalModule(video=VIDEO, rerank_k=0)
    plain.load_state_dict(module.state_dict(), strict=False)
    plain.eval().eval_step(b, "test")
    plain_metrics, _ = plain.evaluate(plain.eval_state.gathered())
    assert {k: metrics[k] for k in plain_metrics} == plain_metrics  # dual-encoder figures never replaced
    assert {"rerank/t2v_R@1", "rerank/v2t_R@1", "dsl/t2v_R@1", "dsl/v2t_MnR"} <= set(metrics)
    assert {r["method"] for r in rows} == {"dual", "rerank", "dsl"}
    assert {r["direction"] for r in rows} == {"t2v", "v2t"}


def test_paragraph_retrieval_joins_each_videos_captions() -> None:
    module = RetrievalModule(video=VIDEO, paragraph=True, paragraph_max_text_len=16, rerank_k=0,
                             objectives={"vtm": 0.0})
    b = batch()
    b.references = [["a dog runs.", "it jumps."], ["a cat sleeps."], ["rain falls.", "a car", "stops"]]
    ids, mask, index, texts = module.texts(b)
    assert texts == ["a dog runs. it jumps.", "a cat sleeps.", "rain falls. a car stops"]
    assert ids.shape == mask.shape == (B, 16) and index.tolist() == [0, 1, 2]
    assert module.model.vtm_head is None
    assert_trained_params_get_grads(module, module.compute_losses(b)["vtc_loss"])


# ---------------------------------------------------------------- QA and multiple choice


def test_qa_head_shapes_and_oov_answers_ignored_in_training(tmp_path: Path) -> None:
    vocab_file = tmp_path / "vocab.json"
    AnswerVocab(["left", "right", "up", "down", "grow"]).save(vocab_file)
    module = QAModule(video=VIDEO, answer_vocab=str(vocab_file), num_answers=4)
    assert len(module.vocab) == 4 and module.vocab.answers[-1] == "down"
    b = batch()
    b.answer = ["left", "not an answer", "Down"]
    assert module.answer_logits(b).shape == (B, 4)
    assert module.targets(b).tolist() == [0, -1, 3]
    out = module.compute_losses(b)
    assert_trained_params_get_grads(module, out["qa_loss"])
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen == {"model.video_proj.weight", "model.video_proj.bias", "model.text_proj.weight",
                      "model.text_proj.bias", "model.logit_scale"}
    b.answer = ["x", "y", "z"]  # a batch of only unknown answers: zero loss, no NaN
    assert module.compute_losses(b)["qa_loss"].item() == 0.0


def test_multiple_choice_scores_every_real_choice() -> None:
    module = MultipleChoiceModule(video=VIDEO).eval()  # no dropout: the two paths must agree
    b = batch(choices=4)
    video = module.model.encode_video(b.video)["tokens"]
    scores = choice_scores(module.model, video, b.choice_ids, b.choice_mask)
    assert scores.shape == (B, 4)
    assert scores[0, -1] == -math.inf and torch.isfinite(scores[1:]).all() and torch.isfinite(scores[0, :-1]).all()
    # Same score as fusing each (video, choice) alone.
    fused = module.model.fuse(video[1:2], module.model.encode_text(b.choice_ids[1, 2:3], b.choice_mask[1, 2:3])["tokens"],
                              b.choice_mask[1, 2:3])["pooled"]
    logits = module.model.vtm_head(fused)[0]
    assert torch.allclose(scores[1, 2], logits[1] - logits[0], atol=1e-5)
    out = module.train().compute_losses(b)
    assert_trained_params_get_grads(module, out["mc_loss"])


def test_multiple_choice_vtm_plus_vtc_adds_the_dual_encoder_logit() -> None:
    module = MultipleChoiceModule(video=VIDEO, score="vtm+vtc").eval()
    b = batch(choices=4)
    with torch.no_grad():
        video = module.model.encode_video(b.video)
        vtm = choice_scores(module.model, video["tokens"], b.choice_ids, b.choice_mask)
        got = module.scores(b)
        t = module.model.embed_text(module.model.encode_text(b.choice_ids[1, 2:3], b.choice_mask[1, 2:3])["pooled"])
        v = module.model.embed_video(video["pooled"][1:2])
    assert torch.allclose(got[1, 2], vtm[1, 2] + module.model.get_logit_scale() * (v * t).sum(), atol=1e-5)
    assert got[0, -1] == -math.inf  # a missing choice stays impossible
    real = b.choice_mask.bool().any(dim=-1)
    assert torch.isfinite((got - vtm)[real]).all()
    out = module.train().compute_losses(b)
    assert_trained_params_get_grads(module, out["mc_loss"])
    with pytest.raises(ValueError, match="score must be one of"):
        MultipleChoiceModule(video=VIDEO, score="itc")


# ---------------------------------------------------------------- captioning


@pytest.mark.parametrize("fusion", ["single_stream", "cross_attention"])
def test_causal_fusion_sees_no_future_text(fusion: str) -> None:
    model = create_model("vl_tiny", video=VIDEO, fusion={"name": fusion}).eval()
    b = batch()
    video = model.encode_video(b.video)["tokens"]
    text = model.encode_text(b.text_ids, b.text_mask)["tokens"]
    changed = text.clone()
    changed[:, 5:] += torch.randn_like(changed[:, 5:])
    with torch.no_grad():
        causal = [model.fuse(video, t, b.text_mask, causal=True)["text_tokens"] for t in (text, changed)]
        full = [model.fuse(video, t, b.text_mask)["text_tokens"] for t in (text, changed)]
    assert torch.allclose(causal[0][:, :5], causal[1][:, :5], atol=1e-5)  # earlier tokens unchanged
    assert not torch.allclose(causal[0][:, 5:], causal[1][:, 5:])
    assert not torch.allclose(full[0][:, :5], full[1][:, :5])  # the bidirectional fusion does see them


def toy_step(seq: torch.Tensor) -> torch.Tensor:
    """A Markov chain over 6 tokens (0 BOS, 1 EOS) where greedy decoding is not the most likely caption:
    BOS -> 2 (0.6) or 3 (0.4); 2 -> 4 (0.55) or 5 (0.45); 3, 4, 5 -> EOS. Greedy: [2, 4] (p 0.33); best: [3] (0.4)."""
    table = torch.full((6, 6), 1e-6)
    table[0, 2], table[0, 3] = 0.6, 0.4
    table[2, 4], table[2, 5] = 0.55, 0.45
    table[3, 1] = table[4, 1] = table[5, 1] = table[1, 1] = 1.0
    return (table / table.sum(dim=1, keepdim=True)).log()[seq[:, -1]]


def test_beam_search_finds_what_greedy_misses() -> None:
    greedy = greedy_decode(toy_step, 2, bos=0, eos=1, max_len=5)
    assert greedy == [[2, 4], [2, 4]]
    assert beam_search(toy_step, 2, 1, bos=0, eos=1, max_len=5, length_penalty=0.0) == greedy  # K = 1 is greedy
    assert beam_search(toy_step, 2, 2, bos=0, eos=1, max_len=5, length_penalty=0.0) == [[3], [3]]
    assert greedy_decode(toy_step, 1, bos=0, eos=1, max_len=1) == [[2]]  # max_len caps the caption
    assert beam_search(toy_step, 1, 2, bos=0, eos=1, max_len=1, length_penalty=0.0) == [[2]]  # no room for EOS


def test_captioning_decoder_shapes_grads_and_generation() -> None:
    module = CaptioningModule(video=VIDEO, max_len=6, beam_size=2)
    b = batch()
    out = module.compute_losses(b)
    assert {"caption_loss", "caption_token_acc"} <= set(out)
    assert_trained_params_get_grads(module, out["caption_loss"])
    words = module.model.text_encoder.word_embeddings.weight
    trainable_text = [n for n, p in module.model.text_encoder.named_parameters() if p.requires_grad]
    assert len(trainable_text) == 1 and module.model.text_encoder.get_parameter(trainable_text[0]) is words
    assert module.model.mlm_head.decoder.weight is words  # the LM head is tied to the input words
    module.eval()
    video = module.model.encode_video(b.video)["tokens"]
    assert module.decode_logits(video, b.text_ids[:, :4], b.text_mask[:, :4]).shape == (B, 4, len(module.tokenizer))
    for beam in (1, 2):
        ids = module.generate_ids(b.video, beam_size=beam)
        assert len(ids) == B and all(len(i) <= 6 and module.eos not in i and module.bos not in i for i in ids)
        assert all(isinstance(c, str) for c in module.generate(b.video, beam_size=beam))


# ---------------------------------------------------------------- backbone, checkpoints, vl test outputs


def test_with_heads_keeps_every_shared_weight() -> None:
    model = create_model("vl_tiny", video=VIDEO)
    slim = with_heads(model, ("vtm",))
    assert slim.mlm_head is None and slim.config["heads"] == ["vtm"]
    assert torch.equal(slim.vtm_head.weight, model.vtm_head.weight)
    assert torch.equal(slim.fusion.blocks[0].attn.q.weight, model.fusion.blocks[0].attn.q.weight)
    assert with_heads(model, ("mlm", "vtm")) is model


def pretrained_checkpoint(path: Path) -> Path:
    """A checkpoint as `vl fit` of PretrainModule writes it (state_dict under `model.` + model config)."""
    model = create_model("vl_tiny", video=VIDEO)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vl_model_config": model.config}, path)
    return path


def test_init_from_a_pretrained_checkpoint(tmp_path: Path) -> None:
    ckpt = pretrained_checkpoint(tmp_path / "pretrained.ckpt")
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    mc = MultipleChoiceModule(init_from=str(ckpt))
    assert torch.equal(mc.model.vtm_head.weight, saved["model.vtm_head.weight"])  # zero-shot uses the pretrained head
    cap = CaptioningModule(init_from=str(ckpt), max_len=8)
    assert torch.equal(cap.model.fusion.norm.weight, saved["model.fusion.norm.weight"])
    with pytest.raises(ValueError, match="drop the overrides"):
        QAModule(init_from=str(ckpt), video=VIDEO, answer_vocab=None)


def quiet_trainer(root: Path, **kw) -> pl.Trainer:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(root), **kw)


def qa_data(synth_dir: dict) -> VideoTextDataModule:
    return VideoTextDataModule(root=synth_dir["dir"], text_field="qa", num_frames=T, frame_size=S, max_text_len=16,
                               batch_size=8, eval_batch_size=8, num_workers=0, batches_per_epoch=2,
                               shuffle_buffer=8, persistent_workers=False)


def test_qa_test_counts_oov_wrong_and_writes_outputs(tmp_path: Path, synth_dir: dict) -> None:
    vocab_file = tmp_path / "vocab.json"
    AnswerVocab(["right", "left", "up", "down"]).save(vocab_file)  # only the direction answers
    module = QAModule(video=VIDEO, answer_vocab=str(vocab_file))
    trainer = quiet_trainer(tmp_path)
    trainer.test(module, datamodule=qa_data(synth_dir), verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    n = 24  # 12 test clips, two open-ended questions each (one about time, one about colour)
    assert len(rows) == n and metrics["num_questions"] == n  # every test question, OOV ones included
    oov = [r for r in rows if not r["in_vocab"]]
    assert oov and not any(r["correct"] for r in oov)
    assert metrics["oov_rate"] == pytest.approx(100 * len(oov) / n)
    assert metrics["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / n)
    assert {"key", "question", "answer", "prediction", "top"} <= set(rows[0])


def test_qa_vocab_built_at_fit_and_restored_from_the_checkpoint(tmp_path: Path, synth_dir: dict) -> None:
    module = QAModule(video=VIDEO, num_answers=6)
    trainer = quiet_trainer(tmp_path / "fit", max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=qa_data(synth_dir))
    assert module.vocab is not None and len(module.vocab) == 6
    ckpt = tmp_path / "qa.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = QAModule(video=VIDEO)
    assert fresh.vocab is None
    quiet_trainer(tmp_path / "test").test(fresh, datamodule=qa_data(synth_dir), ckpt_path=str(ckpt), verbose=False)
    assert fresh.vocab.answers == module.vocab.answers
    assert torch.equal(fresh.head.net[-1].weight, module.head.net[-1].weight)
    assert (tmp_path / "test" / "test_predictions.jsonl").is_file()


def test_multiple_choice_zero_shot_test_writes_choices(tmp_path: Path, synth_dir: dict) -> None:
    ckpt = pretrained_checkpoint(tmp_path / "pretrained.ckpt")
    module = MultipleChoiceModule(init_from=str(ckpt))  # zero-shot: the pretrained VTM head, no fit
    data = VideoTextDataModule(root=synth_dir["dir"], text_field="mc", num_frames=T, frame_size=S, max_text_len=24,
                               eval_batch_size=8, num_workers=0, persistent_workers=False)
    quiet_trainer(tmp_path).test(module, datamodule=data, verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    n = 24  # 12 test clips, two multiple-choice items each
    assert len(rows) == n and metrics["num_questions"] == n and metrics["chance_accuracy"] == pytest.approx(25.0)
    assert all(len(r["choices"]) == 4 == len(r["probs"]) and abs(sum(r["probs"]) - 1) < 1e-3 for r in rows)
    assert metrics["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / n)


def test_captioning_test_without_java_reports_meteor_unavailable(tmp_path: Path, synth_dir: dict, monkeypatch) -> None:
    import vl.evaluation.captioning as task_metrics

    monkeypatch.setattr(task_metrics, "java_available", lambda: False)
    module = CaptioningModule(video=VIDEO, max_len=5, beam_size=2)
    data = VideoTextDataModule(root=synth_dir["dir"], text_field="caption", num_frames=T, frame_size=S,
                               eval_batch_size=8, num_workers=0, persistent_workers=False)
    with pytest.warns(RuntimeWarning, match="java not found"):
        quiet_trainer(tmp_path).test(module, datamodule=data, verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["METEOR"] is None and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(metrics)
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["references"]) == 4 and isinstance(r["prediction"], str) for r in rows)


# ---------------------------------------------------------------- non-finite models: an error, never a score


def poison(module: pl.LightningModule) -> None:
    """Set every video encoder weight to NaN, as a diverged training run leaves them."""
    with torch.no_grad():
        for p in module.model.video_encoder.parameters():
            p.fill_(float("nan"))


@pytest.mark.parametrize("task", ["retrieval", "retrieval_rerank", "qa", "mc", "caption"])
def test_nan_model_evaluation_is_an_error(task: str) -> None:
    """Every task's evaluation refuses a model whose outputs are NaN (NaN compares false: a NaN retrieval
    model ranked every right video first) with one line naming what was non-finite."""
    from vl.evaluation.retrieval import NonFiniteError

    if task.startswith("retrieval"):
        module = RetrievalModule(video=VIDEO, rerank_k=2 if task == "retrieval_rerank" else 0)
        b, what = batch(0), "non-finite test video embeddings: 3 of 3 rows"
    elif task == "qa":
        module = QAModule(video=VIDEO, num_answers=4)
        module.set_vocab(AnswerVocab(["a", "b", "c", "d"]))
        b, what = batch(0), "test: non-finite answer logits: 3 of 3 items"
        b.answer = ["a", "b", "z"]
    elif task == "mc":
        module = MultipleChoiceModule(video=VIDEO)
        b, what = batch(0, choices=4), "test: non-finite choice scores: 3 of 3 items"
    else:
        module = CaptioningModule(video=VIDEO, max_len=3, beam_size=2)
        b, what = batch(0), "test: non-finite caption logits: 3 of 3 items"
    poison(module)
    module.eval()
    with torch.no_grad():
        module.eval_step(b, "test")
    with pytest.raises(NonFiniteError, match=what):
        module.finish_eval("test")


def test_rerank_refuses_nan_match_scores() -> None:
    from vl.evaluation.retrieval import NonFiniteError

    sim, scores = torch.randn(4, 5), torch.randn(4, 5)
    scores[2, sim[2].argmax()] = float("nan")  # a top-1 candidate's VTM score
    with pytest.raises(NonFiniteError, match="re-ranking scores of the top-k candidates: 1 of 4 rows"):
        rerank_topk(sim, scores, 2)
    scores = torch.full_like(sim, float("nan"))
    scores.scatter_(1, sim.topk(2, dim=1).indices, 1.0)  # outside the top k scores are never read
    assert torch.isfinite(rerank_topk(sim, scores, 2)).all()


# ---------------------------------------------------------------- padded frames (Batch.frame_mask)
# Clip 0 is full, clip 1 has 3 real frames of 8, clip 2 one: with 2-frame tubelets clip 1's second tubelet
# holds one real and one padded frame, and its last two time steps are all padding.
FRAME_MASK = torch.tensor([[True] * 8, [True] * 3 + [False] * 5, [True] + [False] * 7])


def padded_batch(seed: int = 0, choices: int = 0, repad: bool = False) -> Batch:
    """``batch`` with ``FRAME_MASK``; ``repad``: its padded frames filled with other noise."""
    b = batch(seed, choices)
    b.frame_mask = FRAME_MASK.clone()
    if repad:
        noise = torch.randn(b.video.shape, generator=torch.Generator().manual_seed(seed + 100)) * 3.0
        b.video = torch.where(FRAME_MASK[:, :, None, None, None], b.video, noise)
    return b


def same_whatever_the_padding(module, run):
    """``run(batch)`` on a padded batch, then on one whose padded frames (pixels and tokens) differ -> both."""
    with torch.no_grad():
        torch.manual_seed(0)
        before = run(padded_batch(1, choices=4))
        with noisy_padded_tokens(module.model.video_encoder, seed=7):
            torch.manual_seed(0)
            after = run(padded_batch(1, choices=4, repad=True))
    return before, after


def test_retrieval_training_and_reranking_ignore_padded_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """VTC/VTM training, the dual-encoder embeddings and the VTM re-ranking scores of a split do not depend on
    padded frames: the frame mask reaches the encoder and each video's token mask travels with its tokens."""
    module = RetrievalModule(video=VIDEO, rerank_k=2).eval()
    scored: list[torch.Tensor] = []
    real = retrieval.vtm_pair_scores
    monkeypatch.setattr(retrieval, "vtm_pair_scores", lambda *a, **k: scored.append(real(*a, **k)) or scored[-1])

    def run(b: Batch) -> dict:
        losses = module.compute_losses(b)
        b.text_video_index = torch.arange(B)
        module.eval_step(b, "test")
        data = module.eval_state.gathered()
        module.eval_state.reset()
        metrics, _ = module.evaluate(data)
        assert not bool(data["video_token_mask"].all())  # the padding was recorded with the tokens
        return {"vtc": losses["vtc_loss"], "vtm": losses["vtm_loss"], "video": data["video"],
                "log_odds": scored[-1], "rerank_R@1": torch.tensor(metrics["rerank/t2v_R@1"])}

    before, after = same_whatever_the_padding(module, run)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-5, msg=name)


def test_qa_ignores_padded_frames(tmp_path: Path) -> None:
    vocab_file = tmp_path / "vocab.json"
    AnswerVocab(["left", "right", "up", "down"]).save(vocab_file)
    module = QAModule(video=VIDEO, answer_vocab=str(vocab_file), num_answers=4).eval()
    before, after = same_whatever_the_padding(module, module.answer_logits)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("score", ["vtm", "vtm+vtc"])
def test_multiple_choice_ignores_padded_frames(score: str) -> None:
    module = MultipleChoiceModule(video=VIDEO, score=score).eval()
    before, after = same_whatever_the_padding(module, module.scores)
    assert before[0, -1] == -math.inf and torch.isfinite(before[1:]).all()
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_captioning_training_and_generation_ignore_padded_frames() -> None:
    """The caption loss and every decoder step of beam search (``eval_step``) ignore padded frames."""
    module = CaptioningModule(video=VIDEO, max_len=4, beam_size=2).eval()
    steps: list[torch.Tensor] = []
    real = module.decode_logits
    module.decode_logits = lambda *a, **k: steps.append(real(*a, **k)) or steps[-1]

    def run(b: Batch) -> dict:
        steps.clear()
        loss = module.compute_losses(b)["caption_loss"]
        module.eval_step(b, "test")
        captions = [o["prediction"] for o in module.eval_outputs]
        module.eval_outputs.clear()
        return {"loss": loss, "steps": [s.clone() for s in steps], "captions": captions}

    try:
        before, after = same_whatever_the_padding(module, run)
    finally:
        del module.decode_logits
    torch.testing.assert_close(after["loss"], before["loss"], rtol=0, atol=1e-5)
    assert after["captions"] == before["captions"] and len(after["steps"]) == len(before["steps"]) > 0
    for b_step, a_step in zip(before["steps"], after["steps"]):
        torch.testing.assert_close(a_step, b_step, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- time order: reversal and shuffle accuracy
ORDER_BLIND = {**VIDEO, "temporal": "none", "tubelet_size": 1}  # pools a re-ordered clip to the same embedding


def test_retrieval_reversal_accuracy_of_an_order_blind_model_is_exactly_chance() -> None:
    """Reversal and shuffle accuracy of an order-blind encoder are exactly 50% on padded clips (only their
    real frames are re-ordered; a one-frame clip has no other order and is left out); with the true clip
    and its reversal swapped by the model, every caption prefers the wrong order; ``reversal_eval=False``
    reports neither."""
    torch.manual_seed(0)
    module = RetrievalModule(video=ORDER_BLIND, rerank_k=0).eval()
    with torch.no_grad():
        module.eval_step(padded_batch(1), "test")
    metrics, _ = module.evaluate(module.eval_state.gathered())
    assert metrics["reversal_acc"] == 50.0 and metrics["shuffle_acc"] == 50.0
    assert metrics["reversal_captions"] == 2 == metrics["shuffle_captions"]  # clips of 8 and 3 real frames
    assert not any(k.endswith("temporal") for k in metrics)  # the batch's json says nothing

    # joint attention sees order; learned-from-random position tables make the untrained model's scores of a
    # clip and its reversal differ clearly (from sin-cos ones, by ~1e-5 on the 3-frame clip: near a tie)
    seeing = RetrievalModule(video={**VIDEO, "tubelet_size": 1, "pos_init": "random"}, rerank_k=0).eval()
    with torch.no_grad():
        seeing.eval_step(padded_batch(1), "test")
    data = seeing.eval_state.gathered()
    right, _ = seeing.evaluate(data)
    true = (data["text"] * data["video"]).sum(-1)[:2]  # (2,) one caption per clip; clip 2 has one frame
    reversed_ = (data["text"] * data["order"]["altered"]["reversal"]).sum(-1)[:2]
    assert bool(((true - reversed_).abs() > 10 * data["order"]["tie_tol"]).all())  # no tie: it sees the order
    assert right["reversal_acc"] == 100.0 * (true > reversed_).float().mean().item()
    data["video"], data["order"]["altered"]["reversal"] = data["order"]["altered"]["reversal"], data["video"]
    wrong, _ = seeing.evaluate(data)  # the true and reversed clips swapped: every preference flips
    assert wrong["reversal_acc"] == 100.0 - right["reversal_acc"]

    off = RetrievalModule(video=ORDER_BLIND, rerank_k=0, reversal_eval=False).eval()
    with torch.no_grad():
        off.eval_step(padded_batch(1), "test")
    assert off.reversal_eval is False and "reversal_eval" not in off.hparams  # an evaluation option
    assert not any(k.startswith(("reversal", "shuffle")) for k in off.evaluate(off.eval_state.gathered())[0])


def test_retrieval_test_writes_and_prints_reversal_accuracy(tmp_path: Path, synth_dir: dict, monkeypatch) -> None:
    """``vl test`` of a retrieval model: ``reversal_acc`` / ``shuffle_acc`` (and their caption counts) in
    test_metrics.json, and beside R@1 in the printed summary."""
    import vl.lit.module as base

    printed: list[str] = []
    monkeypatch.setattr(base, "rank_zero_info", lambda msg, *a, **k: printed.append(str(msg)))
    torch.manual_seed(0)
    module = RetrievalModule(video=ORDER_BLIND, rerank_k=0)
    data = VideoTextDataModule(root=synth_dir["dir"], text_field="caption", num_frames=T, frame_size=S, max_text_len=16,
                               eval_batch_size=8, num_workers=0, persistent_workers=False)
    quiet_trainer(tmp_path).test(module, datamodule=data, verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["reversal_acc"] == 50.0 and metrics["shuffle_acc"] == 50.0
    assert metrics["reversal_captions"] == 48 == metrics["shuffle_captions"]  # 12 test clips, 4 captions each
    summary = next(p for p in printed if "text-to-video retrieval over 12 clips" in p)
    r1 = next(line for line in summary.splitlines() if line.strip().startswith("R@1 "))
    assert "reversal 50.00% (48 captions), shuffle 50.00% (48 captions) (chance 50%)" in r1
