"""VTC against a hand-computed CLIP loss, VTM hard negatives, MLM masking statistics and losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import noisy_padded_tokens

from vl.models import create_model
from vl.models.hub import load_tokenizer
from vl.objectives import IGNORE_INDEX, MLMLoss, VTCLoss, VTMLoss, mask_tokens, match_score, sample_negatives, word_starts

SPECIAL = [0, 100, 101, 102, 103]  # [PAD] [UNK] [CLS] [SEP] [MASK] of the uncased WordPiece vocab
MASK_ID, VOCAB = 103, 30522


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("vl_tiny")


def pairs(B: int = 4, L: int = 10):
    """A tiny batch for vl_tiny: clips (B, 4, 3, 32, 32), ids/mask (B, L) with [CLS] ... [SEP] + padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    ids[:, 0], ids[:, -1] = 101, 102
    ids[-1, 6], ids[-1, 7:], mask[-1, 7:] = 102, 0, 0
    return torch.randn(B, 4, 3, 32, 32, generator=g), ids, mask


# -- VTC ------------------------------------------------------------------------------------------
def test_vtc_equals_hand_computed_clip_loss():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(5, 8, generator=g), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(5, 8, generator=g), dim=-1).requires_grad_()
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    out = VTCLoss()(v, t, log_scale)
    logits = (1 / 0.07) * v @ t.T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    torch.testing.assert_close(out["vtc_loss"], expected)
    out["vtc_loss"].backward()
    assert v.grad is not None and t.grad is not None and log_scale.grad is not None


def test_vtc_clamps_the_temperature_at_100_and_reports_accuracy():
    e = torch.eye(4)
    out = VTCLoss()(e, e, torch.tensor(math.log(1000.0)))
    logits = 100.0 * e
    expected = F.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(out["vtc_loss"], expected)
    assert out["vtc_acc"].item() == 1.0
    shuffled = VTCLoss()(e, e[[1, 0, 2, 3]], torch.tensor(0.0))
    assert shuffled["vtc_acc"].item() == pytest.approx(0.5)


def test_vtc_trains_after_an_inference_mode_call():
    loss_fn, e = VTCLoss(), F.normalize(torch.randn(4, 8), dim=-1)
    with torch.inference_mode():
        loss_fn(e, e, torch.tensor(1.0))  # as in a validation loop
    scale = torch.nn.Parameter(torch.tensor(1.0))
    loss_fn(e, e, scale)["vtc_loss"].backward()
    assert scale.grad is not None


def test_vtc_rejects_mismatched_embeddings():
    with pytest.raises(ValueError, match="both be"):
        VTCLoss()(torch.randn(4, 8), torch.randn(3, 8), torch.tensor(1.0))


# -- VTM ------------------------------------------------------------------------------------------
def test_vtm_negatives_are_never_the_positive():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6) * 5
    for _ in range(200):
        neg_text, neg_video = sample_negatives(sim, generator=g)
        assert not bool((neg_text == torch.arange(6)).any()) and not bool((neg_video == torch.arange(6)).any())


def test_vtm_negatives_follow_the_similarities():
    sim = torch.zeros(4, 4)
    sim[0, 2] = 20.0  # text 2 is by far the hardest negative of video 0 ...
    sim[3, 1] = 20.0  # ... and video 3 the hardest of text 1
    sim[0, 0] = sim[3, 3] = 50.0  # positives score higher still, and must be skipped
    g = torch.Generator().manual_seed(0)
    draws = [sample_negatives(sim, generator=g) for _ in range(100)]
    assert sum(int(t[0] == 2) for t, _ in draws) >= 99
    assert sum(int(v[1] == 3) for _, v in draws) >= 99


def test_vtm_hard_fraction_mixes_in_uniform_negatives():
    """hard_fraction f: the hardest negative comes up with probability f + (1 - f) / 3 (4 candidates, 3 of
    them negatives), every other negative with (1 - f) / 3; the positive never."""
    sim = torch.zeros(4, 4)
    sim[0, 2] = 20.0  # text 2 is by far the hardest negative of video 0
    sim[0, 0] = 50.0
    for f, hardest in ((0.0, 1 / 3), (0.5, 0.5 + 0.5 / 3), (1.0, 1.0)):
        g = torch.Generator().manual_seed(0)
        draws = torch.stack([sample_negatives(sim, generator=g, hard_fraction=f)[0][0] for _ in range(3000)])
        assert not bool((draws == 0).any())
        assert abs(float((draws == 2).float().mean()) - hardest) < 0.03, (f, float((draws == 2).float().mean()))
        if f < 1.0:  # the other two negatives share the rest evenly
            assert abs(float((draws == 1).float().mean()) - float((draws == 3).float().mean())) < 0.04
    with pytest.raises(ValueError, match="hard_fraction"):
        sample_negatives(sim, hard_fraction=1.5)
    with pytest.raises(ValueError, match="hard_fraction"):
        VTMLoss(hard_fraction=-0.1)


def test_match_score_puts_vtm_and_the_dual_encoder_in_one_score():
    log_odds, cosine = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.1, 0.3, -0.2])
    assert torch.allclose(match_score(log_odds, cosine, 20.0), torch.tensor([4.0, 5.0, -3.5]))
    assert torch.allclose(match_score(log_odds, cosine, 20.0, "vtm+cos"), torch.tensor([2.1, -0.7, 0.3]))
    assert torch.equal(match_score(log_odds, cosine, 20.0, "vtm"), log_odds)
    with pytest.raises(ValueError, match="match score"):
        match_score(log_odds, cosine, 20.0, "itm")


def test_vtm_positive_mask_and_errors():
    sim = torch.randn(4, 4)
    same_video = torch.zeros(4, 4, dtype=torch.bool)
    same_video[0, 1] = same_video[1, 0] = True  # texts 0 and 1 both describe video 0/1
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        neg_text, neg_video = sample_negatives(sim, same_video, generator=g)
        assert neg_text[0] not in (0, 1) and neg_video[1] not in (0, 1)
    with pytest.raises(ValueError, match="at least 2"):
        sample_negatives(torch.randn(1, 1))
    with pytest.raises(ValueError, match="no negative"):
        sample_negatives(sim, torch.ones(4, 4, dtype=torch.bool))


def test_vtm_loss_fuses_one_positive_and_two_negatives_per_pair(model):
    video, ids, mask = pairs()
    v = model.encode_video(video)
    t = model.encode_text(ids, mask)
    sim = VTCLoss.similarity(model.embed_video(v["pooled"]), model.embed_text(t["pooled"]), model.logit_scale)
    seen = []
    fuse = model.fuse
    model.fuse = lambda *a, **k: seen.append(a[0].shape[0]) or fuse(*a, **k)
    try:
        out = VTMLoss()(model, v["tokens"], t["tokens"], mask, sim, generator=torch.Generator().manual_seed(0))
    finally:
        del model.fuse
    assert seen == [12]
    assert set(out) == {"vtm_loss", "vtm_acc"} and torch.isfinite(out["vtm_loss"])
    model.zero_grad()
    out["vtm_loss"].backward()
    assert model.vtm_head.weight.grad is not None and model.fusion.blocks[0].attn.q.weight.grad is not None
    assert model.logit_scale.grad is None  # negatives are sampled, not back-propagated through


# -- MLM masking ----------------------------------------------------------------------------------
def corpus(B: int = 256, L: int = 64, seed: int = 0):
    """[CLS] random words [SEP] + padding of random length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(B), lengths - 1] = 102
    return ids.masked_fill(mask == 0, 0), mask


def test_mask_tokens_proportions_and_specials():
    ids, mask = corpus()
    masked, labels = mask_tokens(ids, mask, mask_token_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL,
                                 generator=torch.Generator().manual_seed(0))
    candidates = (mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != IGNORE_INDEX
    n = int(candidates.sum())
    assert n > 10_000
    assert not bool((chosen & ~candidates).any())  # specials and padding never chosen
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert torch.equal(labels[chosen], ids[chosen])
    assert chosen.sum().item() / n == pytest.approx(0.15, abs=0.01)
    k = int(chosen.sum())
    to_mask = int((masked[chosen] == MASK_ID).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    assert to_mask / k == pytest.approx(0.8, abs=0.03)
    assert kept / k == pytest.approx(0.1, abs=0.02)
    assert (k - to_mask - kept) / k == pytest.approx(0.1, abs=0.02)  # random replacements


def test_mask_tokens_is_reproducible_with_a_generator():
    ids, mask = corpus(8, 16)
    a = mask_tokens(ids, mask, mask_token_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL,
                    generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask, mask_token_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL,
                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_whole_word_masking_masks_every_piece_of_a_word():
    starts = torch.ones(VOCAB, dtype=torch.bool)
    starts[20000:] = False  # ids >= 20000 play "##" continuation pieces
    ids, mask = corpus(seed=1)
    # Make roughly every other real token a continuation of the word before it.
    g = torch.Generator().manual_seed(2)
    piece = (torch.rand(ids.shape, generator=g) < 0.5) & (mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    piece[:, 1] = False  # the first word starts right after [CLS]
    ids = torch.where(piece, ids % 10000 + 20000, ids)
    _, labels = mask_tokens(ids, mask, mask_token_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL,
                            whole_word_starts=starts, generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    words_chosen = words_total = 0
    for b in range(ids.shape[0]):
        word: list[int] = []
        for i in range(1, int(mask[b].sum()) - 1):
            if not piece[b, i] and word:
                flags = {bool(chosen[b, j]) for j in word}
                assert len(flags) == 1, "a word was masked only in part"
                words_chosen, words_total, word = words_chosen + flags.pop(), words_total + 1, []
            word.append(i)
    assert words_chosen / words_total == pytest.approx(0.15, abs=0.015)


def test_word_starts_reads_wordpiece_continuations():
    assert word_starts(["[CLS]", "play", "##ing", "ball"]).tolist() == [True, True, False, True]


# -- MLM loss -------------------------------------------------------------------------------------
def test_mlm_loss_forward_backward(model):
    video, ids, mask = pairs()
    mlm = MLMLoss(MASK_ID, VOCAB, SPECIAL, prob=0.5)
    v = model.encode_video(video)
    model.zero_grad()
    out = mlm(model, v["tokens"], ids, mask, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"mlm_loss", "mlm_acc"} and torch.isfinite(out["mlm_loss"])
    assert out["mlm_loss"].item() == pytest.approx(math.log(VOCAB), rel=0.25)  # untrained: near uniform
    out["mlm_loss"].backward()
    assert model.text_encoder.word_embeddings.weight.grad is not None  # through input and tied decoder
    assert model.mlm_head.transform[0].weight.grad is not None
    assert model.video_encoder.patch_embed.proj.weight.grad is not None


def test_mlm_loss_with_nothing_masked_is_zero_not_nan(model):
    video, ids, mask = pairs()
    only_special = torch.where(mask == 1, torch.full_like(ids, 101), ids)
    out = MLMLoss(MASK_ID, VOCAB, SPECIAL)(model, model.encode_video(video)["tokens"], only_special, mask)
    assert out["mlm_loss"].item() == 0.0 and out["mlm_loss"].requires_grad


def test_mlm_from_tokenizer_and_missing_mask_token():
    tok = load_tokenizer("minilm")
    mlm = MLMLoss.from_tokenizer(tok, prob=0.2, whole_word=True)
    assert mlm.mask_token_id == tok.mask_token_id == 103 and mlm.vocab_size == 30522 and mlm.prob == 0.2
    assert set(tok.all_special_ids) <= set(mlm.special_ids)
    assert not bool(mlm.whole_word_starts[tok.convert_tokens_to_ids("##ing")])
    assert bool(mlm.whole_word_starts[tok.convert_tokens_to_ids("play")])
    with pytest.raises(ValueError, match="no mask token"):
        MLMLoss(None, 49408, [49406, 49407])
    with pytest.raises(ValueError, match="no mask token"):
        MLMLoss.from_tokenizer(load_tokenizer("open_clip"))


def test_mlm_rejects_a_model_without_head_or_with_a_smaller_vocab():
    video, ids, mask = pairs(2)
    no_head = create_model("vl_tiny", heads=["vtm"])
    with pytest.raises(ValueError, match="without an MLM head"):
        MLMLoss(MASK_ID, VOCAB, SPECIAL)(no_head, torch.randn(2, 32, 128), ids[:2], mask[:2])
    with pytest.raises(ValueError, match="larger than the model"):
        MLMLoss(MASK_ID, VOCAB + 10, SPECIAL)(create_model("vl_tiny"), torch.randn(2, 32, 128), ids[:2], mask[:2])


def test_vtm_positives_cover_duplicate_texts_and_each_clips_captions():
    from vl.objectives import vtm_positives

    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6]])  # texts 0 and 1 are the same tokens
    same_only = vtm_positives(ids)
    assert same_only.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    # clip 2's references include text 0's caption: (2, 0) is a match too, not a negative
    refs = [["a cat"], ["a cat"], ["a dog", "a cat"]]
    full = vtm_positives(ids, refs, ["a cat", "a cat", "a dog"])
    assert full[2, 0] and full[2, 1] and not full[0, 2] and full.diagonal().all()


def test_multi_positive_vtc_is_clip_loss_without_duplicates_and_soft_with_them():
    from vl.objectives import caption_keys

    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    t = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(10.0))
    loss = VTCLoss()
    texts = ["a cat", "a dog", "a bird", "a fish"]
    distinct = caption_keys(texts, [[x] for x in texts])
    torch.testing.assert_close(loss(v, t, scale, distinct)["vtc_loss"], loss(v, t, scale)["vtc_loss"])
    # clip 1's caption is clip 0's too, and clip 3 lists clip 2's text among its references
    text_keys, clip_keys = caption_keys(["a cat", "a cat", "a bird", "a fish"],
                                        [["a cat"], ["a cat"], ["a bird"], ["a fish", "a bird"]])
    logits = 10.0 * v @ t.t()
    pos = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.float)
    v2t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2v = -(pos.t() / pos.t().sum(1, keepdim=True) * logits.t().log_softmax(1)).sum(1).mean()
    got = loss(v, t, scale, (text_keys, clip_keys))["vtc_loss"]
    torch.testing.assert_close(got, (v2t + t2v) / 2)
    assert not torch.allclose(got, loss(v, t, scale)["vtc_loss"])  # duplicates are no longer negatives
    with pytest.raises(ValueError, match="one text per clip"):
        caption_keys(["a cat"], [["a cat"], ["a dog"]])


# -- padded frames (Batch.frame_mask) -------------------------------------------------------------
# Clip 0 is full, clip 1 has 2 real frames of 4, clip 2 one: vl_tiny's 2-frame tubelets make clip 1's second
# time step all padding, and clip 2's first tubelet half padding.
FRAME_MASK = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])


def repad(video: torch.Tensor, frame_mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``video`` (B, T, C, H, W) with its padded frames (``frame_mask`` False) refilled with other noise."""
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed)) * 3.0
    return torch.where(frame_mask[:, :, None, None, None], video, noise)


def test_fill_padded_frames_copies_the_latest_real_frame():
    from vl.objectives.mvm import fill_padded_frames

    video = torch.arange(3 * 4, dtype=torch.float).view(3, 4, 1, 1, 1).expand(3, 4, 3, 2, 2)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False, True, False, True]])
    out = fill_padded_frames(video, mask)[:, :, 0, 0, 0]
    assert out.tolist() == [[0, 1, 2, 3], [4, 5, 5, 5], [9, 9, 9, 11]]  # a leading pad takes the first real frame
    assert fill_padded_frames(video, None) is video


@pytest.mark.parametrize("source,masking", [("encoder", "tube"), ("fusion", "attended"), ("encoder", "motion")])
def test_mvm_loss_ignores_padded_frames(source, masking):
    """MVM with ``frame_mask``: neither the padded frames' pixels nor the tokens made of them change the loss
    (encoder, fusion, decoder, motion scores and targets all leave them out)."""
    from vl.objectives.masking import MaskSpec
    from vl.objectives.mvm import MVMLoss
    from vl.objectives.mvm_targets import PixelTarget

    torch.manual_seed(0)
    model = create_model("vl_tiny").eval()
    enc = model.video_encoder
    in_dim = model.fusion.dim if source == "fusion" else enc.embed_dim
    mvm = MVMLoss(PixelTarget(enc.grid, enc.token_size), [MaskSpec(masking, 0.5)], enc.grid, in_dim, source,
                  decoder_depth=1, decoder_dim=64, decoder_heads=2).eval()
    video, ids, mask = pairs(B=3)

    def loss(clips: torch.Tensor) -> torch.Tensor:
        text = model.encode_text(ids, mask)
        v = model.encode_video(clips, frame_mask=FRAME_MASK)
        return mvm(model, clips, v["tokens"], text["tokens"], mask, model.embed_text(text["pooled"]),
                   torch.Generator().manual_seed(0), frame_mask=FRAME_MASK)["mvm_loss"]

    with torch.no_grad():
        before = loss(video)
        with noisy_padded_tokens(enc, seed=2):
            after = loss(repad(video, FRAME_MASK))
    assert torch.isfinite(before)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_pretraining_objectives_ignore_padded_frames():
    """PretrainModule.compute_losses on a batch with padded clips: VTC, VTM, MLM and MVM are the same whatever
    the padded frames hold and whatever tokens the encoder makes of them (VTM and MLM fuse with the
    encoder's token mask)."""
    from datapipes.batch import Batch
    from vl.lit.pretrain import Objectives, PretrainModule
    from vl.objectives.masking import MaskSpec
    from vl.objectives.mvm import MVMConfig

    torch.manual_seed(0)
    mvm = MVMConfig(masking=[MaskSpec("tube", 0.5)], decoder_dim=64, decoder_heads=2)
    module = PretrainModule("vl_tiny", objectives=Objectives(vtm=1.0, mlm=1.0, mlm_prob=0.5, mvm=1.0,
                                                             mvm_config=mvm)).eval()
    video, ids, mask = pairs(B=3)

    def losses(clips: torch.Tensor) -> dict[str, torch.Tensor]:
        torch.manual_seed(5)  # the same VTM negatives, MLM and MVM masks
        b = Batch(video=clips, text_ids=ids, text_mask=mask, keys=["a", "b", "c"], frame_mask=FRAME_MASK)
        return {k: v for k, v in module.compute_losses(b).items() if k.endswith("_loss")}

    with torch.no_grad():
        before = losses(video)
        with noisy_padded_tokens(module.model.video_encoder, seed=2):
            after = losses(repad(video, FRAME_MASK))
    assert set(before) == {"vtc_loss", "vtm_loss", "mlm_loss", "mvm_loss"}
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-5, msg=name)


# -- reversed-clip negatives -------------------------------------------------------------------------------
def test_time_reversal_loss_prefers_the_true_order():
    """A clip whose reversal embeds the same gives log 2 and accuracy 0 (a tie is not a win); the loss falls
    as the caption moves toward the true order; and PretrainModule encodes the reversed frames for it."""
    import math

    from datapipes.batch import Batch
    from vl.lit.pretrain import Objectives, PretrainModule
    from vl.objectives import time_reversal_loss

    torch.manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    v, v_rev = unit(torch.randn(4, 8)), unit(torch.randn(4, 8))
    scale = torch.tensor(math.log(10.0))
    tie = time_reversal_loss(v, v, unit(torch.randn(4, 8)), scale)
    assert tie["reversal_loss"].item() == pytest.approx(math.log(2), abs=1e-6) and tie["reversal_acc"] == 0
    toward_true = [time_reversal_loss(v, v_rev, unit(v + a * (v - v_rev)), scale)["reversal_loss"].item()
                   for a in (0.0, 0.5, 2.0)]
    assert toward_true[0] > toward_true[1] > toward_true[2]
    assert time_reversal_loss(v, v_rev, v, scale)["reversal_acc"] == 1

    module = PretrainModule("vl_tiny", objectives=Objectives(reversal=1.0))
    video, ids, mask = pairs(B=3)
    out = module.compute_losses(Batch(video=video, text_ids=ids, text_mask=mask, keys=["a", "b", "c"]))
    assert {"vtc_loss", "reversal_loss"} <= set(out) and torch.isfinite(out["reversal_loss"])
    out["reversal_loss"].backward()
    assert module.model.video_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
