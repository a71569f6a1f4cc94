"""Callbacks every vl run uses."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class SaveLastOnTrainEnd(pl.Callback):
    """Writes `last.ckpt` when fitting stops, so a run ended by `max_steps`/`max_time` resumes where it stopped.

    Lightning's ModelCheckpoint updates `last.ckpt` only after validation (or at an epoch end); a run that
    stops between two of those would otherwise resume from an older step with `--ckpt_path last`.
    A run stopped inside an epoch (`max_steps`, `max_time`) is saved at that epoch's end hook, before
    Lightning counts the cut epoch as completed: saved later, the checkpoint would resume in the next
    epoch and repeat batches (and their logged steps) instead of finishing the cut one.
    """

    def __init__(self) -> None:
        self._saved_at: dict[str, int] = {}  # last.ckpt path -> global step this callback saved it at

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches:
            self.on_train_end(trainer, pl_module)  # the epoch was cut short: the run is stopping

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or not cb.dirpath:
                continue
            path = os.path.join(cb.dirpath, f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
            if cb.last_model_path == path and trainer.global_step in (
                    getattr(cb, "_last_global_step_saved", -1), self._saved_at.get(path)):
                continue  # already saved at this step
            trainer.save_checkpoint(path)
            cb.last_model_path = path
            self._saved_at[path] = trainer.global_step
            rank_zero_info(f"saved {path} at step {trainer.global_step}")


class CPUThreads(pl.Callback):
    """Sets the number of torch CPU threads of the training process when the run starts.

    On a small CPU machine the DataLoader workers decode video on the same cores as the model's
    intra-op threads; more threads than free cores makes OpenMP spin and slows every matmul (3x on
    2 cores with one worker busy). `num_threads: 1` with one worker suits a 2-core machine.
    """

    def __init__(self, num_threads: int) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch

        torch.set_num_threads(self.num_threads)
