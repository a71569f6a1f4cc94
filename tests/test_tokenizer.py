"""Visual tokenizers: FSQ/LFQ encode and decode, codebook statistics, a short `fit` that lowers the
reconstruction error and writes a checkpoint MVM can load, and the DALL-E encoder adapter."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import save_as_dall_e_pickle
from vl.models import dalle
from vl.models.vq_tokenizer import codebook_usage, create_vq_tokenizer, list_vq_tokenizers, load_vq_tokenizer_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and these tiny models run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["fsq_tiny", "lfq_tiny"])
def test_tokenizer_encodes_and_decodes_an_image(name):
    torch.manual_seed(0)
    tokenizer = create_vq_tokenizer(name).eval()
    images = torch.randn(3, 3, 32, 32)
    ids = tokenizer.encode(images)
    assert ids.shape == (3, 4, 4) and ids.dtype == torch.long  # f = 8
    assert 0 <= int(ids.min()) and int(ids.max()) < tokenizer.codebook_size
    recon = tokenizer.decode_ids(ids)
    assert recon.shape == images.shape and torch.isfinite(recon).all()
    out = tokenizer(images)
    torch.testing.assert_close(out["recon"], recon)  # decoding the ids = the forward pass's reconstruction
    assert torch.equal(out["ids"], ids)


def test_registered_sizes():
    assert {"fsq_tiny", "fsq_base", "lfq_tiny", "lfq_base"} <= set(list_vq_tokenizers())
    assert create_vq_tokenizer("fsq_tiny").codebook_size == 1000
    with pytest.raises(ValueError, match="unknown visual tokenizer option"):
        create_vq_tokenizer("fsq_tiny", levelz=(8, 8))


def test_codebook_usage_and_perplexity():
    stats = codebook_usage(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), codebook_size=8)
    assert stats["usage"].item() == pytest.approx(0.5)
    assert stats["perplexity"].item() == pytest.approx(4.0)


def test_short_fit_lowers_reconstruction_error_and_saves_a_loadable_checkpoint(synth_dir, tmp_path):
    import lightning.pytorch as pl

    from vl.lit import VideoTextDataModule
    from vl.lit.optim import OptimConfig
    from vl.lit.vq_tokenizer import VQTokenizerModule

    torch.manual_seed(0)
    module = VQTokenizerModule("fsq_tiny", frames_per_clip=2, grid_images=4,
                             optim=OptimConfig(lr=2e-3, weight_decay=0.0, warmup_steps=2))
    dm = VideoTextDataModule(root=synth_dir["dir"], num_frames=4, frame_size=32, batch_size=8, eval_batch_size=8,
                             num_workers=0, batches_per_epoch=12, persistent_workers=False, max_text_len=16)
    dm.setup("fit")
    fixed = next(iter(dm.val_dataloader())).video.flatten(0, 1)  # (M, C, H, W) validation frames

    def error() -> float:
        with torch.no_grad():
            return module.losses(fixed)["recon_loss"].item()

    before = error()
    trainer = pl.Trainer(accelerator="cpu", max_steps=24, default_root_dir=str(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, logger=pl.loggers.CSVLogger(str(tmp_path), name="logs"),
                         limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=5)
    trainer.fit(module, datamodule=dm)
    assert error() < 0.8 * before
    assert list((tmp_path / "logs").rglob("reconstructions/step_*.png"))  # the grid is in the log directory
    metrics = (next((tmp_path / "logs").rglob("metrics.csv"))).read_text()
    assert "val/codebook_usage" in metrics and "train/recon_loss" in metrics
    ckpt = tmp_path / "tokenizer.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_vq_tokenizer_checkpoint(ckpt)
    assert torch.equal(loaded.encode(fixed), module.vq_tokenizer.eval().encode(fixed))


def test_nonfinite_losses_are_skipped_then_stop_the_run_without_a_nan_checkpoint(synth_dir, tmp_path):
    """The tokenizer trainer has the training safety of every vl module: a NaN loss skips the step (the
    weights stay finite), `max_consecutive_nonfinite` in a row stop the run, and a checkpoint of NaN
    weights is refused."""
    import lightning.pytorch as pl
    import pytest

    from vl.lit import VideoTextDataModule
    from vl.lit.safety import NonFiniteCheckpointError, NonFiniteLossError
    from vl.lit.vq_tokenizer import VQTokenizerModule

    torch.manual_seed(0)
    module = VQTokenizerModule("fsq_tiny", frames_per_clip=1, max_consecutive_nonfinite=3)
    losses = module.losses
    module.losses = lambda images: {**losses(images), "loss": torch.tensor(float("nan"), requires_grad=True)}
    dm = VideoTextDataModule(root=synth_dir["dir"], num_frames=4, frame_size=32, batch_size=4, num_workers=0,
                             batches_per_epoch=8, persistent_workers=False, max_text_len=16)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, default_root_dir=str(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, logger=False, enable_checkpointing=False, limit_val_batches=0)
    before = {k: v.clone() for k, v in module.vq_tokenizer.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit(module, datamodule=dm)
    after = module.vq_tokenizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no skipped step touched the weights
    with torch.no_grad():
        next(module.vq_tokenizer.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteCheckpointError):
        trainer.save_checkpoint(tmp_path / "poisoned.ckpt")
    assert not (tmp_path / "poisoned.ckpt").exists()


def test_dalle_encoder_loads_from_its_pickle_without_the_dall_e_package(tmp_path):
    torch.manual_seed(0)
    encoder = dalle.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=64)
    path = tmp_path / "encoder.pkl"
    save_as_dall_e_pickle(encoder, path)
    assert "dall_e" not in sys.modules
    assert b"dall_e.encoder" in path.read_bytes()
    tokenizer = dalle.DalleTokenizer(str(path), norm="imagenet")
    images = torch.randn(2, 3, 32, 32)
    ids = tokenizer.encode(images)
    assert ids.shape == (2, 4, 4) and tokenizer.codebook_size == 64
    pixels = 0.8 * dalle.unnormalize(images, "imagenet") + 0.1  # DALL-E's map_pixels
    assert torch.equal(ids, encoder(pixels).argmax(dim=1))
    state = tmp_path / "encoder_state.pt"  # a plain state dict loads too, sized from its shapes
    torch.save(encoder.state_dict(), state)
    assert torch.equal(dalle.DalleTokenizer(str(state)).encode(images), ids)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        dalle.DalleTokenizer("/nonexistent/encoder.pkl")
