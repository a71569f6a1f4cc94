"""Token-sparse video encoding (vl.models.sparse): token selection, encoding on the kept tokens only, the
pretraining option. Tiny models only."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from vl.models import create_model, create_video_encoder
from vl.models.sparse import TokenSparsity, num_kept, select_tokens
from vl.models.vit_st import FrameSlots, roll_sources

# vit_st_tiny on 2-frame tubelets (the preset's tokens are single frames): the case where a token spans
# frames, padded ones included; (T', H', W') at 4 frames of 32 px
TUBELET = {"tubelet_size": 2}
GRID = (2, 4, 4)
ENCODERS = [
    ("vit_st_tiny", dict(temporal="joint")),
    ("vit_st_tiny", dict(temporal="divided")),
    ("vit_st_tiny", dict(temporal="rolling", roll_ratio=0.5)),
    ("vit_st_tiny", dict(temporal="divided", class_token=True)),
    ("clip_st_tiny", dict()),
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encoder(name: str, **opts):
    torch.manual_seed(0)
    if name.startswith("vit_st"):
        opts = {**TUBELET, **opts}
    return create_video_encoder(name, **opts).eval()


def selection(enc, video, ratio=0.5, method="random", seed=0, frame_mask=None):
    return select_tokens(video, enc.grid, ratio, method, per_frame=enc.token_layout == "per_frame",
                         frame_mask=frame_mask, generator=gen(seed))


# ---- selection ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["random", "tube", "motion"])
@pytest.mark.parametrize("per_frame", [False, True])
def test_selection_counts_and_determinism(method, per_frame):
    video = torch.randn(3, 4, 3, 32, 32)
    drop = select_tokens(video, GRID, 0.25, method, per_frame=per_frame, generator=gen(1))
    assert drop.shape == (3, 32) and drop.dtype == torch.bool
    kept = (~drop).view(3, 2, 16).sum(dim=2)  # (B, T')
    if per_frame or method == "tube":
        assert (kept == num_kept(16, 0.25)).all()
    else:
        assert ((~drop).sum(dim=1) == num_kept(32, 0.25)).all()
    assert torch.equal(drop, select_tokens(video, GRID, 0.25, method, per_frame=per_frame, generator=gen(1)))
    assert not torch.equal(drop, select_tokens(video, GRID, 0.25, method, per_frame=per_frame, generator=gen(2)))
    if method == "tube":
        cells = drop.view(3, 2, 16)
        assert torch.equal(cells[:, 0], cells[:, 1])  # the same spatial cells in every time step


def test_selection_drops_padded_frames_first():
    video = torch.randn(2, 4, 3, 32, 32)
    frame_mask = torch.tensor([[True] * 4, [True, True, False, False]])  # clip 1: time cell 1 is padding
    drop = select_tokens(video, GRID, 0.5, "random", frame_mask=frame_mask, generator=gen(0))
    assert drop.view(2, 2, 16)[1, 1].all() and not drop.view(2, 2, 16)[1, 0].any()  # exactly its real tokens
    more = select_tokens(video, GRID, 0.75, "motion", frame_mask=frame_mask, generator=gen(0))
    assert not more.view(2, 2, 16)[1, 0].any()  # every real token kept before any padded one


def test_selection_rejects_bad_ratio():
    with pytest.raises(ValueError, match="keep_ratio"):
        select_tokens(torch.randn(1, 4, 3, 32, 32), GRID, 0.0)


def moving_square_clip(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A static random background with a bright 8x8 square moving one cell (8 px) right every frame; returns
    the clip (1, 4, 3, 32, 32) and the (1, 32) cells of the grid its motion touches."""
    torch.manual_seed(seed)
    video = torch.randn(1, 1, 3, 32, 32).expand(1, 4, 3, 32, 32).clone() * 0.1
    for t in range(4):
        video[0, t, :, 8:16, 8 * t:8 * t + 8] = 3.0
    moving = torch.zeros(2, 4, 4, dtype=torch.bool)  # (T', H', W'): row 1, cells the square enters or leaves
    moving[0, 1, 0:2] = True  # frames 0-1 (frame 0 compared with frame 1): cells 0 and 1
    moving[1, 1, 1:4] = True  # frames 2-3: cells 1, 2 (2 vs 1) and 2, 3 (3 vs 2)
    return video, moving.flatten()[None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_keeps_the_moving_region(seed):
    video, moving = moving_square_clip(seed)
    ratio = int(moving.sum()) / 32
    drop = select_tokens(video, GRID, ratio, "motion", generator=gen(seed))
    assert torch.equal(~drop, moving)
    # a static clip still varies from draw to draw (the jitter)
    static = video[:, :1].expand(1, 4, 3, 32, 32)
    assert not torch.equal(select_tokens(static, GRID, 0.25, "motion", generator=gen(0)),
                           select_tokens(static, GRID, 0.25, "motion", generator=gen(1)))


# ---- encoding on the kept tokens ------------------------------------------------------------------
def test_joint_equals_the_dense_blocks_on_the_kept_tokens():
    """joint: the encoder on a drop mask = the timm blocks run on a sequence holding only the kept tokens, each
    with its own cell's position embedding."""
    enc = encoder("vit_st_tiny", temporal="joint")
    video = torch.randn(2, 4, 3, 32, 32)
    for method in ("tube", "random"):
        drop = selection(enc, video, 0.25, method)
        x = enc.patch_embed(video).flatten(1, 3) + enc.pos_embed()  # (B, N, D)
        ref = torch.stack([x[b, (~drop[b]).nonzero()[:, 0]] for b in range(2)])  # (B, 8, D)
        for block in enc.blocks:
            ref = Block.forward(block, ref)
        ref = enc.norm(ref)
        out = enc.forward_features(video, drop=drop)
        assert out.shape == (2, 8, enc.embed_dim)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def reference_time_attention(block, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Time attention of a divided block, one cell at a time: x (B, T', K, D), cells (B, T', K) -> each token
    attends to the tokens of its own cell in the time steps that kept it."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for cell in cells[b].unique():
            steps, slots = (cells[b] == cell).nonzero(as_tuple=True)
            seq = x[b, steps, slots][None]  # (1, n, D)
            out[b, steps, slots] = block.attn_t(block.norm_t(seq))[0]
    return out


def test_divided_time_attention_equals_a_per_cell_reference():
    enc = encoder("vit_st_tiny", temporal="divided")
    block = enc.blocks[0]
    video = torch.randn(2, 4, 3, 32, 32)
    drop = selection(enc, video, 0.5, "random")  # different cells in each frame
    cells = (~drop).view(2, 2, 16).nonzero()[:, 2].view(2, 2, 8)  # (B, T', K)
    assert not torch.equal(cells[:, 0], cells[:, 1])
    x = torch.randn(2, 2, 8, enc.embed_dim)
    slots = FrameSlots.from_cells(cells, 16, 0)
    torch.testing.assert_close(block.sparse_time_attention(x, slots, None), reference_time_attention(block, x, cells),
                               rtol=1e-5, atol=1e-5)


def test_divided_tube_equals_the_dense_block_on_the_sub_grid():
    """divided + tube: the general sparse path = the dense divided block on the kept cells' sub-grid."""
    enc = encoder("vit_st_tiny", temporal="divided")
    video = torch.randn(2, 4, 3, 32, 32)
    drop = selection(enc, video, 0.5, "tube")
    cells = (~drop).view(2, 2, 16).nonzero()[:, 2].view(2, 2, 8)
    x = torch.randn(2, 16, enc.embed_dim)
    general = FrameSlots(FrameSlots.from_cells(cells, 16, 0).index, 16, 0, tube=False)
    for block in enc.blocks:
        torch.testing.assert_close(block(x, enc.grid, None, general), block(x, enc.grid, None, None),
                                   rtol=1e-5, atol=1e-5)


def test_rolling_sources_match_a_per_token_reference():
    cells = torch.tensor([[[0, 1, 5, 9], [1, 2, 5, 12]]])  # (1, T'=2, K=4) of 16 cells; fold = int(16*0.5)//2 = 4
    source = roll_sources(FrameSlots.from_cells(cells, 16, 0), 0.5).view(2, 4)
    expected = torch.arange(8).view(2, 4).clone()
    # frame 1 takes cells 0..3 from frame 0 (cyclic: frame 0 from frame 1) and cells 4..7 from the next frame
    expected[1, 0] = 1  # cell 1 of frame 1 <- cell 1 of frame 0 (slot 1)
    expected[0, 1] = 4 + 0  # cell 1 of frame 0 <- frame 1's cell 1 (slot 0): the previous step, cyclically
    expected[0, 2] = 4 + 2  # cell 5 of frame 0 <- frame 1's cell 5 (slot 2): the next step
    expected[1, 2] = 2  # cell 5 of frame 1 <- frame 0's cell 5 (slot 2), next step cyclically
    # frame 1's cell 2 is not kept in frame 0, frame 0's cell 0 not in frame 1: they keep their own
    assert torch.equal(source, expected)


@pytest.mark.parametrize("name,opts", ENCODERS)
def test_kept_tokens_ignore_dropped_pixels_and_pool_over_kept_real_tokens(name, opts):
    enc = encoder(name, **opts)
    video = torch.randn(2, 4, 3, 32, 32)
    frame_mask = torch.tensor([[True] * 4, [True, True, False, False]])  # clip 1: its last two frames are padding
    drop = selection(enc, video, 0.75, "random", frame_mask=frame_mask)  # more kept tokens than clip 1 has real ones
    tokens = enc.forward_features(video, frame_mask=frame_mask, drop=drop)
    keep = enc.token_keep(frame_mask, drop=drop)
    assert keep.shape == tokens.shape[:2] == (2, enc.num_prefix_tokens + int((~drop[0]).sum()))
    # change every pixel under a dropped token: no kept token, and so no pooled embedding, moves
    T, H, W = enc.grid
    tt, ph, pw = enc.token_size
    dropped = drop.view(2, T, 1, H, 1, W, 1).expand(2, T, tt, H, ph, W, pw).reshape(2, 4, 1, 32, 32)
    noisy = torch.where(dropped, torch.randn_like(video) * 5, video)
    torch.testing.assert_close(enc.forward_features(noisy, frame_mask=frame_mask, drop=drop), tokens)
    pooled = enc.pool(tokens, keep)
    torch.testing.assert_close(enc(noisy, frame_mask=frame_mask, drop=drop), pooled)
    # pooling ignores what was dropped and the kept padded tokens: it equals the mean over the kept real ones
    if enc.num_prefix_tokens == 0:
        real = keep[1]
        torch.testing.assert_close(pooled[1], tokens[1, real].mean(dim=0))
        assert not real.all()  # the padded half-step's kept tokens were there and left out


@pytest.mark.parametrize("name,opts", ENCODERS)
def test_full_keep_is_the_dense_path_and_every_parameter_trains(name, opts):
    enc = encoder(name, **opts).train()
    video = torch.randn(2, 4, 3, 32, 32)
    none = torch.zeros(2, enc.num_grid_tokens, dtype=torch.bool)
    torch.testing.assert_close(enc.forward_features(video, drop=none), enc.forward_features(video), rtol=0, atol=0)
    enc(video, drop=selection(enc, video, 0.25, "tube")).sum().backward()
    unused = {"mask_token"}  # the MVM mask token: never used by a token-sparse pass, which drops tokens
    missing = [n for n, p in enc.named_parameters() if p.grad is None and n not in unused]
    assert not missing


def test_per_frame_encoders_refuse_uneven_frames_and_swin_refuses_dropping():
    enc = encoder("vit_st_tiny", temporal="divided")
    video = torch.randn(1, 4, 3, 32, 32)
    uneven = select_tokens(video, enc.grid, 0.5, "random", generator=gen(3))  # any layout: uneven per frame
    if (~uneven).view(1, 2, 16).sum(2).unique().numel() > 1:
        with pytest.raises(ValueError, match="every time step"):
            enc.forward_features(video, drop=uneven)
    swin = encoder("swin3d_tiny")
    with pytest.raises(ValueError, match="windows"):
        swin.forward_features(video, drop=torch.zeros(1, swin.num_grid_tokens, dtype=torch.bool))
    with pytest.raises(ValueError, match="windows"):
        TokenSparsity(0.5).drop_mask(video, None, swin.train(), step=0, max_steps=10)


# ---- the pretraining option -----------------------------------------------------------------------
def test_token_sparsity_schedule_and_eval_is_dense():
    model = create_model("vl_tiny", video={"temporal": "divided", **TUBELET}).train()
    enc = model.video_encoder
    video = torch.randn(2, 4, 3, 32, 32)
    assert TokenSparsity(1.0).drop_mask(video, None, enc, 0, 100) is None
    sparse = TokenSparsity(0.25, "tube", dense_final_steps=10)
    drop = sparse.drop_mask(video, None, enc, step=89, max_steps=100, generator=gen(0))
    assert drop.shape == (2, 32) and int((~drop[0]).sum()) == 2 * num_kept(16, 0.25)
    assert sparse.drop_mask(video, None, enc, step=90, max_steps=100) is None  # the final dense phase
    assert TokenSparsity(0.5, dense_final_steps=0.25).dense_from(100) == 75
    every = TokenSparsity(0.25, "tube", dense_every=4, dense_final_steps=2)
    assert [every.is_sparse(s, 10) for s in range(10)] == [True, True, True, False] * 2 + [False, False]
    assert every.drop_mask(video, None, enc, step=3, max_steps=10) is None
    with pytest.raises(ValueError, match="dense_every"):
        TokenSparsity(0.5, dense_every=-1)
    with pytest.raises(ValueError, match="max_steps"):
        TokenSparsity(0.5, dense_final_steps=0.25).dense_from(None)
    with pytest.raises(ValueError, match="dense_final_steps"):
        TokenSparsity(0.5, dense_final_steps=1.5)
    model.eval()
    assert sparse.drop_mask(video, None, enc, step=0, max_steps=100) is None  # evaluation encodes the full clip


def test_encode_video_with_drop_feeds_the_fusion():
    model = create_model("vl_tiny", video=TUBELET).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    frame_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    drop = select_tokens(video, model.video_encoder.grid, 0.5, "random", frame_mask=frame_mask, generator=gen(0))
    out = model.encode_video(video, frame_mask=frame_mask, drop=drop)
    assert out["tokens"].shape[:2] == out["token_mask"].shape == (2, 16)
    ids, mask = torch.randint(1000, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    fused = model.fuse(out["tokens"], model.encode_text(ids, mask)["tokens"], mask, out["token_mask"])
    assert torch.isfinite(fused["pooled"]).all()
    dense = model.encode_video(video, frame_mask=frame_mask)
    assert dense["tokens"].shape[1] == 32 and "drop" not in dense


@pytest.mark.parametrize("temporal,method", [("joint", "random"), ("divided", "tube"), ("divided", "motion")])
def test_pretraining_step_encodes_the_kept_tokens_once_for_vtc_vtm_mlm(temporal, method):
    """PretrainModule with token_sparsity: one sparse encoding per training step feeds VTC, VTM and MLM (a
    quarter of the grid tokens), every loss is finite and trains the encoder; evaluation is dense."""
    from datapipes.batch import Batch
    from vl.lit.pretrain import Objectives, PretrainModule

    torch.manual_seed(0)
    sparsity = TokenSparsity(keep_ratio=0.25, method=method)
    module = PretrainModule("vl_tiny", video={"temporal": temporal},
                            objectives=Objectives(vtm=1.0, mlm=1.0, mlm_prob=0.5, token_sparsity=sparsity))
    enc = module.model.video_encoder
    calls: list = []
    encode = module.model.encode_video
    module.model.encode_video = lambda *a, **k: calls.append(k.get("drop")) or encode(*a, **k)
    B = 4
    video = torch.randn(B, enc.num_frames, 3, enc.img_size, enc.img_size)
    ids = torch.randint(1000, 2000, (B, 8))
    batch = Batch(video=video, text_ids=ids, text_mask=torch.ones_like(ids), keys=list("abcd"))
    out = module.compute_losses(batch)
    assert {"vtc_loss", "vtm_loss", "mlm_loss"} <= set(out)
    assert len(calls) == 1 and calls[0] is not None  # one encoding, sparse
    N = enc.grid[0] * enc.grid[1] * enc.grid[2]
    per_frame = temporal != "joint"
    kept = num_kept(enc.grid[1] * enc.grid[2], 0.25) * enc.grid[0] if per_frame else num_kept(N, 0.25)
    assert calls[0].shape == (B, N) and ((~calls[0]).sum(1) == kept).all()
    loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    assert torch.isfinite(loss)
    loss.backward()
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0
    module.eval()
    calls.clear()
    module.compute_losses(batch)
    assert calls == [None]  # evaluation encodes the whole clip


def test_pretraining_refuses_sparsity_it_cannot_run():
    """Video Swin cannot drop tokens, and MVM masking scored on the dense pass cannot follow a sparse one: both
    are errors when the module is built."""
    from vl.lit.pretrain import Objectives, PretrainModule
    from vl.objectives.masking import MaskSpec
    from vl.objectives.mvm import MVMConfig

    sparse = TokenSparsity(keep_ratio=0.5)
    with pytest.raises(ValueError, match="swin"):
        PretrainModule("vl_tiny", video={"name": "swin3d_tiny"}, objectives=Objectives(token_sparsity=sparse))
    mvm = MVMConfig(masking=[MaskSpec("attended", 0.3)], decoder_dim=64, decoder_heads=2)
    with pytest.raises(ValueError, match="attended"):
        PretrainModule("vl_tiny", objectives=Objectives(mvm=1.0, mvm_config=mvm, token_sparsity=sparse))


def kept_patch_sums(video: torch.Tensor, drop: torch.Tensor, grid, patch: int) -> list[list[float]]:
    """Per clip, the sorted pixel sums of the kept cells (a tubelet's frames summed, so order within it is moot)."""
    B, (T, H, W) = video.shape[0], grid
    tubelet = video.shape[1] // T
    cells = video.reshape(B, T, tubelet, 3, H, patch, W, patch).sum(dim=(2, 3, 5, 7)).flatten(1)  # (B, N)
    return [sorted(cells[i][~drop[i]].tolist()) for i in range(B)]


@pytest.mark.parametrize("tubelet,padded", [(1, False), (1, True), (2, False)])
def test_reversed_clip_keeps_the_same_content_as_the_clip(tubelet, padded):
    """With reversed-clip negatives and motion-guided sparsity, the backwards pass keeps the cells that hold the
    forward pass's kept content (moved with their frames), so the two differ in frame order only."""
    from datapipes.batch import Batch
    from vl.lit.pretrain import Objectives, PretrainModule

    torch.manual_seed(0)
    sparsity = TokenSparsity(keep_ratio=0.25, method="motion")
    module = PretrainModule("vl_tiny", video={"temporal": "joint", "tubelet_size": tubelet},
                            objectives=Objectives(reversal=1.0, token_sparsity=sparsity))
    enc = module.model.video_encoder
    calls: list = []
    encode = module.model.encode_video
    module.model.encode_video = lambda video, **k: calls.append((video, k.get("drop"))) or encode(video, **k)
    B, T = 3, enc.num_frames
    video = torch.rand(B, T, 3, enc.img_size, enc.img_size)
    frame_mask = None
    if padded:
        frame_mask = torch.ones(B, T, dtype=torch.bool)
        frame_mask[0, 3:] = False  # clip 0: three real frames and one padded
        video[0, 3:] = 0
    ids = torch.randint(1000, 2000, (B, 8))
    batch = Batch(video=video, text_ids=ids, text_mask=torch.ones_like(ids), keys=list("abc"),
                  frame_mask=frame_mask)
    out = module.compute_losses(batch)
    assert torch.isfinite(out["reversal_loss"])
    (forward, drop), (backwards, back_drop) = calls
    assert not torch.equal(forward, backwards) and back_drop is not None
    assert ((~back_drop).sum(1) == (~drop).sum(1)).all()
    patch = enc.img_size // enc.grid[1]
    for back, fwd in zip(kept_patch_sums(backwards, back_drop, enc.grid, patch),
                         kept_patch_sums(forward, drop, enc.grid, patch)):
        assert back == pytest.approx(fwd, rel=1e-5)
