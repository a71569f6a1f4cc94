"""Every registered video encoder, text encoder, fusion and preset: forward + backward at tiny sizes,
every parameter gets a finite gradient, documented shapes; masks; real sizes checked on the meta
device against published parameter counts; open_clip weights loaded from a local file."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

import vl
from vl.models import (
    VideoLanguageModel,
    create_fusion,
    create_model,
    create_text_encoder,
    create_video_encoder,
    list_fusions,
    list_models,
    list_text_encoders,
    list_video_encoders,
)
from vl.models.hub import PretrainedNotFoundError, load_tokenizer
from vl.models.vit_st import TEMPORAL_MODES, roll_tokens

B, T, S = 2, 4, 32  # tiny clip: (2, 4, 3, 32, 32)


def clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, 3, S, S, generator=torch.Generator().manual_seed(seed))


def text_batch(L: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """WordPiece-like ids: [CLS] words [SEP] then padding in the second row."""
    ids = torch.randint(1000, 2000, (B, L), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 101
    mask = torch.ones(B, L, dtype=torch.long)
    ids[0, -1] = 102
    ids[1, 6], ids[1, 7:], mask[1, 7:] = 102, 0, 0
    return ids, mask


def half_mask(n: int, seed: int = 0) -> torch.Tensor:
    """(B, n) bool hiding exactly half the tokens of each row (True = masked)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    return order < n // 2


def assert_all_grads(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- registries -----------------------------------------------------------------------------------
def test_every_family_registers_tiny_and_real_sizes():
    video = set(list_video_encoders())
    for family in ("vit_st", "swin3d", "clip_st"):
        assert {f"{family}_tiny", f"{family}_base", f"{family}_large"} <= video
    assert {"bert", "bert_tiny", "bert_base", "minilm", "clip_text_tiny", "clip_text_base"} <= set(list_text_encoders())
    assert set(list_fusions()) == {"single_stream", "cross_attention"}
    assert {"vl_tiny", "violet_base", "allinone_base", "clip_base"} <= set(list_models())
    assert vl.list_models("*_tiny") == list_models("*_tiny")


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match="vit_st_tiny"):
        create_video_encoder("vit_st_small")
    with pytest.raises(ValueError, match="vl_tiny"):
        create_model("no_such_model")


# -- video encoders -------------------------------------------------------------------------------
VIDEO_CASES = [("vit_st_tiny", {"temporal": m}) for m in TEMPORAL_MODES] + [
    ("swin3d_tiny", {}), ("clip_st_tiny", {})]


@pytest.mark.parametrize("name,options", VIDEO_CASES, ids=lambda c: c if isinstance(c, str) else str(c))
def test_video_encoder_forward_backward(name, options):
    enc = create_video_encoder(name, **options)
    n_grid = math.prod(enc.grid)
    plain = enc.forward_features(clip())
    assert plain.shape == (B, enc.num_prefix_tokens + n_grid, enc.embed_dim)
    mask = half_mask(n_grid)
    tokens = enc.forward_features(clip(), mask)
    visible = n_grid // 2 if options.get("temporal") == "joint" else n_grid
    assert tokens.shape == (B, enc.num_prefix_tokens + visible, enc.embed_dim)
    pooled = enc.pool(tokens)
    assert pooled.shape == (B, enc.embed_dim)
    (tokens.square().mean() + pooled.sum() + plain.mean()).backward()
    assert_all_grads(enc)
    assert enc.no_weight_decay() <= {n for n, _ in enc.named_parameters()} | {"mask_token"}


@pytest.mark.parametrize("name", ["vit_st_tiny", "swin3d_tiny", "clip_st_tiny"])
def test_video_encoder_grad_checkpointing_matches(name):
    torch.manual_seed(0)
    enc = create_video_encoder(name)
    ref = enc.forward_features(clip())
    enc.set_grad_checkpointing(True)
    out = enc.forward_features(clip())
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    assert_all_grads_except_mask(enc)


def assert_all_grads_except_mask(enc):
    missing = [n for n, p in enc.named_parameters() if p.grad is None and n != "mask_token"]
    assert not missing


def test_vit_st_joint_drops_masked_tokens_in_order():
    enc = create_video_encoder("vit_st_tiny", temporal="joint")
    mask = half_mask(math.prod(enc.grid))
    full = enc.embed(clip(), None)  # (B, N, D)
    kept = enc.embed(clip(), mask)  # (B, N/2, D)
    expected = torch.stack([full[b][~mask[b]] for b in range(B)])
    torch.testing.assert_close(kept, expected)
    uneven = mask.clone()
    uneven[0, (~mask[0]).nonzero()[0]] = True
    with pytest.raises(ValueError, match="same number of visible tokens"):
        enc.forward_features(clip(), uneven)
    with pytest.raises(ValueError, match="mask must be"):
        enc.forward_features(clip(), mask[:, :-1])


def test_vit_st_mask_token_replaces_masked_patches():
    enc = create_video_encoder("vit_st_tiny", temporal="divided")
    mask = half_mask(math.prod(enc.grid))
    x = enc.embed(clip(), mask)
    pos = enc.pos_embed().expand(B, -1, -1)
    torch.testing.assert_close(x[mask], (enc.mask_token + pos[mask]))
    torch.testing.assert_close(x[~mask], enc.embed(clip(), None)[~mask])


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
def test_vit_st_temporal_modes_mix_frames_or_not(temporal):
    """Changing the last tubelet changes the first tubelet's tokens unless attention stays within frames."""
    enc = create_video_encoder("vit_st_tiny", temporal=temporal).eval()
    video = clip()
    other = video.clone()
    other[:, 2:] = torch.randn_like(other[:, 2:])  # frames of tubelet 1 only
    per_frame = enc.grid[1] * enc.grid[2]
    first = enc.forward_features(video)[:, :per_frame]
    first_other = enc.forward_features(other)[:, :per_frame]
    assert torch.allclose(first, first_other, atol=1e-6) == (temporal == "none")


def test_roll_tokens_moves_a_slice_across_adjacent_frames():
    x = torch.arange(3 * 8).float().view(1, 3, 8, 1)  # (B, T', S, D)
    y = roll_tokens(x, ratio=0.5)  # fold = 2
    assert torch.equal(y[:, 1, :2], x[:, 0, :2])  # from the previous frame
    assert torch.equal(y[:, 0, 2:4], x[:, 1, 2:4])  # from the next frame
    assert torch.equal(y[:, :, 4:], x[:, :, 4:])


def test_divided_adds_temporal_attention_parameters():
    joint = n_params(create_video_encoder("vit_st_tiny", temporal="joint"))
    rolling = n_params(create_video_encoder("vit_st_tiny", temporal="rolling"))
    divided = n_params(create_video_encoder("vit_st_tiny", temporal="divided"))
    D, depth = 128, 2
    assert rolling == joint + D  # rolling adds nothing but the mask token
    assert divided == rolling + depth * (2 * D + 3 * D * D + 3 * D + D * D + D + D * D + D)


def test_swin3d_is_torchvisions_video_swin():
    """swin3d's blocks are torchvision's (windows shifted by half in every other block), merged between stages."""
    from torchvision.models.swin_transformer import PatchMerging, SwinTransformerBlock
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    enc = create_video_encoder("swin3d_tiny")
    for i, stage in enumerate(enc.stages):
        assert all(isinstance(b, SwinTransformerBlock) and isinstance(b.attn, ShiftedWindowAttention3d)
                   for b in stage.blocks)
        assert [b.attn.shift_size for b in stage.blocks] == [[0, 0, 0], [1, 2, 2]]
        assert isinstance(stage.downsample, PatchMerging) == (i < len(enc.stages) - 1)


def test_swin3d_mask_covers_the_patches_of_each_output_token():
    enc = create_video_encoder("swin3d_tiny")
    assert enc.grid == (2, 2, 2) and enc.token_size == (2, 16, 16)
    mask = torch.zeros(B, 8, dtype=torch.bool)
    mask[:, 0] = True  # t'=0, h'=0, w'=0 -> patches [0, 0:4, 0:4]
    x = enc.embed(clip(), mask)  # (B, T', 8, 8, C)
    hidden = torch.zeros(x.shape[:4], dtype=torch.bool)
    hidden[:, 0, :4, :4] = True
    torch.testing.assert_close(x[hidden], enc.mask_token.expand(int(hidden.sum()), -1))
    torch.testing.assert_close(x[~hidden], enc.embed(clip(), None)[~hidden])


def test_video_encoder_rejects_wrong_clip_size():
    enc = create_video_encoder("vit_st_tiny")
    with pytest.raises(ValueError, match="num_frames/img_size"):
        enc.forward_features(torch.randn(1, 8, 3, 32, 32))


# -- clip_st / open_clip weights ------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory):
    """A tiny open_clip CLIP saved as a plain state dict, as open_clip checkpoints are."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=128,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
    ).eval()
    path = tmp_path_factory.mktemp("open_clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, path


def test_clip_st_loads_open_clip_weights_and_matches_encode_image(open_clip_file):
    model, path = open_clip_file
    enc = create_video_encoder("clip_st_tiny", pretrained=str(path)).eval()
    for name, p in model.visual.state_dict().items():
        torch.testing.assert_close(enc.visual.state_dict()[name], p)
    video = clip()
    frames = enc.encode_frames(video, None)[:, :, 0]  # (B, T, E): per-frame CLS in CLIP space
    expected = model.encode_image(video.flatten(0, 1)).view(B, T, -1)
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=1e-5)
    assert enc.is_pretrained
    assert enc.pretrained_parameter_names() == {f"visual.{n}" for n, _ in enc.visual.named_parameters()}


def test_clip_text_loads_open_clip_weights_and_matches_encode_text(open_clip_file):
    model, path = open_clip_file
    enc = create_text_encoder("clip_text_tiny", pretrained=str(path)).eval()
    ids = torch.zeros(2, 77, dtype=torch.long)  # open_clip's encode_text needs the full context
    ids[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    ids[1, :3] = torch.tensor([49406, 320, 49407])
    mask = (ids != 0).long()
    pooled = enc.pool(enc(ids, mask), mask)
    torch.testing.assert_close(pooled, model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_clip_text_pools_the_end_of_text_token_of_open_clips_tokenizer():
    tok = load_tokenizer("open_clip")
    batch = tok(["a dog", "a cat sitting on a mat"], max_length=12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    enc = create_text_encoder("clip_text_tiny")
    tokens = enc(ids, mask)
    eot = ids.argmax(dim=1)  # open_clip's pooling: the end-of-text id is the largest
    torch.testing.assert_close(enc.pool(tokens, mask), tokens[torch.arange(2), eot])


def test_open_clip_weights_from_training_checkpoints_and_safetensors(open_clip_file, tmp_path):
    from safetensors.torch import save_file

    model, _ = open_clip_file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    wrapped = tmp_path / "epoch_1.pt"  # what open_clip's training script saves under DDP
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    flat = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(flat))
    for path in (wrapped, flat):
        enc = create_video_encoder("clip_st_tiny", pretrained=str(path))
        torch.testing.assert_close(enc.visual.conv1.weight, model.visual.conv1.weight)


def test_open_clip_weights_fail_clearly(open_clip_file, tmp_path):
    _, path = open_clip_file
    with pytest.raises(ValueError, match="shape mismatches"):
        create_video_encoder("clip_st_tiny", pretrained=str(path), img_size=64)
    with pytest.raises(ValueError, match="missing keys"):
        create_video_encoder("clip_st_tiny", pretrained=str(path), layers=3)
    with pytest.raises(PretrainedNotFoundError, match="local file"):
        create_video_encoder("clip_st_tiny", pretrained=str(tmp_path / "nope.bin"))


# -- text encoders --------------------------------------------------------------------------------
TEXT_CASES = [("bert_tiny", {}), ("minilm", {}), ("bert", {"pretrained": "minilm", "num_layers": 2}),
              ("bert", {"hidden_size": 64, "num_layers": 1, "num_heads": 2}), ("clip_text_tiny", {})]


@pytest.mark.parametrize("name,options", TEXT_CASES, ids=lambda c: c if isinstance(c, str) else str(c))
def test_text_encoder_forward_backward(name, options):
    enc = create_text_encoder(name, **options)
    ids, mask = text_batch()
    if name.startswith("clip"):
        ids = ids.masked_fill(mask == 0, 0)
    tokens = enc(ids, mask)
    assert tokens.shape == (B, ids.shape[1], enc.embed_dim)
    pooled = enc.pool(tokens, mask)
    assert pooled.shape == (B, enc.embed_dim)
    if enc.pooling == "cls":
        torch.testing.assert_close(pooled, tokens[:, 0])
    elif enc.pooling == "mean":  # over the real tokens only
        torch.testing.assert_close(pooled[1], tokens[1, mask[1].bool()].mean(0))
    else:
        torch.testing.assert_close(pooled[1], tokens[1, 6])  # the last real token
    (tokens.mean() + pooled.sum()).backward()
    assert_all_grads(enc)
    assert enc.word_embeddings.num_embeddings == enc.vocab_size
    assert enc.is_pretrained == ("pretrained" in options or name == "minilm")


def test_bert_padding_does_not_change_real_tokens():
    enc = create_text_encoder("bert_tiny").eval()
    ids, mask = text_batch()
    other = ids.clone()
    other[1, 7:] = 555
    torch.testing.assert_close(enc(ids, mask)[1, :7], enc(other, mask)[1, :7])


def test_minilm_truncated_keeps_the_first_layers():
    full = create_text_encoder("minilm")
    short = create_text_encoder("bert", pretrained="minilm", num_layers=2)
    assert len(short.model.encoder.layer) == 2 and short.embed_dim == 384 and short.vocab_size == 30522
    torch.testing.assert_close(short.model.encoder.layer[1].state_dict(), full.model.encoder.layer[1].state_dict())


def test_bert_pretrained_errors():
    with pytest.raises(ValueError, match="read from the pretrained"):
        create_text_encoder("bert", pretrained="minilm", hidden_size=128)
    with pytest.raises(PretrainedNotFoundError, match="local"):
        create_text_encoder("bert", pretrained="someone/not-a-cached-model")


# -- fusion ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["single_stream", "cross_attention"])
@pytest.mark.parametrize("depth", [1, 3])
def test_fusion_forward_backward_and_attention(name, depth):
    fusion = create_fusion(name, video_dim=96, text_dim=64, depth=depth, num_heads=2)
    assert len(fusion.blocks) == depth and fusion.dim == 64
    video, (ids, mask) = torch.randn(B, 12, 96), text_batch()
    text = torch.randn(B, ids.shape[1], 64)
    out = fusion(video, text, mask, return_attention=True)
    L = ids.shape[1]
    assert out["text_tokens"].shape == (B, L, 64) and out["cls"].shape == (B, 64)
    assert out["tokens"].shape == ((B, L + 12, 64) if name == "single_stream" else (B, L, 64))
    att = out["attentions"]
    assert att.shape == (B, L, 12) and bool((att >= 0).all())
    if name == "cross_attention":
        torch.testing.assert_close(att.sum(-1), torch.ones(B, L))
    (out["tokens"].mean() + out["cls"].sum() + att.sum()).backward()
    assert_all_grads(fusion)


@pytest.mark.parametrize("name", ["single_stream", "cross_attention"])
def test_fusion_ignores_padding_and_masked_video(name):
    fusion = create_fusion(name, video_dim=64, text_dim=64, depth=2).eval()
    video, (ids, mask) = torch.randn(B, 12, 64), text_batch()
    text = torch.randn(B, ids.shape[1], 64)
    vmask = torch.ones(B, 12, dtype=torch.bool)
    vmask[:, 8:] = False  # e.g. padded frames
    ref = fusion(video, text, mask, vmask)["text_tokens"]
    text2, video2 = text.clone(), video.clone()
    text2[1, 7:] += 5.0
    video2[:, 8:] += 5.0
    out = fusion(video2, text2, mask, vmask)["text_tokens"]
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1, :7], ref[1, :7])


@pytest.mark.parametrize("name", ["single_stream", "cross_attention"])
def test_fusion_pool_reads_the_first_text_token_or_the_mean_of_the_real_ones(name):
    video, (ids, mask) = torch.randn(B, 12, 64), text_batch()
    text = torch.randn(B, ids.shape[1], 64)
    torch.manual_seed(0)
    cls_pool = create_fusion(name, video_dim=64, text_dim=64, depth=1).eval()
    out = cls_pool(video, text, mask)
    torch.testing.assert_close(out["pooled"], out["text_tokens"][:, 0])
    torch.manual_seed(0)
    mean_pool = create_fusion(name, video_dim=64, text_dim=64, depth=1, pooling="mean").eval()
    out = mean_pool(video, text, mask)
    for b in range(B):
        real = out["text_tokens"][b, mask[b].bool()]  # padding left out of the mean
        torch.testing.assert_close(out["pooled"][b], real.mean(dim=0))
    assert not torch.allclose(out["pooled"][1], out["text_tokens"][1].mean(dim=0))  # row 1 is padded
    with pytest.raises(ValueError, match="pooling must be one of"):
        create_fusion(name, video_dim=64, text_dim=64, depth=1, pooling="max")


def test_fusion_width_is_configurable():
    fusion = create_fusion("cross_attention", video_dim=96, text_dim=64, dim=32, depth=1)
    out = fusion(torch.randn(B, 5, 96), torch.randn(B, 4, 64), torch.ones(B, 4))
    assert out["text_tokens"].shape == (B, 4, 32)


# -- full models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models("*_tiny"))
def test_preset_forward_backward(name):
    model = create_model(name)
    ids, mask = text_batch()
    grid = math.prod(model.video_encoder.grid)
    out = model(clip(), ids, mask, video_token_mask=half_mask(grid))
    E, L = model.config["embed_dim"], ids.shape[1]
    assert out["video_embeds"].shape == out["text_embeds"].shape == (B, E)
    torch.testing.assert_close(out["video_embeds"].norm(dim=-1), torch.ones(B))
    assert out["text_tokens"].shape == (B, L, model.text_encoder.embed_dim)
    assert out["fused_text_tokens"].shape == (B, L, model.fusion.dim)
    assert out["fused_cls"].shape == (B, model.fusion.dim)
    assert out["vtm_logits"].shape == (B, 2)
    mlm = model.mlm_head(out["fused_text_tokens"])
    assert mlm.shape == (B, L, model.text_encoder.vocab_size)
    sim = out["logit_scale"].exp() * out["video_embeds"] @ out["text_embeds"].T
    (sim.sum() + out["vtm_logits"].sum() + mlm.logsumexp(-1).mean() + out["video_tokens"].mean()).backward()
    assert_all_grads(model)


def test_model_with_open_clip_text_tower():
    model = create_model("clip_tiny", text={"name": "clip_text_tiny"}, heads=["vtm"])
    assert model.mlm_head is None and model.text_encoder.pooling == "eot"
    ids, mask = text_batch()
    out = model(clip(), ids, mask)
    (out["video_embeds"] @ out["text_embeds"].T).sum().backward()
    assert model.text_encoder.tower.text_projection.grad is not None


def test_preset_trains_after_an_inference_mode_pass():
    """Lightning validates under torch.inference_mode; nothing created there may leak into training."""
    model = create_model("violet_tiny")
    ids, mask = text_batch()
    with torch.inference_mode():
        model(clip(), ids, mask)
    model(clip(), ids, mask)["vtm_logits"].sum().backward()
    assert model.video_encoder.stages[0].blocks[1].attn.relative_position_bias_table.grad is not None


def test_config_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = create_model("vl_tiny", video={"temporal": "divided"}, fusion={"name": "cross_attention", "depth": 1})
    for other in (create_model(**model.config), VideoLanguageModel(**model.config)):
        other.load_state_dict(model.state_dict(), strict=True)
        assert other.config == model.config
    assert model.config["video"] == {"name": "vit_st_tiny", "temporal": "divided"}
    assert model.config["fusion"] == {"name": "cross_attention", "depth": 1}


def test_brief_example_overrides():
    model = vl.create_model(
        "vl_tiny", video={"name": "vit_st_tiny", "temporal": "divided", "num_frames": 8, "img_size": 64},
        text={"name": "bert", "pretrained": "minilm"}, fusion={"name": "cross_attention", "depth": 2}, embed_dim=256,
    )
    assert model.video_encoder.grid == (8, 8, 8) and model.text_encoder.embed_dim == 384  # 1-frame tokens
    assert len(model.fusion.blocks) == 2 and model.video_proj.out_features == 256
    assert model.mlm_head.decoder.weight is model.text_encoder.word_embeddings.weight
    names = model.pretrained_parameter_names()
    assert names and all(n.startswith("text_encoder.") for n in names)


@pytest.mark.parametrize("overrides,part,key", [
    ({"video": {"tempral": "joint"}}, "video", "tempral"),
    ({"text": {"hiden_size": 8}}, "text", "hiden_size"),
    ({"fusion": {"layers": 2}}, "fusion", "layers"),
    ({"embed": 64}, "model", "embed"),
])
def test_unknown_override_names_key_part_and_valid_options(overrides, part, key):
    with pytest.raises(ValueError, match=rf"unknown {part} option '{key}'.*valid options: .*"):
        create_model("vl_tiny", **overrides)


def test_mlm_decoder_tied_only_when_shapes_match():
    tied = create_model("vl_tiny")
    assert tied.mlm_head.decoder.weight is tied.text_encoder.word_embeddings.weight
    untied = create_model("vl_tiny", fusion={"dim": 64})
    assert untied.mlm_head.decoder.weight is not untied.text_encoder.word_embeddings.weight
    assert untied.mlm_head.decoder.weight.shape == (30522, 64)
    assert create_model("vl_tiny", heads=["vtm"]).mlm_head is None


def test_no_weight_decay_and_grad_checkpointing():
    model = create_model("clip_tiny", text={"dropout": 0.0})
    names = {n for n, _ in model.named_parameters()}
    assert {"logit_scale", "video_encoder.frame_pos_embed"} <= model.no_weight_decay() <= names
    ids, mask = text_batch()
    torch.manual_seed(0)
    ref = model(clip(), ids, mask)["fused_cls"]
    model.set_grad_checkpointing(True)
    out = model(clip(), ids, mask)["fused_cls"]
    torch.testing.assert_close(out, ref)


# -- real sizes -----------------------------------------------------------------------------------
PUBLISHED = [  # (part, name, options, published parameter count, source)
    ("video", "vit_st_base", {}, 86.2e6, "ViT-B/16 without head (timm), 2-frame tubelets"),
    ("video", "vit_st_base", {"temporal": "divided"}, 121.4e6, "TimeSformer-B"),
    ("video", "vit_st_large", {}, 304.3e6, "ViT-L/16 without head"),
    ("video", "swin3d_base", {}, 88e6, "Video Swin-B"),
    ("video", "swin3d_large", {}, 197e6, "Video Swin-L"),
    ("text", "bert_base", {}, 109.5e6, "BERT-base (less its 0.6M pooler)"),
    ("text", "bert_large", {}, 335e6, "BERT-large"),
    ("text", "clip_text_base", {}, 63.4e6, "CLIP ViT-B/16 text tower"),
    ("text", "clip_text_large", {}, 123.7e6, "CLIP ViT-L/14 text tower"),
]


@pytest.mark.parametrize("part,name,options,published,source", PUBLISHED, ids=lambda c: str(c)[:20])
def test_real_sizes_match_published_parameter_counts(part, name, options, published, source):
    create = create_video_encoder if part == "video" else create_text_encoder
    with torch.device("meta"):
        module = create(name, **options)
    assert n_params(module) == pytest.approx(published, rel=0.02), source


@pytest.mark.parametrize("name,visual", [("clip_st_base", 86.19e6), ("clip_st_large", 303.97e6)])
def test_clip_st_visual_tower_is_open_clips(name, visual):
    with torch.device("meta"):
        enc = create_video_encoder(name)
    assert n_params(enc.visual) == pytest.approx(visual, rel=1e-3)


@pytest.mark.parametrize("name,video_dim,fusion", [
    ("violet_base", 1024, "SingleStreamFusion"), ("allinone_base", 768, "SingleStreamFusion"),
    ("clip_base", 512, "CrossAttentionFusion")])
def test_base_presets_build_on_meta(name, video_dim, fusion):
    with torch.device("meta"):
        model = create_model(name)
    assert model.video_encoder.embed_dim == video_dim and model.text_encoder.embed_dim == 768
    assert type(model.fusion).__name__ == fusion and len(model.fusion.blocks) == 6
    assert model.mlm_head.decoder.weight is model.text_encoder.word_embeddings.weight


@pytest.mark.slow  # ~1-2 s alone, up to ~10 s on a loaded 2-core machine (86M parameters to initialise)
def test_vit_st_base_forward_backward_at_small_input():
    enc = create_video_encoder("vit_st_base", img_size=32, num_frames=2)
    tokens = enc.forward_features(torch.randn(1, 2, 3, 32, 32))
    assert tokens.shape == (1, 4, 768)
    enc.pool(tokens).sum().backward()
    assert_all_grads_except_mask(enc)


def test_vit_st_sincos_position_init():
    from vl.models import create_video_encoder

    enc = create_video_encoder("vit_st_tiny", num_frames=4, img_size=32, patch_size=8, temporal="divided",
                               tubelet_size=1, pos_init="sincos")
    space, time = enc.pos_embed_space[0], enc.pos_embed_time[0]  # (16, D), (4, D)
    assert torch.allclose(time[0, : enc.embed_dim // 2], torch.zeros(enc.embed_dim // 2))  # sin(0)
    assert torch.allclose(time[0, enc.embed_dim // 2:], torch.ones(enc.embed_dim // 2))  # cos(0)
    assert len({tuple(row.round(decimals=4).tolist()) for row in space}) == 16  # every patch distinct
    assert enc.pos_embed_space.requires_grad  # learned from there
    with pytest.raises(ValueError, match="pos_init"):
        create_video_encoder("vit_st_tiny", pos_init="learned")


def test_vit_st_none_sees_frames_as_an_unordered_set():
    """`none` (per-frame, no time positions): a clip reversed in time pools to the same embedding; the
    modes that model time tell the two apart."""
    video = clip()
    for temporal in TEMPORAL_MODES:
        enc = create_video_encoder("vit_st_tiny", temporal=temporal, tubelet_size=1).eval()
        with torch.no_grad():
            forward, backward = enc.pool(enc.forward_features(video)), enc.pool(enc.forward_features(video.flip(1)))
        assert torch.allclose(forward, backward, atol=1e-5) == (temporal == "none"), temporal
    assert create_video_encoder("vit_st_tiny", temporal="none").pos_embed_time is None


def test_text_mean_pooling_averages_the_real_tokens_only():
    enc = create_text_encoder("bert_tiny", pooling="mean")
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(enc.pool(tokens, mask), torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)]))
    with pytest.raises(ValueError, match="pooling"):
        create_text_encoder("bert_tiny", pooling="max")


# -- padded frames (Batch.frame_mask) -------------------------------------------------------------
PADDED = torch.tensor([[True] * 3 + [False] * 5, [True] * 8])  # (2, 8): 3 real frames padded to 8; a full clip
FRAME_MASK_CASES = [("vit_st_tiny", dict(temporal=t, tubelet_size=k)) for t in TEMPORAL_MODES for k in (1, 2)]
FRAME_MASK_CASES += [("swin3d_tiny", {}), ("clip_st_tiny", {})]


def clip_of(frames: int) -> torch.Tensor:
    """(2, frames, 3, S, S) random clip."""
    return torch.randn(2, frames, 3, S, S, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name,options", FRAME_MASK_CASES, ids=lambda c: c if isinstance(c, str) else str(c))
def test_padded_frames_do_not_change_the_pooled_embedding(name, options):
    """With frame_mask, the pixels of padded frames cannot change the pooled embedding; a full clip's
    embedding is the one it has without a mask; the pooled mean is over real frames only."""
    torch.manual_seed(0)
    enc = create_video_encoder(name, num_frames=8, **options).eval()
    video = torch.randn(2, 8, 3, S, S, generator=torch.Generator().manual_seed(1))
    other = video.clone()
    other[0, 3:] = 5 * torch.randn(5, 3, S, S, generator=torch.Generator().manual_seed(2))  # new padding pixels
    with torch.no_grad():
        pooled = enc(video, frame_mask=PADDED)  # (2, D)
        torch.testing.assert_close(enc(other, frame_mask=PADDED), pooled, rtol=0, atol=1e-6)
        torch.testing.assert_close(pooled[1], enc(video)[1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(enc(other)[0], enc(video)[0], atol=1e-3)  # without the mask, padding counts
        tokens = enc.forward_features(video, frame_mask=PADDED)
        keep = enc.token_keep(PADDED)  # (2, N)
        real = tokens[0, keep[0]][enc.num_prefix_tokens if name != "clip_st_tiny" else 0:]
        expected = tokens[0, :enc.num_prefix_tokens][PADDED[0]].mean(0) if name == "clip_st_tiny" else real.mean(0)
        torch.testing.assert_close(pooled[0], expected)


@pytest.mark.parametrize("name,options", [c for c in FRAME_MASK_CASES if c[0] != "swin3d_tiny"
                                          and c[1].get("temporal") != "none"],
                         ids=lambda c: c if isinstance(c, str) else str(c))
def test_attention_ignores_padded_frames(name, options):
    """Real tokens do not attend to padded ones: changing what the padded time steps hold (their time
    position) leaves every real token unchanged. (swin3d does not mask its windows; see its docstring.)"""
    torch.manual_seed(0)
    enc = create_video_encoder(name, num_frames=8, **options).eval()
    table = enc.pos_embed_time if name.startswith("vit_st") else enc.frame_pos_embed  # (1, T' or T, D)
    video = clip_of(8)
    padded_cells = ~enc.frame_keep(PADDED)[0]  # (T',)
    with torch.no_grad():
        before = enc.forward_features(video, frame_mask=PADDED)
        unmasked = enc.forward_features(video)
        table[:, padded_cells] += torch.randn(table[:, padded_cells].shape)  # (not a constant: LayerNorm drops those)
        after = enc.forward_features(video, frame_mask=PADDED)
        assert not torch.allclose(enc.forward_features(video)[0], unmasked[0], atol=1e-3)  # the change matters
    keep = enc.token_keep(PADDED)[0]
    torch.testing.assert_close(after[0, keep], before[0, keep], rtol=0, atol=1e-5)


def test_frame_mask_reaches_the_fusion_and_the_embeddings():
    """VideoLanguageModel.forward(frame_mask=...): the video embedding, the fused outputs and the VTM
    logits of a short clip do not depend on its padded frames."""
    torch.manual_seed(0)
    model = create_model("vl_tiny", video={"num_frames": 8}).eval()
    ids, mask = text_batch()
    video = clip_of(8)
    with torch.no_grad():
        before = model(video, ids, mask, frame_mask=PADDED)
        table, padded_cells = model.video_encoder.pos_embed_time, ~model.video_encoder.frame_keep(PADDED)[0]
        table[:, padded_cells] += torch.randn(table[:, padded_cells].shape)
        after = model(video, ids, mask, frame_mask=PADDED)
        encoded = model.encode_video(video, frame_mask=PADDED)
    for key in ("video_embeds", "fused_pooled", "fused_text_tokens", "vtm_logits"):
        torch.testing.assert_close(after[key][0], before[key][0], rtol=0, atol=1e-5, msg=key)
    assert encoded["token_mask"].shape == encoded["tokens"].shape[:2]
    assert encoded["token_mask"][0].sum() < encoded["token_mask"][1].sum()


def test_frame_mask_errors_are_clear():
    enc = create_video_encoder("vit_st_tiny", num_frames=8)
    with pytest.raises(ValueError, match=r"rows \[0\] are all padding"):
        enc(clip_of(8), frame_mask=torch.tensor([[False] * 8, [True] * 8]))
    with pytest.raises(ValueError, match=r"frame_mask must be \(B, T\) with T = 8"):
        enc(clip_of(8), frame_mask=torch.ones(2, 4, dtype=torch.bool))
