"""Callbacks every vl run uses."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
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
        self._validated = False  # a validation (not the sanity check) ran in this fit
        self._noted = False  # the "no validation ran" line was printed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._noted = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

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
            trainer.save_checkpoint(path, weights_only=False)  # explicit: Lightning logs a notice otherwise
            cb.last_model_path = path
            self._saved_at[path] = trainer.global_step
            rank_zero_info(f"saved {path} at step {trainer.global_step}")
        self._note_unranked(trainer)

    def _note_unranked(self, trainer: pl.Trainer) -> None:
        """One line when the run ended before its first validation: the checkpoints ranked by a validation
        metric (``best-*``) cannot exist yet, and Lightning's "could not find the monitored key" warning,
        which vl filters for this case only, would have said so as if a key were misspelled."""
        if self._validated or self._noted:
            return
        self._noted = True
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and cb.save_top_k != 0:
                rank_zero_info(f"no validation ran before step {trainer.global_step}, so no checkpoint ranked by "
                               f"{cb.monitor} was saved (only last.ckpt)")
                return


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


class TrainingCPUTime(pl.Callback):
    """Logs ``time/train_cpu_s``, the CPU seconds (user + system) this process has spent training so far, at
    every validation, next to the validation metrics: runs compared by quality per CPU second (token
    sparsity against dense, one recipe against another) on a machine shared with other jobs, whose wall
    clock would count their load. Counted from the end of one training batch to the end of the next, so it
    holds the loading of each batch when it happens in this process (``num_workers: 0``; a worker process's
    decoding is not counted) and leaves out validation and checkpointing."""

    def __init__(self) -> None:
        self.cpu_s = 0.0  # CPU seconds spent training so far (restored with the checkpoint)
        self._mark: Optional[float] = None  # process time when the current training interval started

    @staticmethod
    def _now() -> float:
        return time.process_time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = self._now()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self._now()
        if self._mark is not None:
            self.cpu_s += now - self._mark
        self._mark = now

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = None  # validation is not training time

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = self._now()  # a validation inside an epoch: training goes on from here

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("time/train_cpu_s", self.cpu_s, sync_dist=False)

    def state_dict(self) -> dict[str, float]:
        return {"cpu_s": self.cpu_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cpu_s = float(state_dict.get("cpu_s", 0.0))


class VLProgressBar(RichProgressBar):
    """Lightning's rich progress bar with totals (and so time left) where vl knows them.

    - Evaluation over shards: WebDataset loaders have no length, so Lightning shows ``4/--``. When the
      data module's shards are local tars, their samples are counted from the tar headers and the bar's
      total is the batches this rank will get (``eval_batches``). Only the bar uses it: evaluation still
      reads every sample, whatever the count.
    - Runs bounded by ``max_steps`` (``max_epochs`` -1): the epoch is shown as ``Epoch 0``, not ``Epoch 0/-2``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._eval_totals: dict[str, Optional[int]] = {}  # split -> counted batches (None: unknown)

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}".ljust(len(self.validation_description))
        return super()._get_train_description(current_epoch)

    def _counted(self, split: str, lightning_total: Union[int, float]) -> Union[int, float]:
        if lightning_total != float("inf"):
            return lightning_total
        if split not in self._eval_totals:
            self._eval_totals[split] = eval_batches(self.trainer, split)
        counted = self._eval_totals[split]
        return lightning_total if counted is None else counted

    @property
    def total_val_batches_current_dataloader(self) -> Union[int, float]:
        return self._counted("val", super().total_val_batches_current_dataloader)

    @property
    def total_test_batches_current_dataloader(self) -> Union[int, float]:
        return self._counted("test", super().total_test_batches_current_dataloader)

    @property
    def total_predict_batches_current_dataloader(self) -> Union[int, float]:
        return self._counted("predict", super().total_predict_batches_current_dataloader)


def eval_batches(trainer: pl.Trainer, split: str) -> Optional[int]:
    """The batches this rank's evaluation loader of ``split`` yields when no sample is skipped, from the
    samples counted in the data module's shards; None when unknown (remote or compressed shards, a data
    module without ``shards(split)``, QA data whose samples are questions, one loader per split not given).

    It mirrors how ``datapipes.shards.SplitShards`` shares the shards: whole shards per rank and worker when
    there are enough, else every n-th sample; each worker batches its share, the last batch partial.
    """
    from datapipes.shards import count_samples, expand_shards

    dm = trainer.datamodule
    hparams = getattr(dm, "hparams", None)
    if dm is None or not hasattr(dm, "shards") or hparams is None or hparams.get("text_field", "caption") != "caption":
        return None
    spec = dm.shards(split)
    if not spec:
        return None
    try:
        urls = [u for s in ([spec] if isinstance(spec, str) else spec) for u in expand_shards(s, check_local=False)]
    except (ValueError, OSError):
        return None  # the loader reports a bad shard list itself
    counts = count_samples(urls)
    if counts is None:
        return None
    batch_size = hparams.get("eval_batch_size") or hparams.get("batch_size")
    if not batch_size:
        return None
    rank, world, workers = trainer.global_rank, trainer.world_size, max(1, int(hparams.get("num_workers", 0)))
    media = [c.media for c in counts]
    if len(urls) >= world * workers:  # whole shards: this rank's, then each worker's
        shares = [sum(media[rank::world][w::workers]) for w in range(workers)]
    else:  # every worker reads every shard and keeps every n-th sample
        total, step = sum(media), world * workers
        shares = [max(0, (total - (rank * workers + w) + step - 1) // step) for w in range(workers)]
    return sum(math.ceil(n / batch_size) for n in shares)
