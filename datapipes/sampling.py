"""Which frames of a video to decode: pure functions of (frame count, fps, clip bounds, rng).

Every sampler returns sorted frame indices inside ``[lo, hi)``. When the window holds fewer frames than
asked for, samplers return every frame of the window (fewer than ``num``) and the augmentation stage
pads the clip to ``num`` frames with a ``frame_mask`` (see ``datapipes.augment.pad_frames``): frames are
never repeated to fake a longer clip.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np

SamplingMethod = Literal["uniform", "random_segment", "fps"]
SAMPLING_METHODS: tuple[str, ...] = ("uniform", "random_segment", "fps")


def clip_bounds(
    total_frames: int, fps: float, start: Optional[float] = None, end: Optional[float] = None
) -> tuple[int, int]:
    """Frame window ``[lo, hi)`` of a clip given in seconds; the whole video when no bounds are given.

    Bounds are clamped to the video. An empty window (``lo >= hi``) means the bounds lie outside it.
    """
    lo = 0 if start is None else max(0, int(math.floor(float(start) * fps)))
    hi = total_frames if end is None else min(total_frames, int(math.ceil(float(end) * fps)))
    return lo, max(lo, hi)


def uniform_indices(lo: int, hi: int, num: int) -> np.ndarray:
    """The middle frame of each of ``num`` equal segments of ``[lo, hi)`` (deterministic, for evaluation)."""
    length = hi - lo
    if length <= num:
        return np.arange(lo, hi, dtype=np.int64)
    edges = np.linspace(lo, hi, num + 1)
    return np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64)


def random_segment_indices(lo: int, hi: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """TSN-style sampling: split ``[lo, hi)`` into ``num`` equal segments, one random frame from each."""
    length = hi - lo
    if length <= num:
        return np.arange(lo, hi, dtype=np.int64)
    edges = np.linspace(lo, hi, num + 1)
    starts = np.ceil(edges[:-1]).astype(np.int64)
    stops = np.maximum(starts + 1, np.ceil(edges[1:]).astype(np.int64))  # exclusive, non-empty
    return (starts + np.floor(rng.random(num) * (stops - starts)).astype(np.int64)).clip(lo, hi - 1)


def fps_indices(
    lo: int,
    hi: int,
    num: int,
    video_fps: float,
    target_fps: float,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """``num`` frames at a fixed rate of ``target_fps`` per second.

    The window of ``num / target_fps`` seconds starts at a random offset when ``rng`` is given
    (training) and is centred otherwise (evaluation). A clip shorter than the window yields the frames
    that fit, fewer than ``num``.
    """
    if target_fps <= 0 or video_fps <= 0:
        raise ValueError(f"fps sampling needs positive rates, got video {video_fps}, target {target_fps}")
    step = video_fps / target_fps  # frames of the video between two sampled frames
    span = step * (num - 1) + 1  # frames covered by the sampled window
    slack = (hi - lo) - span
    if slack >= 0:
        offset = lo + (rng.random() * slack if rng is not None else slack / 2)
    else:
        offset = float(lo)
    idx = np.floor(offset + step * np.arange(num)).astype(np.int64)
    idx = idx[idx < hi]
    return np.unique(idx)  # sorted; duplicates only when target_fps > video_fps


def sample_indices(
    method: SamplingMethod,
    total_frames: int,
    video_fps: float,
    num: int,
    *,
    start: Optional[float] = None,
    end: Optional[float] = None,
    target_fps: float = 2.0,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """Frame indices for one clip: ``method`` applied to the window ``[start, end)`` seconds.

    ``rng`` is needed by ``random_segment`` and makes ``fps`` pick a random window; ``uniform`` ignores
    it. Returns an empty array when the window is empty (bounds outside the video).
    """
    lo, hi = clip_bounds(total_frames, video_fps, start, end)
    if hi <= lo:
        return np.zeros(0, dtype=np.int64)
    if method == "uniform":
        return uniform_indices(lo, hi, num)
    if method == "random_segment":
        if rng is None:
            raise ValueError("random_segment sampling needs an rng")
        return random_segment_indices(lo, hi, num, rng)
    if method == "fps":
        return fps_indices(lo, hi, num, video_fps, target_fps, rng)
    raise ValueError(f"unknown sampling {method!r}; choose one of {SAMPLING_METHODS}")
