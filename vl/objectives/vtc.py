"""Video-text contrastive loss (VTC): open_clip's ``ClipLoss``, gathered with gradients across ranks, or
its multi-positive form when several texts in a batch describe the same clip."""

from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, gather_features
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

    Multi-positive (``match_keys`` given): in-batch InfoNCE treats every other text as a negative, which is
    wrong when a batch holds the same caption twice (or two captions of one clip): the two clips are pushed
    apart for describing the same thing. With ``match_keys=(text_keys (B,), clip_keys (B, R))`` (see
    ``caption_keys``), text j is a positive of clip i when its key is one of clip i's keys (or j == i), and
    each softmax row is fitted to the uniform distribution over its positives (UniCL's targets). Without
    duplicates this is exactly ``ClipLoss``. Keys are gathered across ranks like the features.
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

    def forward(self, video_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor,
                match_keys: Optional[tuple[Tensor, Tensor]] = None) -> dict[str, Tensor]:
        if video_embeds.shape != text_embeds.shape or video_embeds.dim() != 2:
            raise ValueError(f"vtc: video and text embeddings must both be (B, E), got "
                             f"{tuple(video_embeds.shape)} and {tuple(text_embeds.shape)}")
        self._sync_world()
        if match_keys is None:
            loss = self.clip_loss(video_embeds, text_embeds, self.scale(logit_scale))
        else:
            loss = self.multi_positive_loss(video_embeds, text_embeds, self.scale(logit_scale), *match_keys)
        with torch.no_grad():
            sim = self.similarity(video_embeds, text_embeds, logit_scale)  # (B, B)
            target = torch.arange(sim.shape[0], device=sim.device)
            acc = ((sim.argmax(dim=1) == target).float().mean() + (sim.argmax(dim=0) == target).float().mean()) / 2
        return {"vtc_loss": loss, "vtc_acc": acc}

    def multi_positive_loss(self, video_embeds: Tensor, text_embeds: Tensor, scale: Tensor, text_keys: Tensor,
                            clip_keys: Tensor) -> Tensor:
        """Symmetric cross-entropy against uniform targets over each row's positives (see the class doc)."""
        B = video_embeds.shape[0]
        if text_keys.shape != (B,) or clip_keys.dim() != 2 or clip_keys.shape[0] != B:
            raise ValueError(f"vtc: match keys must be (B,) and (B, R) for B={B}, got {tuple(text_keys.shape)} "
                             f"and {tuple(clip_keys.shape)}")
        loss_fn, rank, world = self.clip_loss, self.clip_loss.rank, self.clip_loss.world_size
        if world > 1:
            all_v, all_t = gather_features(video_embeds, text_embeds, local_loss=loss_fn.local_loss,
                                           gather_with_grad=loss_fn.gather_with_grad, rank=rank, world_size=world)
            all_text_keys, all_clip_keys = _gather_keys(text_keys, clip_keys, world)
        else:
            all_v, all_t, all_text_keys, all_clip_keys = video_embeds, text_embeds, text_keys, clip_keys
        n = all_v.shape[0]
        positives = (all_clip_keys[:, :, None] == all_text_keys[None, None, :]).any(1)  # (N, N): clip i, text j
        positives |= torch.eye(n, dtype=torch.bool, device=positives.device)
        if world > 1 and loss_fn.local_loss:  # this rank's rows against everything, as open_clip's local loss
            rows = slice(rank * B, (rank + 1) * B)
            v2t, t2v = scale * video_embeds @ all_t.t(), scale * text_embeds @ all_v.t()  # (B, N) each
            pos_v2t, pos_t2v = positives[rows], positives[:, rows].t()
        else:
            v2t = scale * all_v @ all_t.t()  # (N, N)
            t2v, pos_v2t, pos_t2v = v2t.t(), positives, positives.t()
        return (_soft_cross_entropy(v2t, pos_v2t) + _soft_cross_entropy(t2v, pos_t2v)) / 2


def _soft_cross_entropy(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows of the cross-entropy between softmax(logits) and the uniform distribution over positives."""
    target = positives.to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def _gather_keys(text_keys: Tensor, clip_keys: Tensor, world: int) -> tuple[Tensor, Tensor]:
    """All ranks' keys, in rank order; clip keys padded to the widest rank's R with -1 (no caption's key)."""
    width = torch.tensor([clip_keys.shape[1]], device=clip_keys.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.full((clip_keys.shape[0], int(width)), -1, dtype=clip_keys.dtype, device=clip_keys.device)
    padded[:, : clip_keys.shape[1]] = clip_keys
    texts = [torch.empty_like(text_keys) for _ in range(world)]
    clips = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(texts, text_keys)
    dist.all_gather(clips, padded)
    return torch.cat(texts), torch.cat(clips)


def caption_key(text: str) -> int:
    """A non-negative 63-bit key of a caption, the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest(), "little") >> 1


def caption_keys(texts: Sequence[str], references: Sequence[Sequence[str]],
                 device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``match_keys`` for ``VTCLoss``: the key of each text row (B,) and the keys of each clip's reference
    captions (B, R), padded with -1. A clip's own text is always among its keys."""
    if len(texts) != len(references):
        raise ValueError(f"vtc: {len(texts)} texts for {len(references)} clips; multi-positive VTC needs one "
                         f"text per clip")
    text_keys = [caption_key(t) for t in texts]
    refs = [sorted({caption_key(r) for r in rs} | {k}) for rs, k in zip(references, text_keys)]
    clip_keys = torch.full((len(refs), max(map(len, refs))), -1, dtype=torch.long)
    for i, keys in enumerate(refs):
        clip_keys[i, : len(keys)] = torch.tensor(keys)
    return torch.tensor(text_keys, dtype=torch.long, device=device), clip_keys.to(device)


def time_reversal_loss(video_embeds: Tensor, reversed_embeds: Tensor, text_embeds: Tensor,
                       logit_scale: Tensor) -> dict[str, Tensor]:
    """Each caption against its clip and the same frames played backwards (Test of Time's reversed-video
    negatives): a two-way softmax at VTC's temperature whose target is the true order.

    video_embeds, reversed_embeds, text_embeds (B, E), row i of each the same clip / its caption, all
    L2-normalised; logit_scale as ``VTCLoss``. Returns ``{"reversal_loss", "reversal_acc"}``, the accuracy
    being the share of captions that already score the true order higher. Meant for data whose captions say
    what happens in time: a caption of a still scene fits both orders, and the loss then only adds noise.
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    true = (text_embeds * video_embeds).sum(dim=-1)  # (B,)
    backwards = (text_embeds * reversed_embeds).sum(dim=-1)  # (B,)
    logits = scale * torch.stack([true, backwards], dim=1)  # (B, 2)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = nn.functional.cross_entropy(logits, target)
    return {"reversal_loss": loss, "reversal_acc": (true > backwards).float().mean().detach()}
