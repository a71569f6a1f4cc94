"""VQTokenizerModule: trains a visual tokenizer (the ``vq`` target of MVM) on the frames of video shards.

    vl fit -c configs/vq_tokenizer/fsq_tiny.yaml --data.init_args.root data/synth

Each training clip gives ``frames_per_clip`` random frames; the loss is the reconstruction error
(MSE on normalised pixels) plus the quantizer's auxiliary loss (LFQ's entropy term; none for FSQ).
Logged: ``train|val/recon_loss``, ``train|val/codebook_usage`` (share of codes used, over the batch in
training and over the whole epoch in validation) and ``perplexity``. After each validation a grid of
originals (top row) over reconstructions (bottom row) is saved as
``<log dir>/reconstructions/step_<N>.png``. Checkpoints carry ``vl_vq_tokenizer_config``, which
``vl.models.vq_tokenizer.load_vq_tokenizer_checkpoint`` reads to rebuild the frozen tokenizer for MVM.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from datapipes.batch import Batch
from vl.lit.optim import OptimConfig, build_optimizer
from vl.lit.safety import NonFiniteGuard
from vl.models.dalle import unnormalize
from vl.models.vq_tokenizer import CHECKPOINT_CONFIG_KEYS, codebook_usage, create_vq_tokenizer


class VQTokenizerModule(pl.LightningModule):
    """Wires a ``VisualTokenizer`` (``visual_tokenizer`` size name + ``options``), its loss and the optimiser.

    Args:
        visual_tokenizer: a registered size (``fsq_tiny``, ``fsq_base``, ``lfq_tiny``, ``lfq_base``).
        options: overrides of that size (``levels``, ``width``, ``norm``, ...).
        frames_per_clip: random frames of each training clip used as images (all frames in validation).
        recon_loss: ``mse`` or ``l1`` on normalised pixels.
        grid_images: images in the saved reconstruction grid.
        optim: optimiser and schedule.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss or gradient.

    Not a ``VLModule``: it trains no video-language backbone. It shares that base's training safety
    (``NonFiniteGuard``): a step with a non-finite loss or gradient is skipped and counted, too many in a
    row stop the run naming the checkpoint to go back to, and a checkpoint is never written from NaN weights.
    """

    def __init__(self, visual_tokenizer: str = "fsq_tiny", options: Optional[dict[str, Any]] = None,
                 frames_per_clip: int = 2, recon_loss: Literal["mse", "l1"] = "mse", grid_images: int = 8,
                 optim: OptimConfig = OptimConfig(), max_consecutive_nonfinite: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = {"name": visual_tokenizer, **(options or {})}
        self.vq_tokenizer = create_vq_tokenizer(visual_tokenizer, **(options or {}))
        self.optim = optim
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self._val_counts: Optional[Tensor] = None
        self._val_images: Optional[Tensor] = None

    def frames(self, video: Tensor, train: bool) -> Tensor:
        """video (B, T, C, H, W) -> images (M, C, H, W): ``frames_per_clip`` random frames per clip, or all."""
        B, T = video.shape[:2]
        if not train or self.hparams.frames_per_clip >= T:
            return video.flatten(0, 1)  # (B*T, C, H, W)
        index = torch.rand(B, T, device=video.device).argsort(dim=1)[:, : self.hparams.frames_per_clip]  # (B, k)
        picked = video[torch.arange(B, device=video.device)[:, None], index]  # (B, k, C, H, W)
        return picked.flatten(0, 1)

    def losses(self, images: Tensor) -> dict[str, Tensor]:
        """images (M, C, H, W) -> ``loss``, ``recon_loss``, ``aux_loss`` and the ``recon`` and ``ids`` tensors."""
        out = self.vq_tokenizer(images)
        error = F.mse_loss if self.hparams.recon_loss == "mse" else F.l1_loss
        recon_loss = error(out["recon"].float(), images.float())
        return {"loss": recon_loss + out["aux_loss"], "recon_loss": recon_loss, "aux_loss": out["aux_loss"],
                "recon": out["recon"], "ids": out["ids"]}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.losses(self.frames(batch.video, train=True))
        parts = {"recon_loss": out["recon_loss"], "aux_loss": out["aux_loss"]}
        if not self.guard.check(out["loss"], parts, self.trainer):
            self.log("train/nonfinite_steps", float(self.guard.total), batch_size=batch.batch_size)
            return None  # skip this optimiser step (all ranks agree, see NonFiniteGuard)
        usage = codebook_usage(out["ids"], self.vq_tokenizer.codebook_size)
        logs = {"train/loss": out["loss"], "train/recon_loss": out["recon_loss"], "train/aux_loss": out["aux_loss"],
                "train/codebook_usage": usage["usage"], "train/perplexity": usage["perplexity"]}
        self.log_dict({k: v.detach() for k, v in logs.items()}, batch_size=batch.batch_size)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False, batch_size=batch.batch_size)
        return out["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradients are not finite: a NaN from backward never reaches the weights."""
        if not self.guard.check_gradients(optimizer, self.trainer, self):
            self.log("train/nonfinite_steps", float(self.guard.total))

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.vq_tokenizer.codebook_size, device=self.device)
        self._val_images = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images = self.frames(batch.video, train=False)
        out = self.losses(images)
        self.log("val/recon_loss", out["recon_loss"], batch_size=batch.batch_size, sync_dist=True)
        self._val_counts += torch.bincount(out["ids"].flatten(), minlength=self.vq_tokenizer.codebook_size).float()
        if self._val_images is None:
            n = self.hparams.grid_images
            self._val_images = torch.stack([images[:n], out["recon"][:n].detach()]).cpu()  # (2, n, C, H, W)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        probs = counts / counts.sum().clamp(min=1.0)
        usage = (counts > 0).float().mean()
        perplexity = (-(probs * probs.clamp(min=1e-12).log()).sum()).exp()
        self.log_dict({"val/codebook_usage": usage, "val/perplexity": perplexity}, rank_zero_only=True)
        if self._val_images is not None and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            path = self.save_grid(self._val_images)
            rank_zero_info(f"tokenizer: codebook usage {usage:.1%}, perplexity {perplexity:.0f}; "
                           f"reconstructions: {path}")

    def save_grid(self, pairs: Tensor) -> str:
        """pairs (2, n, C, H, W) normalised -> a PNG of originals over reconstructions in the log directory."""
        from torchvision.utils import save_image

        norm = getattr(self.vq_tokenizer, "norm", "imagenet")
        images = unnormalize(pairs.flatten(0, 1).float(), norm)  # (2n, C, H, W) in [0, 1]
        folder = os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "reconstructions")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{self.global_step:06d}.png")
        save_image(images, path, nrow=pairs.shape[1], padding=1)
        return path

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.vq_tokenizer, self.optim, total_steps=int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuses (``NonFiniteCheckpointError``) to write NaN/inf weights or optimiser state; records the
        visual tokenizer's config (for MVM's ``vq`` target) and the guard's counters."""
        self.guard.check_checkpoint(checkpoint, self.trainer)
        checkpoint[CHECKPOINT_CONFIG_KEYS[0]] = dict(self.config)
        checkpoint["vl_nonfinite"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "vl_nonfinite" in checkpoint:
            self.guard.load_state_dict(checkpoint["vl_nonfinite"])
