"""One raw shard sample -> ``Sample``s: the decode path every user of clips shares.

``ClipConfig`` says how a split decodes, samples, augments and tokenises. ``load_clip`` turns a video's
bytes and metadata into a uint8 clip and its frame mask (``datapipes.meta`` -> ``decode`` -> ``sampling``
-> ``augment``); ``process_sample`` adds the checks of a shard sample (metadata, status, media file, text)
around it. Training and evaluation (``datapipes.pipeline``), and search and indexing (``vl.search``),
decode through ``load_clip``, so a model sees the same pixels wherever a video comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch

from datapipes.augment import NORMS, Norm, eval_transform, pad_frames, train_transform
from datapipes.collate import Sample
from datapipes.decode import (
    BACKENDS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Backend,
    DecodedClip,
    SkipSample,
    SkipTally,
    decode_clip,
    is_image_bytes,
)
from datapipes.meta import check_status, clip_bounds, parse_meta, size_hint
from datapipes.sampling import SAMPLING_METHODS, SamplingMethod, sample_indices
from datapipes.text import TEXT_FIELDS, TextField, caption_list, choose_caption, decode_text, qa_items


@dataclass
class ClipConfig:
    """How one split decodes, samples, augments and tokenises its samples."""

    num_frames: int = 8  # T: frames per clip; shorter clips are padded (Batch.frame_mask)
    size: int = 224  # output frames are size x size
    sampling: SamplingMethod = "uniform"  # uniform | random_segment (TSN) | fps
    sample_fps: float = 2.0  # frames per second read by `fps` sampling
    backend: Backend = "decord"  # first video decoder; the other is the fallback
    fallback: bool = True  # try the other backend when the first fails on a file
    decode_threads: int = 1  # decoder threads per video (1 suits DataLoader workers)
    short_side: Optional[int] = None  # shorter side after decode-time resize; None: `size`
    allow_images: bool = True  # jpg/png/webp samples become 1-frame clips; else skipped (not_a_video)
    norm: Norm = "imagenet"  # normalisation statistics of the model's image encoder
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range (training)
    hflip: float = 0.0  # flip probability (training); flips turn "left" into "right"
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (training)
    text_field: TextField = "caption"  # caption | qa (open-ended) | mc (multiple choice)
    max_text_len: int = 32  # tokens per text row, padded

    def __post_init__(self) -> None:
        """Reject bad settings at start, before they could turn into a skip per sample."""
        choices = {"sampling": SAMPLING_METHODS, "backend": BACKENDS, "norm": NORMS, "text_field": TEXT_FIELDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ClipConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_frames < 1 or self.size < 1 or self.sample_fps <= 0:
            raise ValueError(f"num_frames, size and sample_fps must be positive: {self}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")


def _find_media(raw: dict, allow_images: bool) -> bytes:
    """Bytes of the sample's video (preferred) or image; skip reasons ``no_video`` and ``not_a_video``."""
    for ext in VIDEO_EXTENSIONS:
        if ext in raw:
            if not allow_images and is_image_bytes(raw[ext]):
                raise SkipSample("not_a_video", f"{ext} holds an image")
            return raw[ext]
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            if not allow_images:
                raise SkipSample("not_a_video", f"image sample ({ext})")
            return raw[ext]
    raise SkipSample("no_video", f"files: {sorted(k for k in raw if not k.startswith('__'))}")


def _text_rows(raw: dict, meta: dict, cfg: ClipConfig, train: bool, rng: np.random.Generator) -> list[dict]:
    """Text of one sample as a list of Sample field dicts (one per question in QA modes)."""
    captions = caption_list(meta, decode_text(raw.get("txt")))
    if cfg.text_field == "caption":
        if not captions:
            raise SkipSample("no_caption")
        texts = [choose_caption(captions, rng)] if train else captions
        return [dict(texts=texts, references=captions)]
    items = qa_items(meta, cfg.text_field)
    if not items:
        raise SkipSample("no_question", f"no {cfg.text_field} item in qa")
    return [
        dict(texts=[q.question], references=captions, answer=q.answer, choices=q.choices,
             answer_idx=q.answer_idx, question_type=q.question_type)
        for q in items
    ]


class Clip(NamedTuple):
    """A decoded, transformed clip (``load_clip``): still uint8, normalised at collation or by the caller."""

    video: torch.Tensor  # (T, C, H, W) uint8, T = ClipConfig.num_frames (a short clip repeats its last frame)
    frame_mask: torch.Tensor  # (T,) bool, False for the padding frames
    decoded: DecodedClip  # what the decoder read: frame indices, the video's frame count and fps, backend


def load_clip(data: bytes, meta: dict, cfg: ClipConfig, train: bool,
              rng: Optional[np.random.Generator] = None) -> Clip:
    """A video's (or image's) bytes and its metadata -> ``Clip``: the one decode path of training,
    evaluation, search and indexing.

    ``meta`` is the sample's parsed ``KEY.json`` ({} when none): its ``start``/``end`` bound the frames
    (``meta.clip_bounds``) and our writer's probed frame size spares the decoder a header read
    (``meta.size_hint``). ``train``: random-resized-crop, flip and jitter (``train_transform``); else the
    centre crop of evaluation. ``rng`` draws the training augmentation and the frames of ``random_segment``
    sampling (and the window of ``fps`` sampling in training); evaluation with ``uniform`` or ``fps``
    sampling draws nothing. Raises ``SkipSample`` (``not_a_video`` for an image when ``cfg.allow_images`` is
    off, ``empty_file``, ``decode_error``, ``bad_clip_bounds``) for bytes that give no usable clip.
    """
    randomised = train or cfg.sampling == "random_segment"  # evaluation: fps windows centred, segments seeded
    if randomised and rng is None:
        raise ValueError(f"load_clip needs an rng for {'training' if train else 'random_segment sampling'}")
    if not cfg.allow_images and is_image_bytes(data):
        raise SkipSample("not_a_video", "an image, not a video")
    start, end = clip_bounds(meta)  # None, None for a file video2dataset cut to the clip

    def choose(total: int, fps: float) -> np.ndarray:
        return sample_indices(cfg.sampling, total, fps, cfg.num_frames, start=start, end=end,
                              target_fps=cfg.sample_fps, rng=rng if randomised else None)

    clip = decode_clip(data, choose, short_side=cfg.short_side or cfg.size, backend=cfg.backend,
                       fallback=cfg.fallback, threads=cfg.decode_threads, size_hint=size_hint(meta))
    if len(clip.frames) == 0:
        raise SkipSample("bad_clip_bounds", f"start={meta.get('start')} end={meta.get('end')} "
                         f"outside {clip.total_frames} frames at {clip.fps:.3g} fps")
    if train:
        video = train_transform(clip.frames, cfg.size, rng, scale=cfg.crop_scale, hflip=cfg.hflip,
                                jitter=cfg.color_jitter)
    else:
        video = eval_transform(clip.frames, cfg.size)  # (t, C, H, W) uint8
    video, frame_mask = pad_frames(video, cfg.num_frames)  # (T, C, H, W), (T,)
    return Clip(video, frame_mask, clip)


def process_sample(raw: dict, cfg: ClipConfig, train: bool, rng: np.random.Generator,
                   tally: Optional[SkipTally] = None) -> list[Sample]:
    """One raw shard sample -> processed ``Sample``s (several for several questions in QA modes).

    Raises ``SkipSample`` with the reason when the sample cannot be used. A video with fewer frames than
    ``cfg.num_frames`` is padded (``frame_mask`` marks the padding) and noted in ``tally`` as
    ``padded_clip``; images are 1-frame clips by design and are not noted.
    """
    meta = parse_meta(raw)
    check_status(meta)  # a failed download: its status and error_message are the detail
    data = _find_media(raw, cfg.allow_images)
    rows = _text_rows(raw, meta, cfg, train, rng)  # cheap checks before the costly decode
    clip = load_clip(data, meta, cfg, train, rng)
    decoded = clip.decoded
    if tally is not None and decoded.backend != "image" and len(decoded.frames) < cfg.num_frames:
        tally.note("padded_clip", f"{raw['__key__']} ({raw.get('__url__')}): {len(decoded.frames)} of "
                   f"{cfg.num_frames} frames ({decoded.total_frames} in the video at {decoded.fps:.3g} fps)")
    return [Sample(key=raw["__key__"], video=clip.video, frame_mask=clip.frame_mask, meta=meta, **row)
            for row in rows]
