"""Collate processed samples into one ``Batch`` (DESIGN §3), tokenising all text of the batch at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from datapipes.augment import Norm, normalize_into
from datapipes.batch import Batch
from datapipes.text import Tokenize


@dataclass
class Sample:
    """One processed clip with its text rows, ready to collate."""

    key: str
    video: Tensor  # (T, C, H, W) uint8, normalised at collation
    frame_mask: Tensor  # (T,) bool, False for padded frames
    texts: list[str]  # text rows: 1 caption in training, every caption in evaluation, or the question
    references: list[str] = field(default_factory=list)  # every caption of the clip
    answer: Optional[str] = None  # open-ended QA answer
    question_type: Optional[str] = None
    choices: Optional[list[str]] = None  # multiple-choice candidates
    answer_idx: Optional[int] = None  # index of the right choice
    meta: dict = field(default_factory=dict)


def collate(
    samples: list[Sample], tokenize: Tokenize, norm: Norm = "imagenet", skipped: Optional[dict[str, int]] = None
) -> Batch:
    """Normalise and stack clips, and tokenise text rows, into a ``Batch``.

    ``text_video_index`` is set when some clip has more or fewer than one text row (evaluation with
    several captions per clip); QA fields are set when any sample carries them. ``skipped`` is the
    worker's count of skipped samples since its previous batch.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    video = torch.empty((len(samples), *samples[0].video.shape), dtype=torch.float32)  # (B, T, C, H, W)
    if get_worker_info() is not None:  # in a DataLoader worker: fill shared memory, sent without a copy
        video.share_memory_()
    for i, s in enumerate(samples):
        normalize_into(video[i], s.video, norm)  # one pass per clip: uint8 -> normalised float
    frame_mask = torch.stack([s.frame_mask for s in samples])  # (B, T)
    if bool(frame_mask.all()):  # every frame real: None, so attention runs unmasked (no mask to build or apply)
        frame_mask = None
    texts = [t for s in samples for t in s.texts]
    text_ids, text_mask = tokenize(texts)  # (Nt, L)
    text_video_index = None
    if any(len(s.texts) != 1 for s in samples):
        counts = torch.tensor([len(s.texts) for s in samples])
        text_video_index = torch.repeat_interleave(torch.arange(len(samples)), counts)  # (Nt,)
    batch = Batch(
        video=video,
        text_ids=text_ids,
        text_mask=text_mask,
        keys=[s.key for s in samples],
        text_video_index=text_video_index,
        frame_mask=frame_mask,
        references=[s.references for s in samples],
        texts=texts,
        meta=[s.meta for s in samples],
        skipped=dict(skipped or {}),
    )
    _add_qa_fields(batch, samples, tokenize)
    return batch


def _add_qa_fields(batch: Batch, samples: list[Sample], tokenize: Tokenize) -> None:
    """Fill ``answer``/``question_type`` (open-ended) and ``choice_*``/``answer_idx`` (multiple choice)."""
    if any(s.answer is not None for s in samples):
        batch.answer = [s.answer if s.answer is not None else "" for s in samples]
    if any(s.question_type is not None for s in samples):
        batch.question_type = [s.question_type or "" for s in samples]
    if any(s.choices for s in samples):
        questions = [s.texts[0] if s.texts else "" for s in samples]
        batch.choice_ids, batch.choice_mask = tokenize.choices(questions, [s.choices or [] for s in samples])
        batch.answer_idx = torch.tensor(
            [s.answer_idx if s.answer_idx is not None else -1 for s in samples], dtype=torch.long
        )  # (B,)
