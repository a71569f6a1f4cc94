"""The one typed batch that flows from the data pipeline into every model and task (DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Batch:
    """A collated batch of clips and texts.

    Training batches hold one caption per clip, so ``text_ids[i]`` describes ``video[i]``. Evaluation
    batches may hold several captions per clip (MSRVTT has 20): then ``text_ids`` has one row per
    caption and ``text_video_index[j]`` is the row of ``video`` that caption ``j`` describes.
    """

    video: Tensor  # (B, T, C, H, W) float, normalised
    text_ids: Tensor  # (Nt, L) long; Nt == B in training
    text_mask: Tensor  # (Nt, L) long, 1 for real tokens
    keys: list[str]  # (B,) sample keys, stable across runs
    text_video_index: Optional[Tensor] = None  # (Nt,) long: which clip each text row describes
    frame_mask: Optional[Tensor] = None  # (B, T) bool: False for padded frames of short clips
    # Task fields (DESIGN §2), present only where the shards carry them.
    answer: Optional[list[str]] = None  # (B,) open-ended QA answers (raw strings; tasks map to ids)
    question_type: Optional[list[str]] = None  # (B,) QA question types where the benchmark has them
    choice_ids: Optional[Tensor] = None  # (B, K, L) multiple-choice texts (question + choice)
    choice_mask: Optional[Tensor] = None  # (B, K, L)
    answer_idx: Optional[Tensor] = None  # (B,) long, index of the right choice
    references: Optional[list[list[str]]] = None  # (B,) all reference captions of each clip
    texts: Optional[list[str]] = None  # (Nt,) the raw text of each text row: a caption, or a QA question
    meta: list[dict] = field(default_factory=list)  # (B,) the sample's json, for predictions files
    # Samples the pipeline skipped, by reason, since the previous batch of the same worker: the main
    # process sums these into `data/skipped/<reason>` metrics (DataLoader workers cannot share counters).
    # `padded_clip` counts videos kept with padded frames (see frame_mask), not skipped ones.
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.video.shape[0])

    def video_index(self) -> Tensor:
        """(Nt,) index of the clip each text row describes; ``arange(B)`` for one caption per clip."""
        if self.text_video_index is not None:
            return self.text_video_index
        return torch.arange(self.text_ids.shape[0], device=self.text_ids.device)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Move every tensor field to ``device``; other fields are shared, not copied."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
        return Batch(**values)

    def pin_memory(self) -> "Batch":
        """Pin tensor fields, so a DataLoader with ``pin_memory=True`` accepts this type."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.pin_memory() if isinstance(v, Tensor) else v
        return Batch(**values)

    def __len__(self) -> int:
        return self.batch_size
