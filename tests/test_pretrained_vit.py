"""vit_st from public checkpoints, proven against the reference libraries' own models: a timm
``VisionTransformer`` and Hugging Face ``VideoMAEModel`` / ``VideoMAEForPreTraining``, built with random
weights at tiny sizes, saved in their own formats, loaded into vit_st and compared output to output (fp32).
Base sizes are checked for key and shape compatibility on the meta device. Also: strict, one-line errors;
the loaded parameters reach the optimiser's pretrained group; CLS tokens with padded frames and masks."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

import pytest
from vl.lit.optim import OptimConfig, param_groups
from vl.models import create_model, create_video_encoder
from vl.models.hub import PretrainedNotFoundError
from vl.models.pretrained import convert_state
from vl.models.vit_st import TEMPORAL_MODES

B, T, S, D, P = 2, 4, 32, 64, 8  # clip (2, 4, 3, 32, 32), width 64, 8x8 patches: a 4x4 grid
TINY = dict(embed_dim=D, num_heads=2, patch_size=P, img_size=S, num_frames=T)
ATOL = 1e-5


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every parameter, so that biases, LayerNorms and CLS/position tokens are not at their
    (often zero or one) initial values and every one of them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def rand_clip(seed: int = 0, frames: int = T, size: int = S) -> torch.Tensor:
    return torch.randn(B, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def still_clip(seed: int = 0, frames: int = T) -> torch.Tensor:
    """A clip whose frames are all the same image: (B, frames, 3, S, S)."""
    return rand_clip(seed, 1).expand(-1, frames, -1, -1, -1).contiguous()


def per_frame(tokens: torch.Tensor, frames: int) -> torch.Tensor:
    """vit_st tokens with CLS tokens (B, T' + T'*16, D) -> (B, T', 1 + 16, D), timm's layout per frame."""
    grid = tokens[:, frames:].reshape(tokens.shape[0], frames, -1, tokens.shape[-1])
    return torch.cat([tokens[:, :frames, None], grid], dim=2)


def timm_per_frame(ref: VisionTransformer, video: torch.Tensor) -> torch.Tensor:
    """timm's forward_features of every frame: (B, T, 1 + 16, D)."""
    with torch.no_grad():
        return ref.forward_features(video.flatten(0, 1)).view(video.shape[0], video.shape[1], -1, ref.embed_dim)


# -- timm ViT --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    """A tiny timm ViT with a 10-class head, saved as timm saves it: model.safetensors and a .pth state dict."""
    torch.manual_seed(0)
    ref = perturb(VisionTransformer(img_size=S, patch_size=P, embed_dim=D, depth=2, num_heads=2, num_classes=10), 0)
    folder = tmp_path_factory.mktemp("timm_vit")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    torch.save(state, folder / "vit_tiny.pth")
    return ref, folder


def from_timm(path, **options) -> torch.nn.Module:
    return create_video_encoder("vit_st_tiny", **{**TINY, "tubelet_size": 1, "class_token": True,
                                                  "pretrained": str(path), **options}).eval()


@pytest.mark.parametrize("temporal", ["divided", "none"])
@pytest.mark.parametrize("file", ["model.safetensors", "vit_tiny.pth"])
def test_inflated_timm_vit_is_the_image_model_on_every_frame(timm_vit, temporal, file):
    """divided (TimeSformer) and none: at step 0, every frame's tokens are timm's forward_features of that frame,
    on a clip of different frames; the pooled embedding is the mean of timm's per-frame CLS features."""
    ref, folder = timm_vit
    enc = from_timm(folder / file, temporal=temporal)
    video = rand_clip()
    with torch.no_grad():
        tokens = enc.forward_features(video)
        pooled = enc(video)
    expected = timm_per_frame(ref, video)
    torch.testing.assert_close(per_frame(tokens, T), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, expected[:, :, 0].mean(1), atol=ATOL, rtol=0)
    assert (per_frame(tokens, T) - expected).abs().max() < ATOL


@pytest.mark.parametrize("temporal,tubelet", [("joint", 1), ("rolling", 1), ("joint", 2), ("divided", 2),
                                              ("rolling", 2)])
def test_inflated_timm_vit_is_the_image_model_on_a_still_clip(timm_vit, temporal, tubelet):
    """joint and rolling mix frames, so they equal the image model on a clip of identical frames: attention over
    T' identical copies of each key averages exactly as over one, and rolling swaps a token for an equal one.
    With 2-frame tubelets the averaged kernel embeds two equal frames as the image (every mode)."""
    ref, folder = timm_vit
    enc = from_timm(folder / "model.safetensors", temporal=temporal, tubelet_size=tubelet)
    video = still_clip()
    with torch.no_grad():
        tokens = enc.forward_features(video)
    expected = timm_per_frame(ref, video[:, :T // tubelet])
    torch.testing.assert_close(per_frame(tokens, T // tubelet), expected, atol=ATOL, rtol=0)


def test_timm_weights_load_exactly_as_documented(timm_vit):
    """Every weight is timm's after the documented transform; new parts start at the identity; the optimiser's
    pretrained set is exactly what came from the file."""
    ref, folder = timm_vit
    enc = from_timm(folder / "model.safetensors", temporal="divided", tubelet_size=2)
    sd, own = ref.state_dict(), enc.state_dict()
    kernel = own["patch_embed.proj.weight"]  # (D, 3, 2, 8, 8)
    for t in range(2):
        assert torch.equal(kernel[:, :, t], sd["patch_embed.proj.weight"] / 2)
    assert torch.equal(own["patch_embed.proj.bias"], sd["patch_embed.proj.bias"])
    assert torch.equal(own["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(own["pos_embed_space"], sd["pos_embed"][:, 1:])
    assert not own["pos_embed_time"].any()
    blocks = [k for k in sd if k.startswith(("blocks.", "norm."))]
    for k in blocks:
        assert torch.equal(own[k], sd[k]), k
    for i in range(2):
        assert not own[f"blocks.{i}.temporal_fc.weight"].any() and not own[f"blocks.{i}.temporal_fc.bias"].any()
        for new, old in (("norm_t", "norm1"), ("attn_t.qkv", "attn.qkv"), ("attn_t.proj", "attn.proj")):
            assert torch.equal(own[f"blocks.{i}.{new}.weight"], sd[f"blocks.{i}.{old}.weight"])
    assert enc.is_pretrained
    assert enc.pretrained_parameter_names() == {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token",
                                                "pos_embed_space", *blocks}
    assert not create_video_encoder("vit_st_tiny").pretrained_parameter_names()


def test_layernorm_epsilon_follows_the_checkpoint(timm_vit):
    """From scratch vit_st uses PyTorch's LayerNorm epsilon (1e-5); with a timm file, timm's (1e-6), and an
    explicit other value is named as the option to set."""
    _, folder = timm_vit
    eps = lambda enc: {m.eps for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)}  # noqa: E731
    assert eps(create_video_encoder("vit_st_tiny")) == {1e-5}
    assert eps(from_timm(folder / "model.safetensors", temporal="divided")) == {1e-6}
    with pytest.raises(ValueError, match=r"set norm_eps: 1e-06 \(the checkpoint's\)"):
        from_timm(folder / "model.safetensors", norm_eps=1e-5)


def test_timm_positions_are_resampled_as_timm_resamples_them(timm_vit):
    """At another image size the space table is timm's resample_abs_pos_embed of the patch positions, and the
    video model equals timm's own ViT at that size loaded through timm's checkpoint filter, on every frame."""
    ref, folder = timm_vit
    enc = from_timm(folder / "model.safetensors", temporal="divided", img_size=48)
    expected = resample_abs_pos_embed(ref.pos_embed[:, 1:].detach(), new_size=[6, 6], num_prefix_tokens=0)
    assert torch.equal(enc.pos_embed_space.detach(), expected)
    big = VisionTransformer(img_size=48, patch_size=P, embed_dim=D, depth=2, num_heads=2, num_classes=10).eval()
    big.load_state_dict(checkpoint_filter_fn(load_file(str(folder / "model.safetensors")), big))
    video = rand_clip(1, size=48)
    with torch.no_grad():
        tokens = enc.forward_features(video)
    torch.testing.assert_close(per_frame(tokens, T), timm_per_frame(big, video), atol=ATOL, rtol=0)


def test_timm_vit_without_class_position_and_with_layerscale(tmp_path):
    """timm's no_embed_class ViTs (DeiT-3) and LayerScale blocks load too, exactly."""
    ref = perturb(VisionTransformer(img_size=S, patch_size=P, embed_dim=D, depth=2, num_heads=2, num_classes=0,
                                    no_embed_class=True, init_values=0.1), 1)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    enc = from_timm(tmp_path, temporal="divided", init_values=1e-5)  # a hub snapshot folder works too
    video = rand_clip(2)
    with torch.no_grad():
        tokens = enc.forward_features(video)
    torch.testing.assert_close(per_frame(tokens, T), timm_per_frame(ref, video), atol=ATOL, rtol=0)


# -- VideoMAE --------------------------------------------------------------------------------------------
def videomae_config(use_mean_pooling: bool) -> VideoMAEConfig:
    return VideoMAEConfig(image_size=S, patch_size=P, num_frames=T, tubelet_size=2, hidden_size=D,
                          num_hidden_layers=2, num_attention_heads=2, intermediate_size=4 * D,
                          decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                          decoder_intermediate_size=64, use_mean_pooling=use_mean_pooling)


def from_videomae(path, use_mean_pooling: bool, **options) -> torch.nn.Module:
    return create_video_encoder("vit_st_tiny", **{**TINY, "tubelet_size": 2, "temporal": "joint",
                                                  "pos_table": "flat_sincos", "norm_eps": 1e-12,
                                                  "final_norm": not use_mean_pooling, "pretrained": str(path),
                                                  "pretrained_format": "videomae", **options}).eval()


@pytest.fixture(scope="module")
def videomae_dir(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(VideoMAEModel(videomae_config(False)), 2)
    folder = tmp_path_factory.mktemp("videomae")
    ref.save_pretrained(folder)
    return ref, folder


@pytest.mark.parametrize("use_mean_pooling", [False, True])
def test_videomae_matches_last_hidden_state(tmp_path, use_mean_pooling):
    """vit_st joint (flat sin-cos positions, no final norm under use_mean_pooling) = VideoMAEModel, with and
    without a tube of masked tokens dropped (bool_masked_pos / vit_st's mask)."""
    ref = perturb(VideoMAEModel(videomae_config(use_mean_pooling)), 3)
    ref.save_pretrained(tmp_path)
    enc = from_videomae(tmp_path, use_mean_pooling)
    video = rand_clip(4)
    g = torch.Generator().manual_seed(5)
    mask = torch.stack([torch.randperm(32, generator=g) < 16 for _ in range(B)])  # (B, 32), 16 masked per row
    with torch.no_grad():
        full, masked = enc.forward_features(video), enc.forward_features(video, mask)
        torch.testing.assert_close(full, ref(video).last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(masked, ref(video, bool_masked_pos=mask).last_hidden_state, atol=ATOL, rtol=0)
    assert enc.pretrained_parameter_names() == {n for n, _ in enc.named_parameters()}


def test_videomae_for_pretraining_and_both_bias_layouts(tmp_path):
    """A VideoMAEForPreTraining folder loads its encoder (decoder dropped); the query/value biases load from the
    released files' q_bias/v_bias and from transformers 5's query.bias/value.bias alike."""
    ref = perturb(VideoMAEForPreTraining(videomae_config(True)), 4)
    ref.save_pretrained(tmp_path / "released")
    state = load_file(str(tmp_path / "released" / "model.safetensors"))
    assert any(k.endswith("q_bias") for k in state) and any(k.startswith("decoder.") for k in state)
    renamed = {k.replace("q_bias", "query.bias").replace("v_bias", "value.bias"): v for k, v in state.items()}
    (tmp_path / "v5").mkdir()
    save_file(renamed, str(tmp_path / "v5" / "model.safetensors"))
    (tmp_path / "v5" / "config.json").write_text((tmp_path / "released" / "config.json").read_text())
    video = rand_clip(5)
    with torch.no_grad():
        expected = ref.videomae(video).last_hidden_state
        for folder in ("released", "v5"):
            got = from_videomae(tmp_path / folder, True).forward_features(video)
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# -- base sizes on the meta device -----------------------------------------------------------------------
def test_base_checkpoints_fit_the_base_encoders_on_meta():
    """All-in-one's start (timm ViT-B/16, 21k-class head) fits allinone_base's encoder (3 frames, rolling,
    tubelet 1) and divided 8-frame ones at 224 px; VideoMAE-B fits vit_st_base with VideoMAE's options."""
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=21843)
        mae_config = VideoMAEConfig()
        mae = VideoMAEModel(mae_config)
        # norm_eps: what pretrained= sets for a timm file, given here since these are built without one
        encoders = [create_video_encoder("vit_st_base", temporal="rolling", num_frames=3, tubelet_size=1,
                                         class_token=True, norm_eps=1e-6),
                    create_video_encoder("vit_st_base", temporal="divided", num_frames=8, tubelet_size=1,
                                         class_token=True, img_size=160, norm_eps=1e-6)]
        videomae = create_video_encoder("vit_st_base", pos_table="flat_sincos", norm_eps=1e-12, final_norm=False)
    for enc in encoders:
        converted = convert_state(vit.state_dict(), enc, "timm")
        assert set(converted.state) == set(enc.state_dict())
        assert converted.state["pos_embed_space"].shape == enc.pos_embed_space.shape
    converted = convert_state(mae.state_dict(), videomae, "videomae", mae_config.to_dict())
    assert converted.loaded == {n for n, _ in videomae.named_parameters()}


# -- errors ----------------------------------------------------------------------------------------------
def one_error(match: str, error=ValueError, **options) -> str:
    with pytest.raises(error, match=match) as info:
        create_video_encoder("vit_st_tiny", **options)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_timm_file_that_does_not_fit_names_every_option_and_key_at_once(timm_vit):
    _, folder = timm_vit
    path = str(folder / "model.safetensors")
    message = one_error("does not fit", **{**TINY, "pretrained": path, "depth": 3, "embed_dim": 32, "mlp_ratio": 2.0})
    for part in ("depth: 2", "embed_dim: 64", "class_token: True", "mlp_ratio: 4.0", "missing keys", "blocks.2.*",
                 "unexpected keys: cls_token", "shape mismatches",
                 "patch_embed.proj.weight: checkpoint (64, 3, 8, 8) vs model (32, 3, 1, 8, 8)"):
        assert part in message, (part, message)
    message = one_error("does not fit", **{**TINY, "pretrained": path, "class_token": True, "final_norm": False,
                                           "pos_table": "flat_sincos"})
    assert "final_norm: True" in message and "pos_table: space_time" in message and "norm.weight" in message


def test_a_videomae_folder_that_does_not_fit_names_every_option(videomae_dir):
    _, folder = videomae_dir
    message = one_error("does not fit", **{**TINY, "pretrained": str(folder), "pretrained_format": "videomae",
                                           "tubelet_size": 1, "num_heads": 4, "temporal": "divided"})
    for part in ("tubelet_size: 2", "num_heads: 2", "temporal: joint", "norm_eps: 1e-12", "pos_table: flat_sincos",
                 "embeddings.patch_embeddings.projection.weight (64, 3, 2, 8, 8) ->"):
        assert part in message, (part, message)


def test_files_of_another_kind_fail_in_one_line(timm_vit, videomae_dir, tmp_path):
    import open_clip

    _, timm_folder = timm_vit
    _, mae_folder = videomae_dir
    (tmp_path / "notes.bin").write_text("not a checkpoint\n")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    clip = open_clip.model.CLIP(embed_dim=32, vision_cfg=open_clip.model.CLIPVisionCfg(
        layers=1, width=32, head_width=16, patch_size=8, image_size=32), text_cfg=open_clip.model.CLIPTextCfg(
        context_length=8, vocab_size=100, width=32, heads=2, layers=1))
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    one_error("is not a checkpoint file", pretrained=str(tmp_path / "notes.bin"))
    one_error("is not a checkpoint file", pretrained=str(tmp_path / "empty.safetensors"))
    one_error("open_clip CLIP checkpoint: load it with clip_st",
              pretrained=str(tmp_path / "open_clip_pytorch_model.bin"))
    one_error("VideoMAE folder, not a timm ViT checkpoint: set pretrained_format: videomae", pretrained=str(mae_folder))
    one_error("not a timm ViT checkpoint.*Hugging Face transformers checkpoint",
              pretrained=str(mae_folder / "model.safetensors"))
    one_error("expects a save_pretrained folder.*timm", pretrained=str(timm_folder / "model.safetensors"),
              pretrained_format="videomae")
    one_error("pretrained_format must be one of", pretrained=str(timm_folder), pretrained_format="mae")
    message = one_error("vl never downloads", PretrainedNotFoundError, pretrained="vl-tests/vit_that_is_not_here")
    assert "hf download vl-tests/vit_that_is_not_here model.safetensors" in message
    message = one_error("vl never downloads", PretrainedNotFoundError, pretrained="vl-tests/videomae_not_here",
                        pretrained_format="videomae")
    assert "pretrained_format: videomae" in message


# -- the optimiser and the CLS tokens ----------------------------------------------------------------------
def test_loaded_parameters_get_the_pretrained_learning_rate(timm_vit):
    _, folder = timm_vit
    model = create_model("allinone_tiny", video={**TINY, "tubelet_size": 1, "class_token": True,
                                                 "pretrained": str(folder / "model.safetensors")})
    pretrained = model.pretrained_parameter_names()
    assert "video_encoder.blocks.0.attn.qkv.weight" in pretrained and "video_encoder.cls_token" in pretrained
    assert "video_encoder.pos_embed_time" not in pretrained and "video_encoder.mask_token" not in pretrained
    cfg = OptimConfig(lr=1e-3, pretrained_lr_scale=0.1)
    groups = param_groups(model, cfg, model.no_weight_decay(), pretrained)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr[id(named["video_encoder.blocks.1.mlp.fc2.weight"])] == pytest.approx(1e-4)
    assert lr[id(named["video_encoder.pos_embed_time"])] == pytest.approx(1e-3)
    assert lr[id(named["video_encoder.cls_token"])] == pytest.approx(1e-4)


PADDED = torch.tensor([[True] * 3 + [False] * 5, [True] * 8])  # (2, 8): 3 real frames padded to 8; a full clip


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
def test_class_tokens_with_padded_frames_and_masks(temporal):
    """With CLS tokens: padded frames change neither the pooled embedding nor any real token (also when the
    padded time steps' positions change); a mask keeps the CLS tokens; every parameter gets a gradient."""
    torch.manual_seed(0)
    enc = create_video_encoder("vit_st_tiny", temporal=temporal, tubelet_size=1, num_frames=8, class_token=True).eval()
    video = rand_clip(6, frames=8)
    other = video.clone()
    other[0, 3:] = 5 * torch.randn(5, 3, S, S, generator=torch.Generator().manual_seed(7))
    keep = enc.token_keep(PADDED)  # (2, 8 + 128)
    assert keep.shape == (2, 8 + 128) and keep[0, :8].tolist() == PADDED[0].tolist()
    with torch.no_grad():
        tokens = enc.forward_features(video, frame_mask=PADDED)
        torch.testing.assert_close(enc.forward_features(other, frame_mask=PADDED)[0, keep[0]], tokens[0, keep[0]],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(enc(video, frame_mask=PADDED)[0], tokens[0, :3].mean(0))
        if enc.pos_embed_time is not None:
            enc.pos_embed_time[:, 3:] += torch.randn(1, 5, enc.embed_dim)
            torch.testing.assert_close(enc.forward_features(video, frame_mask=PADDED)[0, keep[0]], tokens[0, keep[0]],
                                       atol=1e-5, rtol=0)
    enc.train()
    mask = torch.zeros(2, 128, dtype=torch.bool)
    mask[:, ::2] = True
    out = enc.forward_features(video, mask)
    assert out.shape == (2, 8 + (64 if temporal == "joint" else 128), enc.embed_dim)
    enc.pool(out).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.slow
def test_videomae_base_config_is_videomae_base(tmp_path, monkeypatch):
    """configs/pretrain/videomae_base.yaml with a VideoMAE-B folder (random weights, saved by transformers) in
    place of /weights/videomae-base: every encoder weight loads and the video encoder's tokens equal
    VideoMAEModel's last_hidden_state on a 16-frame 224 px clip."""
    from vl.lit.cli import VLLightningCLI

    torch.manual_seed(0)
    ref = VideoMAEModel(VideoMAEConfig()).eval()
    ref.save_pretrained(tmp_path / "videomae-base")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
           "--trainer.precision", "32-true", "--trainer.num_nodes", "1", "--trainer.logger", "false"]
    cli = VLLightningCLI(args=["-c", "configs/pretrain/videomae_base.yaml", *cpu,
                               "--model.init_args.video.pretrained", str(tmp_path / "videomae-base")], run=False)
    enc = cli.model.model.video_encoder.eval()
    assert enc.pretrained_parameter_names() == {n for n, _ in enc.named_parameters()}
    clip = torch.randn(1, 16, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(clip), ref(pixel_values=clip).last_hidden_state,
                                   rtol=0, atol=1e-5)
