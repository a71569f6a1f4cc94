"""Video-text contrastive loss (VTC): open_clip's ``ClipLoss``, gathered with gradients across ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss
from torch import Tensor, nn


class VTCLoss(nn.Module):
    """Symmetric InfoNCE over video and text embeddings, computed by ``open_clip.loss.ClipLoss``.

    ``forward(video_embeds (B, E), text_embeds (B, E), logit_scale) -> {"vtc_loss", "vtc_acc"}``: the
    embeddings are L2-normalised; ``logit_scale`` is the model's log-space parameter (``model.logit_scale``,
    log(1/0.07) at init), clamped at log(100) and exponentiated here, where it is used.
    Under torch.distributed, features are all-gathered with gradients (rank and world size are read at
    every call, so the module can be built before the process group); ``local_loss`` computes each rank's
    rows only, as open_clip recommends at scale. ``vtc_acc`` is the in-batch (local) retrieval accuracy,
    mean of video->text and text->video.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__()
        # No label cache: labels cached under torch.inference_mode (validation) break a later backward.
        self.clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=False)

    def _sync_world(self) -> None:
        """Point ClipLoss at the current process group (a no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            self.clip_loss.rank, self.clip_loss.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.clip_loss.rank, self.clip_loss.world_size = 0, 1

    @staticmethod
    def scale(logit_scale: Tensor) -> Tensor:
        """exp(logit_scale) with the log-space parameter clamped at log(100), as CLIP does."""
        return logit_scale.clamp(max=math.log(100)).exp()

    @staticmethod
    def similarity(video_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
        """Local logits (B, B) = scale * cosine: row i = video i against every text. VTM draws its hard
        negatives from these (softmax over raw cosines would be nearly uniform)."""
        return VTCLoss.scale(logit_scale) * video_embeds @ text_embeds.t()

    def forward(self, video_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
        if video_embeds.shape != text_embeds.shape or video_embeds.dim() != 2:
            raise ValueError(f"vtc: video and text embeddings must both be (B, E), got "
                             f"{tuple(video_embeds.shape)} and {tuple(text_embeds.shape)}")
        self._sync_world()
        loss = self.clip_loss(video_embeds, text_embeds, self.scale(logit_scale))
        with torch.no_grad():
            sim = self.similarity(video_embeds, text_embeds, logit_scale)  # (B, B)
            target = torch.arange(sim.shape[0], device=sim.device)
            acc = ((sim.argmax(dim=1) == target).float().mean() + (sim.argmax(dim=0) == target).float().mean()) / 2
        return {"vtc_loss": loss, "vtc_acc": acc}
