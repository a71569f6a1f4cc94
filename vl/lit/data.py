"""Lightning wrapper of the ``datapipes`` pipelines: ``VideoTextDataModule`` and the ``SkipCounter`` callback.

The DataModule holds no model code: it turns typed config (what LightningCLI reads from YAML) into the
train/val/test DataLoaders of ``datapipes.pipeline``. ``SkipCounter`` sums the per-worker skip counts
that ride in ``Batch.skipped``, logs them as ``data/skipped/<reason>`` and prints a summary at the end.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datapipes.batch import Batch
from datapipes.pipeline import (
    SKIP_REASONS,
    ClipConfig,
    EpochDataLoader,
    build_eval_loader,
    build_train_loader,
    resolve_datasets,
)
from datapipes.text import Tokenize

ShardArg = Optional[Union[str, list[str]]]


class VideoTextDataModule(pl.LightningDataModule):
    """Video-text WebDataset shards (DESIGN §2) -> ``datapipes.Batch`` loaders for every stage.

    Args:
        root: folder that relative shard specs are relative to. A split whose shards are not given
            takes its pattern from ``root/splits.json`` when there is one (``vl data synth`` writes it).
        train_shards: training shards: a spec (path, brace pattern ``a/{000..009}.tar``, glob, URL,
            ``pipe:cmd``) or a list; with ``train_weights`` each list entry is one dataset.
        val_shards, test_shards, predict_shards: evaluation shards, every sample read once (``vl predict``
            embeds the clips and captions of ``predict_shards``).
        predict_videos: video files whose clip embeddings ``vl predict`` writes: a folder (every video
            file under it), a video file or a glob of them, read and keyed as ``vl index`` reads them.
        predict_texts: a UTF-8 text file, one caption per line, whose text embeddings ``vl predict`` writes.
        train_weights: sampling weight per training dataset, e.g. ``[0.7, 0.3]``.
        tokenizer: text tokenizer: ``minilm`` (packaged) or a local Hugging Face directory.
        max_text_len: tokens per text row (padded).
        num_frames: frames per clip; shorter clips are padded and marked in ``Batch.frame_mask``.
        frame_size: frames are ``frame_size x frame_size``.
        decode_short_side: shorter side the decoder resizes to before cropping (default: ``frame_size``).
        train_sampling, val_sampling, test_sampling: ``uniform``, ``random_segment`` or ``fps``.
        sample_fps: frame rate of ``fps`` sampling.
        norm: normalisation statistics of the model's image encoder: ``imagenet`` or ``clip``.
        backend: first video decoder (``decord`` or ``pyav``); the other is the fallback.
        text_field: ``caption`` (video-text), ``qa`` (open-ended QA) or ``mc`` (multiple choice).
        crop_scale: area range of the training random-resized-crop.
        hflip: training flip probability; keep 0 when captions say "left"/"right".
        color_jitter: training brightness/contrast/saturation strength.
        allow_images: read jpg/png/webp samples as 1-frame clips (else skip them as ``not_a_video``).
        batch_size: training clips per batch (per rank).
        eval_batch_size: evaluation clips per batch (default: ``batch_size``).
        num_workers: DataLoader workers per rank.
        persistent_workers: keep workers alive between epochs.
        pin_memory: pin batches (only when CUDA is available).
        batches_per_epoch: training batches per epoch and rank, the same on every rank so DDP ranks
            stay in step (rounded up to a multiple of ``num_workers``).
        shuffle_buffer: samples in the training shuffle buffer of each worker.
        seed: seed of shard resampling, shuffling, frame sampling and augmentation.
        max_consecutive_skips: training stops with an error after this many unusable samples in a row.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        train_shards: ShardArg = None,
        val_shards: ShardArg = None,
        test_shards: ShardArg = None,
        predict_shards: ShardArg = None,
        predict_videos: Optional[str] = None,
        predict_texts: Optional[str] = None,
        train_weights: Optional[list[float]] = None,
        tokenizer: str = "minilm",
        max_text_len: int = 32,
        num_frames: int = 8,
        frame_size: int = 224,
        decode_short_side: Optional[int] = None,
        train_sampling: Literal["uniform", "random_segment", "fps"] = "random_segment",
        val_sampling: Literal["uniform", "random_segment", "fps"] = "uniform",
        test_sampling: Literal["uniform", "random_segment", "fps"] = "uniform",
        sample_fps: float = 2.0,
        norm: Literal["imagenet", "clip"] = "imagenet",
        backend: Literal["decord", "pyav"] = "decord",
        text_field: Literal["caption", "qa", "mc"] = "caption",
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.0,
        color_jitter: float = 0.0,
        allow_images: bool = True,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        persistent_workers: bool = True,
        pin_memory: bool = True,
        batches_per_epoch: int = 1000,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        max_consecutive_skips: int = 10_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._tokenizer = None
        self._train_loader: Optional[EpochDataLoader] = None
        self._resume: Optional[dict] = None  # the data position of the checkpoint being resumed
        self._predict_files = None  # the VideoFileBatches of predict_videos in the last predict run
        # Each worker yields a fixed number of batches, so the loader's length is exact.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        # The training loader resumes mid-epoch through this module's state_dict, which Lightning's check
        # (a `state_dict` on the loader itself) does not see.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")

    def shards(self, split: Literal["train", "val", "test", "predict"]) -> ShardArg:
        """The shard spec of ``split``: as given (relative paths under ``root``), else from ``root/splits.json``."""
        spec = self.hparams[f"{split}_shards"]
        root = self.hparams.root
        if spec is None and root is not None and split != "predict":
            index = os.path.join(root, "splits.json")
            if os.path.exists(index):
                with open(index) as f:
                    entry = json.load(f).get("splits", {}).get(split)
                spec = entry["pattern"] if entry else None
        if spec is None or root is None:
            return spec
        specs = [spec] if isinstance(spec, str) else list(spec)
        joined = [s if "://" in s or s.startswith("pipe:") else os.path.join(root, s) for s in specs]
        return joined[0] if isinstance(spec, str) else joined

    def clip_config(self, stage: Literal["train", "val", "test"]) -> ClipConfig:
        """The decode/augment/text settings of one stage."""
        h = self.hparams
        sampling = {"train": h.train_sampling, "val": h.val_sampling, "test": h.test_sampling}[stage]
        return ClipConfig(
            num_frames=h.num_frames, size=h.frame_size, short_side=h.decode_short_side, sampling=sampling,
            sample_fps=h.sample_fps,
            backend=h.backend, allow_images=h.allow_images, norm=h.norm, crop_scale=tuple(h.crop_scale),
            hflip=h.hflip, color_jitter=h.color_jitter, text_field=h.text_field, max_text_len=h.max_text_len,
        )

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer named by ``tokenizer`` (loaded once, offline)."""
        if self._tokenizer is None:
            from vl.models.hub import load_tokenizer

            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        """Check the shard lists of ``stage`` now, so a bad path fails at start with a clear message."""
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        h = self.hparams
        if stage == "predict" and (h.predict_texts is not None or h.predict_videos is not None):
            if h.predict_texts is not None and not os.path.isfile(h.predict_texts):
                raise FileNotFoundError(f"data.init_args.predict_texts: no file {h.predict_texts}")
            if h.predict_videos is not None:
                from vl.search.sources import find_units

                if not any(c in h.predict_videos for c in "*?[") and not os.path.exists(h.predict_videos):
                    raise FileNotFoundError(f"data.init_args.predict_videos: no folder or file {h.predict_videos}")
                find_units([h.predict_videos])  # a folder without videos, or a non-video file, fails now
            if self.shards("predict") is None:
                return
        for split in splits.get(stage, []):
            spec = self.shards(split)
            if spec is None and split == "val" and stage == "fit":
                continue  # fitting without validation
            if spec is None and stage == "predict":
                raise ValueError("`predict` needs data.init_args.predict_shards (clips and their captions), "
                                 "predict_videos (a folder of videos) or predict_texts (a text file, one caption "
                                 "per line)")
            if spec is None:
                raise ValueError(f"`{stage}` needs data.init_args.{split}_shards (a path, brace pattern or URL "
                                 f"of shards) or a root with a splits.json")
            resolve_datasets(spec, self.hparams.train_weights if split == "train" else None)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        from datapipes.shards import dist_info

        return dist_info()

    def _loader_kwargs(self) -> dict:
        h = self.hparams
        return dict(num_workers=h.num_workers, persistent_workers=h.persistent_workers,
                    pin_memory=h.pin_memory and torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        rank, _ = self._rank_world()
        trainer = self.trainer
        resume, self._resume = self._resume, None
        self._train_loader = build_train_loader(
            self.shards("train"), self.tokenizer, self.clip_config("train"), batch_size=h.batch_size,
            batches_per_epoch=h.batches_per_epoch, weights=h.train_weights, shuffle_buffer=h.shuffle_buffer,
            seed=h.seed, rank=rank, max_consecutive_skips=h.max_consecutive_skips, resume=resume,
            **self._loader_kwargs(),
        )
        if trainer is not None:  # epochs as the fit loop counts them, restored ones included
            self._train_loader.epoch_fn = lambda: trainer.current_epoch
        return self._train_loader

    def state_dict(self) -> dict:
        """The training data position, saved in every checkpoint: ``{"train_position": ...}``.

        It is the loader's position after the batches of the current epoch that the fit loop has run
        (``batch_progress.current.processed``), not after those its workers have already prefetched,
        so that a run resumed from a mid-epoch checkpoint continues with the very next batch.
        """
        trainer, loader = self.trainer, self._train_loader
        if trainer is None or loader is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        position = loader.position(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if position is None or position["epoch"] != trainer.current_epoch:
            return {}
        return {"train_position": position}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from the checkpoint's data position: the training loader's next epoch starts there when
        it is the checkpoint's epoch. Lightning may have built the loader already (to count the steps of
        the LR schedule); its epochs start lazily, so setting the position on it still takes effect."""
        position = state_dict.get("train_position")
        if self._train_loader is not None:
            self._train_loader.resume = position
        else:
            self._resume = position

    def _eval_loader(self, shards: ShardArg, stage: Literal["val", "test"]) -> DataLoader:
        h = self.hparams
        rank, world = self._rank_world()
        return build_eval_loader(shards, self.tokenizer, self.clip_config(stage),
                                 batch_size=h.eval_batch_size or h.batch_size, rank=rank, world_size=world,
                                 **self._loader_kwargs())

    def val_dataloader(self) -> Union[DataLoader, list]:
        spec = self.shards("val")
        return self._eval_loader(spec, "val") if spec is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.shards("test"), "test")

    def predict_dataloader(self) -> list[DataLoader]:
        """The clips of ``predict_shards`` (test-time sampling), the video files of ``predict_videos`` and the
        lines of ``predict_texts``, each given."""
        loaders = []
        if self.shards("predict") is not None:
            loaders.append(self._eval_loader(self.shards("predict"), "test"))
        if self.hparams.predict_videos is not None:
            from vl.lit.predict import VideoFileBatches

            h = self.hparams
            self._predict_files = VideoFileBatches(h.predict_videos, self.clip_config("test"),
                                                   h.eval_batch_size or h.batch_size, h.max_text_len)
            loaders.append(DataLoader(self._predict_files, batch_size=None, num_workers=0))
        if self.hparams.predict_texts is not None:
            h = self.hparams
            batches = caption_batches(h.predict_texts, Tokenize(self.tokenizer, h.max_text_len),
                                      h.eval_batch_size or h.batch_size)
            loaders.append(DataLoader(batches, batch_size=None))
        return loaders


    @property
    def predict_skipped(self) -> Optional[list[dict]]:
        """The files of ``predict_videos`` that gave no clip in the last predict run (None: none read)."""
        return None if self._predict_files is None else list(self._predict_files.skipped)


def caption_batches(path: str, tokenize: Tokenize, batch_size: int) -> list[Batch]:
    """The non-empty lines of the text file ``path`` as text-only ``Batch``es (no clips: ``video`` (0, 0, 0, 0, 0))
    of ``batch_size`` captions each."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"data.init_args.predict_texts: {path} has no caption (one caption per line)")
    batches = []
    for i in range(0, len(lines), batch_size):
        ids, mask = tokenize(lines[i: i + batch_size])  # (n, L) each
        batches.append(Batch(video=torch.zeros(0, 0, 0, 0, 0), text_ids=ids, text_mask=mask, keys=[],
                             texts=lines[i: i + batch_size]))
    return batches


class SkipCounter(pl.Callback):
    """Logs the samples the data pipeline skipped, by reason, and prints a summary at the end.

    Training: running totals of this rank as ``data/skipped/<reason>`` at every step. Validation and
    test: totals over all ranks for the epoch as ``data/skipped_val/<reason>`` (``_test``). The summary
    sums every rank.
    """

    def __init__(self) -> None:
        super().__init__()
        self.totals: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
        self._epoch: dict[str, int] = {}

    @staticmethod
    def _add(into: dict[str, int], skipped: Optional[dict]) -> bool:
        for reason, n in (skipped or {}).items():
            into[reason] = into.get(reason, 0) + int(n)
        return bool(skipped)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._add(self.totals["train"], getattr(batch, "skipped", None)) or batch_idx == 0:
            for reason, n in self.totals["train"].items():
                pl_module.log(f"data/skipped/{reason}", float(n), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._add(self._epoch, getattr(batch, "skipped", None))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(self._epoch, getattr(batch, "skipped", None))

    def _reduce(self, trainer, pl_module, counts: dict[str, int]) -> dict[str, int]:
        """Sum counts over ranks (a collective every rank runs) over a fixed list of reasons."""
        names = list(SKIP_REASONS) + ["other"]
        vec = torch.zeros(len(names), dtype=torch.float64, device=pl_module.device)
        for reason, n in counts.items():
            vec[names.index(reason) if reason in names else -1] += n
        vec = trainer.strategy.reduce(vec, reduce_op="sum")
        return {name: int(v) for name, v in zip(names, vec.tolist()) if v > 0}

    def _end_eval_epoch(self, trainer, pl_module, stage: str) -> None:
        counts, self._epoch = self._epoch, {}
        if trainer.sanity_checking:
            return
        counts = self._reduce(trainer, pl_module, counts)
        self._add(self.totals[stage], counts)
        for reason, n in counts.items():
            pl_module.log(f"data/skipped_{stage}/{reason}", float(n), on_epoch=True, batch_size=1)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end_eval_epoch(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end_eval_epoch(trainer, pl_module, "test")

    def on_fit_end(self, trainer, pl_module) -> None:
        train = self._reduce(trainer, pl_module, self.totals["train"])
        self._summarise({"train": train, "val": self.totals["val"]})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._summarise({"val": self.totals["val"]})

    def on_test_end(self, trainer, pl_module) -> None:
        self._summarise({"test": self.totals["test"]})

    @staticmethod
    def _summarise(by_stage: dict[str, dict[str, int]]) -> None:
        lines = []
        from datapipes.pipeline import KEPT_REASONS  # counted but kept (padded_clip): not in the skipped total

        for stage, counts in by_stage.items():
            kept = {r: n for r, n in counts.items() if r in KEPT_REASONS}
            counts = {r: n for r, n in counts.items() if r not in KEPT_REASONS}
            detail = ", ".join(f"{r}={n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"  {stage}: {sum(counts.values())} skipped" + (f" ({detail})" if detail else "")
                         + "".join(f"; {n} kept as {r}" for r, n in kept.items()))
        rank_zero_info("Data pipeline: samples skipped (all ranks)\n" + "\n".join(lines))
