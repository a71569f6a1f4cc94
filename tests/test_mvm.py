"""MVM: targets (shapes and what they measure), the sparse decoder, every target's loss falling on a fixed
batch, clear errors, and MVM as a weighted objective of PretrainModule (its head is optimised)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vl.models import create_model, create_video_encoder
from vl.models.vq_tokenizer import create_vq_tokenizer
from vl.objectives.masking import MaskSpec
from vl.objectives.mvm import MVMConfig, MVMDecoder, MVMLoss, TeacherConfig, VQConfig, build_mvm, build_teacher
from vl.objectives.mvm_targets import FeatureTarget, HOGTarget, PixelTarget, VQTarget, renormalize

B = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and these tiny models run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(model, seed: int = 0):
    """A fixed batch for a tiny model: video (B, 4, 3, 32, 32), text tokens and embeddings of the unmasked pass."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 4, 3, 32, 32, generator=g)
    ids = torch.randint(1000, 2000, (B, 8), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, 8, dtype=torch.long)
    return video, ids, mask


def make_target(name: str, encoder):
    grid, size = encoder.grid, encoder.token_size
    torch.manual_seed(1)
    if name == "pixel":
        return PixelTarget(grid, size)
    if name == "hog":
        return HOGTarget(grid, size)
    if name == "vq":
        return VQTarget(create_vq_tokenizer("fsq_tiny"), grid, size)
    return FeatureTarget(create_video_encoder("vit_st_tiny"), grid)


# -- targets --------------------------------------------------------------------------------------
def test_pixel_targets_are_normalised_per_token_and_pooled_for_wide_tokens():
    video = torch.randn(2, 4, 3, 32, 32) * 3 + 1
    target = PixelTarget((2, 4, 4), (2, 8, 8))(video)  # vit_st_tiny: 2x8x8 tubelets
    assert target.shape == (2, 32, 2 * 8 * 8 * 3)
    per_channel = target.view(2, 32, 128, 3)
    torch.testing.assert_close(per_channel.mean(dim=2), torch.zeros(2, 32, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=2), torch.ones(2, 32, 3), atol=1e-3, rtol=0)
    # The first token holds frames 0-1, rows 0-7, columns 0-7 of channel 0, in (t, y, x) order.
    raw = video[0, 0:2, 0, 0:8, 0:8].flatten()
    torch.testing.assert_close(per_channel[0, 0, :, 0], (raw - raw.mean()) / raw.std(), atol=1e-3, rtol=0)
    wide = PixelTarget((2, 1, 1), (2, 32, 32), max_patch=16)  # a swin3d cell of 32 px is pooled to 16 px
    assert wide.out_dim == 2 * 16 * 16 * 3 and wide(video).shape == (2, 2, wide.out_dim)


def test_hog_targets_vote_for_the_gradient_orientation():
    x = torch.linspace(-1, 1, 32)
    ramp_x = x.view(1, 1, 1, 1, 32).expand(1, 2, 3, 32, 32)  # brightness grows left to right: angle 0
    ramp_y = x.view(1, 1, 1, 32, 1).expand(1, 2, 3, 32, 32)  # top to bottom: angle pi/2
    hog = HOGTarget((1, 4, 4), (2, 8, 8), bins=9)
    for video, bins in ((ramp_x, {0, 8}), (ramp_y, {4})):
        target = hog(video.contiguous()).view(1, 16, 3, 4, 9)  # (B, N, C, cells, bins)
        mass = target.abs().sum(dim=(0, 1, 2, 3))
        assert set((mass > 1e-4 * mass.sum()).nonzero().flatten().tolist()) == bins
    norms = hog(ramp_x.contiguous()).view(1, 16, 3, 36).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_vq_targets_are_the_tokenizer_codes_of_each_frame_on_the_token_grid():
    tokenizer = create_vq_tokenizer("fsq_tiny").eval()
    video = torch.randn(2, 4, 3, 32, 32)
    target = VQTarget(tokenizer, (2, 4, 4), (2, 8, 8))(video)  # (B, N, tt)
    assert target.shape == (2, 32, 2) and target.dtype == torch.long
    codes = tokenizer.encode(video.flatten(0, 1)).view(2, 4, 4, 4)  # (B, T, H', W')
    torch.testing.assert_close(target[1, 5 + 16], codes[1, 2:4, 1, 1])  # token (t'=1, h=1, w=1)
    coarse = VQTarget(tokenizer, (2, 2, 2), (2, 16, 16))(video)  # frames resized to 16 px for a 2x2 grid
    assert coarse.shape == (2, 8, 2) and int(coarse.max()) < tokenizer.codebook_size


def test_feature_targets_resample_the_teacher_to_the_student_grid():
    torch.manual_seed(0)
    teacher = create_video_encoder("vit_st_tiny")
    video = torch.randn(2, 4, 3, 32, 32)
    same = FeatureTarget(teacher, teacher.grid)(video)
    expected = F.layer_norm(teacher.forward_features(video), (teacher.embed_dim,))
    torch.testing.assert_close(same, expected)
    coarse = FeatureTarget(teacher, (2, 2, 2))(video)  # a swin3d_tiny grid
    assert coarse.shape == (2, 8, teacher.embed_dim) and torch.isfinite(coarse).all()


def test_teacher_loads_from_a_vl_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("vl_tiny")
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    teacher = build_teacher(TeacherConfig(encoder={"name": "vit_st_tiny"}, checkpoint=str(path)))
    for name, p in teacher.state_dict().items():
        torch.testing.assert_close(p, model.video_encoder.state_dict()[name])
    assert not any(p.requires_grad for p in teacher.parameters())


def test_open_clip_teacher_from_an_open_clip_weights_file(tmp_path):
    """clip_st with `pretrained` is open_clip's ViT: its image tower loads from an open_clip checkpoint."""
    torch.manual_seed(0)
    source = create_video_encoder("clip_st_tiny")
    path = tmp_path / "open_clip_model.bin"
    torch.save({f"visual.{k}": v for k, v in source.visual.state_dict().items()}, path)
    cfg = MVMConfig(target="feature", teacher=TeacherConfig(encoder={"name": "clip_st_tiny", "pretrained": str(path)},
                                                              norm="clip"))
    mvm = build_mvm(cfg, create_model("vl_tiny", video={"tubelet_size": 2}))  # a student grid the teacher lacks
    teacher = mvm.target.teacher
    torch.testing.assert_close(teacher.visual.conv1.weight, source.visual.conv1.weight)
    video = torch.randn(2, 4, 3, 32, 32)
    target = mvm.target(video)  # teacher grid (4, 4, 4) resampled to the student's (2, 4, 4)
    assert target.shape == (2, 32, teacher.embed_dim) and mvm.target.teacher_norm == "clip"


def test_renormalize_maps_between_data_normalisations():
    pixels = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    out = renormalize((pixels - mean) / std, "imagenet", "clip")
    torch.testing.assert_close(out, (pixels - clip_mean) / clip_std)


# -- decoder --------------------------------------------------------------------------------------
def test_decoder_puts_visible_tokens_back_at_their_positions():
    decoder = MVMDecoder(in_dim=3, num_tokens=6, dim=3, depth=1, heads=1)
    mask = torch.tensor([[True, False, False, True, False, True], [False, True, True, False, False, True]])
    visible = torch.arange(2 * 3 * 3, dtype=torch.float).view(2, 3, 3)  # (B, N_vis, D)
    full = decoder.unshuffle(visible, mask)
    torch.testing.assert_close(full[~mask], visible.reshape(-1, 3))
    torch.testing.assert_close(full[mask], decoder.mask_token.detach().expand(6, 3))


# -- losses fall ------------------------------------------------------------------------------------
CASES = [  # (target, model, source, masking, decoder_depth)
    ("pixel", "vl_tiny", "encoder", [MaskSpec("tube", 0.75)], 1),  # sparse joint encoder + decoder
    ("hog", "vl_tiny", "fusion", [MaskSpec("blockwise", 0.5), MaskSpec("attended", 0.5)], 1),
    ("vq", "violet_tiny", "fusion", [MaskSpec("blockwise", 0.5), MaskSpec("attended", 0.5)], 0),  # VIOLET
    ("feature", "vl_tiny", "encoder", [MaskSpec("text_guided", 0.5), MaskSpec("motion", 0.5)], 1),
]


@pytest.mark.parametrize("target_name,model_name,source,masking,depth", CASES, ids=[c[0] for c in CASES])
def test_every_target_loss_is_finite_and_falls_on_a_fixed_batch(target_name, model_name, source, masking, depth):
    torch.manual_seed(0)
    model = create_model(model_name)
    encoder = model.video_encoder
    in_dim = model.fusion.dim if source == "fusion" else encoder.embed_dim
    mvm = MVMLoss(make_target(target_name, encoder), masking, encoder.grid, in_dim, source, depth, 64, 2)
    video, ids, text_mask = batch(model)
    trainable = [p for p in [*model.parameters(), *mvm.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=0.0)
    losses = []
    for step in range(6):
        text = model.encode_text(ids, text_mask)
        v = model.encode_video(video)
        gen = torch.Generator().manual_seed(0)  # the same masks every step
        out = mvm(model, video, v["tokens"], text["tokens"], text_mask, model.embed_text(text["pooled"]), gen)
        assert torch.isfinite(out["mvm_loss"]), out
        opt.zero_grad()
        out["mvm_loss"].backward()
        if step == 0:
            missing = [n for n, p in mvm.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"MVM parameters without a gradient: {missing}"
        opt.step()
        losses.append(out["mvm_loss"].item())
    assert losses[-1] < 0.9 * losses[0], losses
    if target_name == "vq":
        assert 0.0 <= out["mvm_acc"].item() <= 1.0 and losses[0] == pytest.approx(math.log(1000), rel=0.2)


# -- errors ---------------------------------------------------------------------------------------
def test_sparse_encoding_needs_equal_counts_per_sample():
    model = create_model("vl_tiny")
    enc = model.video_encoder
    mvm = MVMLoss(PixelTarget(enc.grid, enc.token_size), [MaskSpec("tube", 0.5), MaskSpec("random", 0.25)],
                  enc.grid, enc.embed_dim)
    video, ids, text_mask = batch(model)
    text = model.encode_text(ids, text_mask)
    gen = torch.Generator().manual_seed(3)
    with pytest.raises(ValueError, match="same masked count"):
        for _ in range(5):  # some draw mixes both strategies
            mvm(model, video, model.encode_video(video)["tokens"], text["tokens"], text_mask, text["pooled"], gen)


def test_sparse_encoding_without_a_decoder_is_refused():
    model = create_model("vl_tiny")
    enc = model.video_encoder
    mvm = MVMLoss(PixelTarget(enc.grid, enc.token_size), [MaskSpec("tube", 0.5)], enc.grid, enc.embed_dim,
                  decoder_depth=0)
    video, ids, text_mask = batch(model)
    text = model.encode_text(ids, text_mask)
    with pytest.raises(ValueError, match="decoder_depth"):
        mvm(model, video, model.encode_video(video)["tokens"], text["tokens"], text_mask, text["pooled"])


def test_config_errors_name_the_problem():
    model = create_model("clip_tiny")  # cross-attention fusion returns no video tokens
    mvm = build_mvm(MVMConfig(target="pixel", source="fusion", decoder_depth=0), model)
    video, ids, text_mask = batch(model)
    text = model.encode_text(ids, text_mask)
    with pytest.raises(ValueError, match="single_stream"):
        mvm(model, video, model.encode_video(video)["tokens"], text["tokens"], text_mask, text["pooled"])
    with pytest.raises(ValueError, match="vq.path"):
        build_mvm(MVMConfig(target="vq"), model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_mvm(MVMConfig(target="vq", vq=VQConfig(kind="vl", path="/nonexistent.ckpt")), model)


# -- PretrainModule ---------------------------------------------------------------------------------
def test_pretrain_module_adds_weighted_mvm_and_optimises_its_head(synth_dir, tmp_path):
    import lightning.pytorch as pl

    from vl.lit import Objectives, PretrainModule, VideoTextDataModule

    torch.manual_seed(0)
    cfg = MVMConfig(target="pixel", masking=[MaskSpec("blockwise", 0.25), MaskSpec("attended", 0.25)],
                    source="fusion", decoder_dim=64, decoder_heads=2)
    module = PretrainModule(model="vl_tiny", objectives=Objectives(vtc=1.0, mvm=0.5, mvm_config=cfg))
    dm = VideoTextDataModule(root=synth_dir["dir"], val_shards=None, num_frames=4, frame_size=32, batch_size=8,
                             num_workers=0, batches_per_epoch=2, persistent_workers=False, max_text_len=16)
    head_before = module.mvm.head[-1].weight.detach().clone()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert not torch.equal(head_before, module.mvm.head[-1].weight.detach())  # the optimiser holds MVM's head
    batch_ = next(iter(dm.train_dataloader()))
    out = module.compute_losses(batch_)
    assert {"vtc_loss", "mvm_loss", "mvm_ratio"} <= set(out)
    expected = out["vtc_loss"] + 0.5 * out["mvm_loss"]
    torch.testing.assert_close(module.total_loss(out), expected)

    # DDP needs a gradient for every parameter on every step: a step that predicted something uses MVM's
    # decoder and head (nothing anchored); one whose masked tokens all fell on padded frames anchors them all.
    assert module.mvm.predicted and module.sometimes_unused() == []
    module.mvm.predicted = False
    anchored = module.sometimes_unused()
    trainable = [p for p in module.mvm.parameters() if p.requires_grad]
    assert len(anchored) == len(trainable) > 0
    module.zero_grad()
    (0.0 * sum(p.sum() for p in anchored)).backward()
    assert all(p.grad is not None and not p.grad.any() for p in trainable)


# -- precomputed vq targets -----------------------------------------------------------------------
def test_precomputed_vq_targets_match_the_on_the_fly_ones(synth_dir, tmp_path):
    from datapipes.pipeline import ClipConfig, build_eval_loader
    from vl.models.hub import load_tokenizer
    from vl.tools.vq_targets import load_vq_targets, main

    torch.manual_seed(0)
    tokenizer = create_vq_tokenizer("fsq_tiny")
    ckpt = tmp_path / "tok.ckpt"
    torch.save({"vl_tokenizer_config": {"name": "fsq_tiny"},
                "state_dict": {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}}, ckpt)
    out = tmp_path / "vq"
    assert main([synth_dir["test"], "--tokenizer", str(ckpt), "--out", str(out), "--frames", "4", "--size", "32",
                 "--grid", "4", "--quiet"]) == 0
    table = load_vq_targets(str(out / "vq-000000.tar"))
    assert len(table) == 12 and next(iter(table.values())).shape == (4, 4, 4)
    target = VQTarget(tokenizer.eval(), (2, 4, 4), (2, 8, 8), precomputed=table)
    loader = build_eval_loader(synth_dir["test"], load_tokenizer("minilm"), ClipConfig(num_frames=4, size=32),
                               batch_size=12)
    clips = next(iter(loader))
    torch.testing.assert_close(target.compute(clips.video, clips.keys), target(clips.video))
    assert target.compute(clips.video, ["unknown"] * 12).shape == (12, 32, 2)  # missing keys: on the fly


# -- configs --------------------------------------------------------------------------------------
def _parse(*paths: str):
    """Parse (without instantiating) `vl fit -c ...` configs as the CLI does: keys and types checked."""
    import lightning.pytorch as pl

    from vl.lit.cli import VLArgumentParser

    parser = VLArgumentParser(parser_mode="omegaconf", exit_on_error=False)
    parser.add_lightning_class_args(pl.LightningModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(pl.LightningDataModule, "data", subclass_mode=True)
    parser.add_lightning_class_args(pl.Trainer, "trainer")
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_argument("-c", "--config", action="config")
    return parser.parse_args([x for p in paths for x in ("-c", p)])


def test_violet_base_config_is_vtm_mlm_mvm_vq_with_blockwise_and_attended_on_8_gpus():
    cfg = _parse("configs/pretrain/violet_base.yaml")
    objectives = cfg.model.init_args.objectives
    assert (objectives.vtm, objectives.mlm, objectives.mvm) == (1.0, 1.0, 1.0) and objectives.vtc == 0.0
    mvm = objectives.mvm_config
    assert mvm.target == "vq" and mvm.vq.kind == "dalle" and mvm.source == "fusion"
    assert [m.strategy for m in mvm.masking] == ["blockwise", "attended"]
    assert cfg.model.init_args.model == "violet_base" and cfg.data.init_args.num_frames == 4
    t = cfg.trainer
    assert (t.accelerator, t.devices, t.strategy, t.precision, t.use_distributed_sampler) == ("gpu", 8, "ddp", "bf16-mixed", False)


@pytest.mark.parametrize("arm", ["pixel", "hog", "vq", "feature"])
def test_ablation_arm_configs_parse(arm):
    cfg = _parse("configs/ablation/mvm_base.yaml", f"configs/ablation/mvm_{arm}.yaml")
    objectives = cfg.model.init_args.objectives
    assert objectives.mvm == 1.0 and objectives.mvm_config.target == arm and objectives.vtc == objectives.mlm == 1.0
