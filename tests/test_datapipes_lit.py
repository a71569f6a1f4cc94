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


def _keys_and_weights_run(dm_kwargs: dict, tmp, max_steps: int, ckpt_path=None) -> tuple[list, torch.Tensor]:
    """Fit TinyModule (Adam) for `max_steps` with a last.ckpt in `tmp`; returns (keys per step, final weights)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vl.lit.callbacks import SaveLastOnTrainEnd

    class AdamModule(TinyModule):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    pl.seed_everything(0)
    model = AdamModule()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         max_steps=max_steps,
                         callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True), SaveLastOnTrainEnd()])
    trainer.fit(model, VideoTextDataModule(**dm_kwargs), ckpt_path=ckpt_path)
    keys = model.seen["train"]
    return [keys[i:i + 4] for i in range(0, len(keys), 4)], model.layer.weight.detach().clone()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_a_mid_epoch_checkpoint_continues_the_data(synth_dir, tmp_path, num_workers):
    """Stopped after 3 of an epoch's 4 batches (with 2 workers: mid-turn), then resumed: the resumed run
    trains on exactly the batches the uninterrupted run had next, to the same weights."""
    dm = dict(train_shards=synth_dir["train"], num_frames=2, frame_size=32, batch_size=4, batches_per_epoch=4,
              num_workers=num_workers, persistent_workers=False, max_text_len=8, shuffle_buffer=10)
    full_keys, full_weights = _keys_and_weights_run(dm, tmp_path / "full", 6)
    _keys_and_weights_run(dm, tmp_path / "cut", 3)
    resumed_keys, resumed_weights = _keys_and_weights_run(dm, tmp_path / "cut", 6, ckpt_path="last")
    assert len(full_keys) == 6
    assert resumed_keys == full_keys[3:]
    torch.testing.assert_close(resumed_weights, full_weights, rtol=0, atol=1e-6)


def test_loader_resumes_without_decoding_the_batches_it_skips(synth_dir, tokenizer, monkeypatch):
    """A loader given `position(k)` of another yields that loader's batches from k on, and decodes only
    the clips of the batches it yields (plus the one it reads ahead), none of the k skipped batches."""
    import datapipes.process as process  # where the decode path calls decode_clip
    from datapipes.pipeline import ClipConfig, build_train_loader

    cfg = ClipConfig(num_frames=2, size=32, sampling="random_segment", max_text_len=8)
    kwargs = dict(batch_size=3, batches_per_epoch=5, shuffle_buffer=8, seed=3)
    first = build_train_loader(synth_dir["train"], tokenizer, cfg, **kwargs)
    batches = list(first)
    position = first.position(3)
    assert position["epoch"] == 0 and position["batches"] == [3]

    decoded = []
    real_decode = process.decode_clip
    monkeypatch.setattr(process, "decode_clip", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    resumed = build_train_loader(synth_dir["train"], tokenizer, cfg, resume=position, **kwargs)
    rest = list(resumed)
    assert [b.keys for b in rest] == [b.keys for b in batches[3:]]
    for got, want in zip(rest, batches[3:]):  # same crops, frames and captions: per-sample random streams
        assert torch.equal(got.video, want.video) and torch.equal(got.text_ids, want.text_ids)
    assert len(decoded) <= 2 * 3 + 1
    assert resumed.position(5)["batches"] == [5]
    assert [b.keys for b in resumed] != [b.keys for b in batches]  # the next epoch: a new stream


def test_training_cpu_time_counts_training_batches_and_leaves_out_validation(synth_dir, monkeypatch):
    """vl.lit.TrainingCPUTime logs, at each validation, the process time of the training batches so far: on a
    clock that ticks once per reading, the intervals from batch end to batch end (and from an epoch's start
    to its first batch end), never the time of a validation."""
    from vl.lit.callbacks import TrainingCPUTime

    clock = iter(range(1000))
    monkeypatch.setattr(TrainingCPUTime, "_now", staticmethod(lambda: float(next(clock))))

    class Logged(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.values: list[float] = []

        def validation_step(self, batch, batch_idx):
            for _ in range(5):  # validation takes time on the same clock: none of it may be counted
                next(clock)
            return super().validation_step(batch, batch_idx)

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.values.append(timer.cpu_s)

    timer = TrainingCPUTime()
    dm = VideoTextDataModule(train_shards=synth_dir["train"], val_shards=synth_dir["val"], num_frames=2,
                             frame_size=32, batch_size=4, eval_batch_size=12, batches_per_epoch=3, num_workers=0,
                             max_text_len=8)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=2,
                         num_sanity_val_steps=0, callbacks=[timer])
    model = Logged()
    trainer.fit(model, dm)
    assert model.values == [3.0, 6.0]  # 3 batches of one tick per epoch, validations left out
    assert trainer.logged_metrics["time/train_cpu_s"] == 6.0
    restored = TrainingCPUTime()
    restored.load_state_dict(timer.state_dict())
    assert restored.cpu_s == 6.0
