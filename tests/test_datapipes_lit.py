"""VideoTextDataModule under a real Trainer, SkipCounter metrics and summary, and config parsing."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch

from datapipes import Batch
from vl.lit.data import SkipCounter, VideoTextDataModule


class TinyModule(pl.LightningModule):
    """Just enough model to drive the loops; records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: dict[str, list[str]] = {"train": [], "val": [], "test": []}

    def training_step(self, batch: Batch, batch_idx: int):
        self.seen["train"] += batch.keys
        return self.layer(batch.video.mean((1, 3, 4))).mean()  # (B, C) -> scalar

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.seen["val"] += batch.keys

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.seen["test"] += batch.keys

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[SkipCounter()], **kw)


def test_fit_and_test_log_skips(fault_shards, synth_dir, caplog):
    dm = VideoTextDataModule(
        train_shards=[fault_shards["faults"], synth_dir["train"]], train_weights=[0.5, 0.5],
        val_shards=fault_shards["faults"], test_shards=synth_dir["test"], num_frames=4, frame_size=32,
        batch_size=4, eval_batch_size=3, batches_per_epoch=4, num_workers=2, max_text_len=16,
    )
    model = TinyModule()
    trainer = _trainer(max_epochs=2, num_sanity_val_steps=1)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, dm)
    assert len(model.seen["train"]) == 2 * 4 * 4  # fixed batches per epoch
    assert sorted(set(model.seen["val"])) == ["good0", "good1", "good2", "imageasvideo", "short"]
    metrics = trainer.callback_metrics
    assert metrics["data/skipped/decode_error"] > 0
    assert metrics["data/skipped_val/status_not_success"] == 1  # last validation epoch: each fault once
    assert metrics["data/skipped_val/decode_error"] == 1
    assert "Data pipeline: samples skipped" in caplog.text and "val: 14 skipped" in caplog.text
    trainer.test(model, dm)
    assert sorted(model.seen["test"]) == [f"test{i:07d}" for i in range(12)]


def test_missing_or_bad_shards_fail_at_start(tmp_path):
    with pytest.raises(ValueError, match="train_shards"):
        _trainer(max_steps=1).fit(TinyModule(), VideoTextDataModule(val_shards="x.tar"))
    dm = VideoTextDataModule(train_shards=str(tmp_path / "nope-{000..009}.tar"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="10 of 10 shards do not exist"):
        _trainer(max_steps=1).fit(TinyModule(), dm)


def test_lightning_cli_reads_the_signature(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VideoTextDataModule, "data")
    cfg = parser.parse_args(["--data.train_shards", "a/{000..009}.tar", "--data.crop_scale", "[0.3, 1.0]",
                             "--data.norm", "clip", "--data.train_weights", "[0.7, 0.3]"])
    assert cfg.data.crop_scale == (0.3, 1.0) and cfg.data.norm == "clip" and cfg.data.train_weights == [0.7, 0.3]
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.norm", "laion"])  # wrong value: rejected with the key named
    dm = VideoTextDataModule(**cfg.data.as_dict())
    assert dm.clip_config("train").sampling == "random_segment" and dm.clip_config("val").sampling == "uniform"


def test_root_and_splits_json(synth_dir, tmp_path):
    import os

    root = synth_dir["dir"]
    dm = VideoTextDataModule(root=root, num_workers=0)
    assert dm.shards("train") == os.path.join(root, "train-{000000..000002}.tar")
    assert dm.shards("test") == os.path.join(root, "test-{000000..000000}.tar") and dm.shards("predict") is None
    dm.setup("fit")  # the patterns from splits.json exist
    dm = VideoTextDataModule(root=root, train_shards=["train-000000.tar", "pipe:cat x.tar"], num_workers=0)
    assert dm.shards("train") == [os.path.join(root, "train-000000.tar"), "pipe:cat x.tar"]
    with pytest.raises(ValueError, match="test_shards"):
        VideoTextDataModule(root=str(tmp_path)).setup("test")  # no splits.json there
