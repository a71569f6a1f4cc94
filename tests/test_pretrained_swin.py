"""swin3d loads public Video Swin checkpoints, proven by numerical equivalence offline.

The references are torchvision's ``SwinTransformer3d`` with random weights, saved as torchvision's weight
files are (``torch.save(model.state_dict())``), and the same weights written under the key names of the
official Video-Swin-Transformer release. Tiny widths run the forward passes; the real sizes (Swin-T/S/B,
Kinetics and SSv2 windows) are checked for keys and shapes on the meta device.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torchvision.models.video import swin3d_b, swin3d_s, swin3d_t
from torchvision.models.video.swin_transformer import SwinTransformer3d

from vl.lit.optim import OptimConfig, param_groups
from vl.models import create_model, create_video_encoder
from vl.models.hub import PretrainedNotFoundError
from vl.models.swin3d_checkpoints import SwinCheckpointError, fit_report, to_swin3d_names

TINY = dict(width=32, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=(2, 4, 4))  # swin3d_tiny's sizes
FRAMES, SIZE = 8, 32  # 4 x 8 x 8 patches at stage 0: 2 x 2 x 2 windows of 2 x 4 x 4, shifted along t, h and w


def torchvision_tiny(seed: int = 0) -> SwinTransformer3d:
    """torchvision's Video Swin at swin3d_tiny's sizes, every weight random (LayerNorms included)."""
    torch.manual_seed(seed)
    model = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=TINY["width"], depths=list(TINY["depths"]),
                              num_heads=list(TINY["num_heads"]), window_size=list(TINY["window_size"]),
                              stochastic_depth_prob=0.0, num_classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def torchvision_tokens(model: SwinTransformer3d, video: torch.Tensor) -> torch.Tensor:
    """torchvision's own forward up to the final norm, as tokens: video (B, T, C, H, W) -> (B, N, D)."""
    x = model.norm(model.features(model.pos_drop(model.patch_embed(video.transpose(1, 2)))))  # (B, T', H', W', D)
    return x.flatten(1, 3)


def clip_batch() -> torch.Tensor:
    return torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def official_state(width: int, depths, num_heads, window, num_classes: int, patch=(2, 4, 4),
                   device: str = "meta") -> dict[str, torch.Tensor]:
    """A state dict in the key layout of the official release, with its shapes, built from the module
    structure of SwinTransformer/Video-Swin-Transformer ``mmaction/models/backbones/swin_transformer.py``:
    ``SwinTransformer3D`` holds ``patch_embed`` (``PatchEmbed3D``: ``proj`` Conv3d, ``norm`` LayerNorm as the
    configs set ``patch_norm=True``), ``layers`` (``BasicLayer``: ``blocks`` of ``SwinTransformerBlock3D`` =
    ``norm1``, ``attn`` = ``WindowAttention3D`` (``relative_position_bias_table`` parameter,
    ``relative_position_index`` buffer, ``qkv``, ``proj``), ``norm2``, ``mlp`` = ``Mlp`` (``fc1``, ``fc2``);
    then ``downsample`` = ``PatchMerging`` (``reduction`` without bias, ``norm``) in all but the last layer)
    and ``norm``; mmaction's ``Recognizer3D`` puts it under ``backbone.`` beside ``cls_head`` (``I3DHead``:
    ``fc_cls``)."""
    wt, wh, ww = window
    keys: dict[str, tuple[int, ...]] = {
        "backbone.patch_embed.proj.weight": (width, 3, *patch), "backbone.patch_embed.proj.bias": (width,),
        "backbone.patch_embed.norm.weight": (width,), "backbone.patch_embed.norm.bias": (width,),
    }
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = width * 2**i
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}."
            keys.update({
                b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                b + "attn.relative_position_bias_table": ((2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1), heads),
                b + "attn.relative_position_index": (wt * wh * ww, wt * wh * ww),
                b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
            })
        if i < len(depths) - 1:
            d = f"backbone.layers.{i}.downsample."
            keys.update({d + "reduction.weight": (2 * dim, 4 * dim), d + "norm.weight": (4 * dim,),
                         d + "norm.bias": (4 * dim,)})
    out = width * 2 ** (len(depths) - 1)
    keys.update({"backbone.norm.weight": (out,), "backbone.norm.bias": (out,),
                 "cls_head.fc_cls.weight": (num_classes, out), "cls_head.fc_cls.bias": (num_classes,)})
    return {k: torch.empty(shape, device=device) for k, shape in keys.items()}


def torchvision_to_official(state: dict[str, torch.Tensor], depths) -> dict[str, torch.Tensor]:
    """torchvision's tensors under the official names: torchvision's ``features`` interleaves stages (even
    index) and patch merging (odd), its MLP is ``MLP`` = Sequential(Linear, GELU, Dropout, Linear, Dropout);
    the official release nests ``downsample`` in ``layers.{i}`` and names the MLP's linears ``fc1``/``fc2``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features":
            k = int(parts[1])
            rest = ".".join(parts[2:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            key = f"layers.{k // 2}.blocks.{rest}" if k % 2 == 0 else f"layers.{k // 2}.downsample.{rest}"
        elif parts[0] == "head":
            key = key.replace("head.", "fc_cls.")
        out[("cls_head." if key.startswith("fc_cls.") else "backbone.") + key] = value
    return out


# -- numerical equivalence ------------------------------------------------------------------------
def test_torchvision_weight_file_gives_torchvisions_features(tmp_path):
    reference = torchvision_tiny()
    path = tmp_path / "swin3d_tiny.pth"
    torch.save(reference.state_dict(), path)
    enc = create_video_encoder("swin3d_tiny", num_frames=FRAMES, img_size=SIZE, pretrained=str(path)).eval()
    video = clip_batch()
    with torch.no_grad():
        ours, theirs = enc.forward_features(video), torchvision_tokens(reference, video)
        pooled = reference.avgpool(reference.norm(reference.features(reference.patch_embed(video.transpose(1, 2))))
                                   .permute(0, 4, 1, 2, 3)).flatten(1)  # torchvision's pooled features (B, D)
    assert ours.shape == (2, 4 * 2 * 2, 128)
    print(f"torchvision layout: max |diff| = {(ours - theirs).abs().max().item():.2e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.pool(ours), pooled, rtol=0, atol=1e-5)
    fresh = create_video_encoder("swin3d_tiny", num_frames=FRAMES, img_size=SIZE).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.forward_features(video), theirs, atol=1e-2)  # the weights did the work


def test_official_release_layout_gives_the_same_features(tmp_path):
    reference = torchvision_tiny(seed=1)
    state = torchvision_to_official(reference.state_dict(), TINY["depths"])
    fixture = official_state(TINY["width"], TINY["depths"], TINY["num_heads"], TINY["window_size"], num_classes=7)
    assert state.keys() == fixture.keys()  # the renaming reproduces the official key list exactly
    assert all(state[k].shape == fixture[k].shape for k in state)
    path = tmp_path / "swin_tiny_patch244_window244.pth"
    torch.save({"meta": {"epoch": 30, "mmcv_version": "1.3.1"}, "state_dict": state}, path)
    enc = create_video_encoder("swin3d_tiny", num_frames=FRAMES, img_size=SIZE, pretrained=str(path)).eval()
    video = clip_batch()
    with torch.no_grad():
        ours, theirs = enc.forward_features(video), torchvision_tokens(reference, video)
    print(f"official layout: max |diff| = {(ours - theirs).abs().max().item():.2e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_masked_and_checkpointed_forward_still_start_from_the_weights(tmp_path):
    """MVM's mask tokens go in after torchvision's patch embedding; with no cell masked and under activation
    checkpointing the loaded encoder computes torchvision's features."""
    reference = torchvision_tiny(seed=2)
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    enc = create_video_encoder("swin3d_tiny", num_frames=FRAMES, img_size=SIZE, pretrained=str(path)).eval()
    enc.set_grad_checkpointing(True)
    video = clip_batch()
    none = torch.zeros(2, enc.num_grid_tokens, dtype=torch.bool)
    out = enc.forward_features(video, none)
    torch.testing.assert_close(out.detach(), torchvision_tokens(reference, video).detach(), rtol=0, atol=1e-5)
    masked = none.clone()
    masked[:, :8] = True
    assert not torch.allclose(enc.forward_features(video, masked), out, atol=1e-3)
    out.sum().backward()
    assert enc.stages[0].blocks[1].attn.relative_position_bias_table.grad is not None


# -- keys and shapes of the real files, on the meta device ------------------------------------------
OFFICIAL_FILES = [  # (release file, encoder, width, depths, heads, window, classes)
    ("swin_tiny_patch244_window877_kinetics400_1k", "swin3d_t", 96, (2, 2, 6, 2), (3, 6, 12, 24), (8, 7, 7), 400),
    ("swin_small_patch244_window877_kinetics400_1k", "swin3d_s", 96, (2, 2, 18, 2), (3, 6, 12, 24), (8, 7, 7), 400),
    ("swin_base_patch244_window877_kinetics400_22k", "swin3d_base", 128, (2, 2, 18, 2), (4, 8, 16, 32), (8, 7, 7), 400),
    ("swin_base_patch244_window877_kinetics600_22k", "swin3d_base", 128, (2, 2, 18, 2), (4, 8, 16, 32), (8, 7, 7), 600),
    ("swin_base_patch244_window1677_sthv2", "swin3d_base", 128, (2, 2, 18, 2), (4, 8, 16, 32), (16, 7, 7), 174),
]


@pytest.mark.parametrize("file,name,width,depths,heads,window,classes", OFFICIAL_FILES, ids=lambda c: str(c)[:44])
def test_official_files_map_onto_every_weight(file, name, width, depths, heads, window, classes):
    state, layout = to_swin3d_names(official_state(width, depths, heads, window, classes))
    with torch.device("meta"):
        enc = create_video_encoder(name, window_size=window)
    assert layout == "official"
    assert state.keys() == set(enc.state_dict()) - {"mask_token"}  # every key maps, nothing left over
    fit_report(enc, state, file)  # and every shape agrees


@pytest.mark.parametrize("build,name", [(swin3d_t, "swin3d_t"), (swin3d_s, "swin3d_s"), (swin3d_b, "swin3d_base")])
def test_torchvision_files_map_onto_every_weight(build, name):
    with torch.device("meta"):
        reference, enc = build(weights=None), create_video_encoder(name)
    state, layout = to_swin3d_names(reference.state_dict())
    assert layout == "torchvision" and state.keys() == set(enc.state_dict()) - {"mask_token"}
    fit_report(enc, state, name)


def test_a_table_for_another_window_names_window_size():
    state, _ = to_swin3d_names(official_state(128, (2, 2, 18, 2), (4, 8, 16, 32), (16, 7, 7), 174))
    with torch.device("meta"):
        enc = create_video_encoder("swin3d_base")  # window 8x7x7
    with pytest.raises(SwinCheckpointError, match=r"set window_size=\(16, 7, 7\) on the video encoder") as e:
        fit_report(enc, state, "swin_base_patch244_window1677_sthv2.pth")
    assert "relative_position_bias_table: checkpoint (5239, 4) vs encoder (2535, 4)" in str(e.value)


# -- strict loading that explains itself -----------------------------------------------------------
def test_missing_unexpected_and_misshaped_keys_in_one_error(tmp_path):
    state = torchvision_tiny().state_dict()
    del state["features.0.0.norm1.weight"]
    state["features.0.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(SwinCheckpointError) as e:
        create_video_encoder("swin3d_tiny", width=48, num_heads=(1, 2, 4), pretrained=str(path))
    msg = str(e.value)
    assert "\n" not in msg and "torchvision checkpoint" in msg
    assert "missing keys ['stages.0.blocks.0.norm1.weight']" in msg
    assert "unexpected keys ['stages.0.blocks.0.extra.weight']" in msg
    assert "patch_embed.proj.weight: checkpoint (32, 3, 2, 4, 4) vs encoder (48, 3, 2, 4, 4)" in msg
    assert "set width=32 on the video encoder" in msg


@pytest.mark.parametrize("content,match", [
    (b"this is not a checkpoint at all", "is not a PyTorch checkpoint"),
    ({"cls_token": torch.zeros(1, 1, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
     "not a Video Swin checkpoint"),
    ({"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4), "layers.0.blocks.0.norm1.weight": torch.zeros(96)},
     r"image \(2D\) Swin checkpoint"),
    ([torch.zeros(2)], "not a state dict"),
    ({"state_dict": {"x": torch.zeros(1)}, "meta": {"loss": Fraction(1, 3)}},
     "holds Python objects besides tensors"),
], ids=["garbage", "vit", "image_swin", "list", "pickled_objects"])
def test_files_of_another_kind_fail_in_one_line(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(SwinCheckpointError, match=match) as e:
        create_video_encoder("swin3d_tiny", pretrained=str(path))
    assert "\n" not in str(e.value)


def test_a_missing_file_names_the_option():
    with pytest.raises(PretrainedNotFoundError, match="`pretrained`.*never downloads"):
        create_video_encoder("swin3d_tiny", pretrained="/nonexistent/swin_base_patch244_window877_kinetics600_22k.pth")


def test_loaded_parameters_are_known_to_the_optimiser(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision_tiny().state_dict(), path)
    model = create_model("violet_tiny", video={"pretrained": str(path)})
    video = {n for n, _ in model.video_encoder.named_parameters()}
    assert model.video_encoder.is_pretrained
    assert {f"video_encoder.{n}" for n in video - {"mask_token"}} <= model.pretrained_parameter_names()
    assert "video_encoder.mask_token" not in model.pretrained_parameter_names()
    assert not create_video_encoder("swin3d_tiny").pretrained_parameter_names()
    groups = param_groups(model, OptimConfig(lr=1e-4, pretrained_lr_scale=0.1),
                          pretrained=model.pretrained_parameter_names())
    slow = {id(p) for g in groups if g["name"].startswith("pretrained") for p in g["params"]}
    assert all(g["lr"] == pytest.approx(1e-5) for g in groups if g["name"].startswith("pretrained"))
    assert all(id(p) in slow for n, p in model.video_encoder.named_parameters() if n != "mask_token")
    assert id(model.video_encoder.mask_token) not in slow


def test_violet_base_config_names_the_kinetics600_video_swin_b():
    import yaml

    cfg = yaml.safe_load(open("configs/pretrain/violet_base.yaml"))
    video = cfg["model"]["init_args"]["video"]
    assert video["pretrained"].endswith("swin_base_patch244_window877_kinetics600_22k.pth")
