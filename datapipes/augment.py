"""Clip-consistent augmentation: one set of random parameters per clip, applied to every frame.

Training: random-resized-crop, horizontal flip and colour jitter. Evaluation: centre crop (the decoder
has already resized the shorter side to the crop size). Clips stay uint8 through these steps (fast
vectorised resizing) and are normalised by the statistics of the model's image encoder (``imagenet``
or ``clip``) when collated, written straight into the batch tensor (``normalize_into``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["imagenet", "clip"]
NORMS: tuple[str, ...] = ("imagenet", "clip")  # the values of Norm


@functools.cache
def norm_stats(norm: Norm) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel for pixels in [0, 1]: timm's ImageNet or OpenAI CLIP statistics.

    timm is imported on first use, not with this module: its import (torchvision's models) takes seconds,
    which tools that never normalise (``vl data inspect``, shard writing) need not pay.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    stats = {"imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}
    if norm not in stats:
        raise ValueError(f"unknown normalisation {norm!r}; valid: {', '.join(NORMS)}")
    mean, std = stats[norm]
    return tuple(mean), tuple(std)


@dataclass(frozen=True)
class CropBox:
    """A crop of a frame in pixels."""

    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
    attempts: int = 10,
) -> CropBox:
    """A crop covering a random fraction ``scale`` of the area with aspect ratio in ``ratio``.

    Tries ``attempts`` random boxes; if none fits inside the frame, falls back to the largest centred
    box whose aspect ratio lies in ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def center_crop_box(height: int, width: int, size: int) -> CropBox:
    """The centred ``size x size`` box (the whole side when the frame is smaller)."""
    h, w = min(size, height), min(size, width)
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def frames_to_tensor(frames: np.ndarray, box: CropBox) -> Tensor:
    """Crop uint8 frames (t, H, W, 3) and return them as a uint8 tensor (t, 3, h, w) (a view, no copy)."""
    clip = torch.from_numpy(frames)[:, box.top : box.top + box.height, box.left : box.left + box.width]
    return clip.permute(0, 3, 1, 2)  # (t, 3, h, w), channels-last in memory


def resize_clip(clip: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of a clip (t, C, h, w) to (t, C, size, size).

    uint8 clips take PyTorch's vectorised uint8 path, many times faster than resizing floats.
    """
    if clip.shape[-2:] == (size, size):
        return clip
    return F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def color_jitter(clip: Tensor, strength: float, rng: np.random.Generator) -> Tensor:
    """Brightness, contrast and saturation factors drawn once from [1 - s, 1 + s]; clip (t, 3, h, w) in [0, 1]."""
    brightness, contrast, saturation = 1.0 + strength * (2.0 * rng.random(3) - 1.0)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    clip = clip * float(brightness)
    gray = clip.mul(luma).sum(1, keepdim=True)  # (t, 1, h, w)
    clip = torch.lerp(gray.mean(dim=(0, 2, 3), keepdim=True).expand_as(clip), clip, float(contrast))
    gray = clip.mul(luma).sum(1, keepdim=True)
    clip = torch.lerp(gray.expand_as(clip), clip, float(saturation))
    return clip.clamp_(0.0, 1.0)


def _norm_tensors(norm: Norm) -> tuple[Tensor, Tensor]:
    """(scale, offset), each (1, 3, 1, 1), such that ``pixel_uint8 * scale + offset`` is normalised."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in norm_stats(norm))
    return 1.0 / (255.0 * std), -mean / std


def normalize(clip: Tensor, norm: Norm) -> Tensor:
    """uint8 [0, 255] or float [0, 1] clip (t, 3, h, w) -> float32 normalised by the ``norm`` statistics."""
    scale, offset = _norm_tensors(norm)
    if clip.dtype == torch.uint8:
        return torch.addcmul(offset, clip, scale)
    return torch.addcmul(offset, clip, scale * 255.0)


def normalize_into(out: Tensor, clip: Tensor, norm: Norm) -> Tensor:
    """Write the normalised uint8 clip (t, 3, h, w) into the float tensor ``out`` in one pass (no extra copy)."""
    scale, offset = _norm_tensors(norm)
    return torch.addcmul(offset, clip, scale, out=out)


def train_transform(
    frames: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.0,
    jitter: float = 0.0,
) -> Tensor:
    """Training augmentation of uint8 frames (t, H, W, 3) -> uint8 clip (t, 3, size, size).

    One crop, one flip decision and one set of jitter factors for the whole clip. Horizontal flips
    turn "left" into "right": keep ``hflip=0`` for captions that name directions. Normalisation
    happens at collation (``normalize_into``), straight into the batch tensor.
    """
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], scale, ratio, rng)
    clip = resize_clip(frames_to_tensor(frames, box), size)  # (t, 3, size, size) uint8
    if hflip > 0 and rng.random() < hflip:
        clip = clip.flip(-1)
    if jitter > 0:
        jittered = color_jitter(clip.to(torch.float32).div_(255.0), jitter, rng)
        clip = jittered.mul_(255.0).round_().to(torch.uint8)
    return clip


def eval_transform(frames: np.ndarray, size: int) -> Tensor:
    """Evaluation transform of uint8 frames (t, H, W, 3) -> uint8 clip (t, 3, size, size).

    Centre crop (the decoder resized the shorter side to ``size``); frames smaller than ``size`` are
    resized up after cropping.
    """
    clip = frames_to_tensor(frames, center_crop_box(frames.shape[1], frames.shape[2], size))
    return resize_clip(clip, size)


def pad_frames(clip: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
    """Pad a clip (t, C, H, W) with t <= num_frames to (num_frames, C, H, W) by repeating its last frame.

    Returns the clip and ``frame_mask`` (num_frames,) bool, False for the padded frames.
    """
    t = clip.shape[0]
    mask = torch.arange(num_frames) < t
    if t == num_frames:
        return clip, mask
    if t == 0 or t > num_frames:
        raise ValueError(f"cannot pad a clip of {t} frames to {num_frames}")
    pad = clip[-1:].expand(num_frames - t, *clip.shape[1:])
    return torch.cat([clip, pad], dim=0), mask  # (num_frames, C, H, W)
