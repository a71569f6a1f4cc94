"""Decode videos and images from in-memory bytes (no temp files) into uint8 frames.

``decode_clip(data, choose_indices, ...)`` opens the bytes with the chosen backend (decord or PyAV),
asks ``choose_indices(total_frames, fps)`` which frames to read (see ``datapipes.sampling``), and
returns them resized in the decoder so that the shorter side equals ``short_side``. When the backend
fails on a file, the other backend is tried; when both fail, ``SkipSample("decode_error")`` is raised
and the pipeline counts the sample instead of stopping. Images (jpg, png, webp) are 1-frame clips.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np

Backend = Literal["decord", "pyav"]
BACKENDS: tuple[str, ...] = ("decord", "pyav")
# Containers decord and PyAV read (camera formats included: DiDeMo's Flickr videos are .mts, .3g2, .wmv, ...)
VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "wmv", "3gp", "3g2",
                                     "mts", "m2ts", "flv")
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

# choose_indices(total_frames, fps) -> sorted frame indices to decode
IndexChooser = Callable[[int, float], np.ndarray]
logger = logging.getLogger("datapipes")


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is a short stable name counted as ``data/skipped/<reason>``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipTally:
    """Counts skipped samples by reason inside one process (each DataLoader worker has its own copy);
    ``note`` counts samples kept but altered (``padded_clip``) in the same tallies.

    ``pop()`` hands the counts since the previous call to the next batch (``Batch.skipped``);
    ``totals()`` keeps everything seen. ``consecutive`` counts skips since the last good sample.
    """

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.consecutive = 0
        self.last_detail: dict[str, str] = {}

    def skip(self, reason: str, detail: str = "") -> None:
        self.pending[reason] = self.pending.get(reason, 0) + 1
        self.total[reason] = self.total.get(reason, 0) + 1
        self.consecutive += 1
        if detail:
            self.last_detail[reason] = detail[:300]
        logger.debug("skipped (%s) %s", reason, detail)

    def note(self, reason: str, detail: str = "") -> None:
        """Count a sample that was kept but altered (e.g. ``padded_clip``): reported beside the skips,
        without counting towards ``consecutive``."""
        self.pending[reason] = self.pending.get(reason, 0) + 1
        self.total[reason] = self.total.get(reason, 0) + 1
        if detail:
            self.last_detail[reason] = detail[:300]

    def ok(self) -> None:
        self.consecutive = 0

    def pop(self) -> dict[str, int]:
        out, self.pending = self.pending, {}
        return out

    def totals(self) -> dict[str, int]:
        return dict(self.total)


@dataclass
class DecodedClip:
    """Frames read from one video or image."""

    frames: np.ndarray  # (t, H, W, 3) uint8, t <= the number of frames asked for
    indices: np.ndarray  # (t,) frame indices that were read
    total_frames: int  # frames in the whole video (1 for an image)
    fps: float  # frames per second of the video (0.0 for an image)
    backend: str  # "decord", "pyav" or "image"


def is_image_bytes(data: bytes) -> bool:
    """True for JPEG, PNG or WebP content, whatever the file's extension says."""
    return (
        data[:3] == b"\xff\xd8\xff"
        or data[:8] == b"\x89PNG\r\n\x1a\n"
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


def resized_dims(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to ``short_side`` and the longer one to an even size.

    Unchanged when ``short_side`` is None or already the shorter side.
    """
    if not short_side or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(short_side, 2 * int(round(height * scale / 2)))
    return max(short_side, 2 * int(round(width * scale / 2))), short_side


def probe_video(data: bytes) -> dict:
    """Header facts of a video read with PyAV: ``width``, ``height``, ``fps``, ``num_frames``, ``duration``.

    Reads the container header only (no frame is decoded); raises ``SkipSample("decode_error")`` when
    the bytes are not a readable video.
    """
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise SkipSample("decode_error", "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            duration = _stream_duration(stream, container)
            frames = int(stream.frames) or int(round(duration * fps))
            cc = stream.codec_context
            return dict(width=int(cc.width), height=int(cc.height), fps=fps, num_frames=frames, duration=duration)
    except SkipSample:
        raise
    except Exception as e:  # PyAV raises many error types for bad input
        raise SkipSample("decode_error", f"{type(e).__name__}: {e}") from e


def _stream_duration(stream, container) -> float:
    """Duration of a PyAV stream in seconds, from the stream or else the container (0.0 if unknown)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # av.time_base is microseconds
    return 0.0


def decode_image(data: bytes, short_side: Optional[int]) -> DecodedClip:
    """A jpg/png/webp as a 1-frame clip, resized so its shorter side is ``short_side``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = resized_dims(img.width, img.height, short_side)
            img.draft("RGB", (w, h))  # JPEG: decode at a reduced scale when that is enough
            rgb = img.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.BILINEAR, reducing_gap=2.0)
            frame = np.array(rgb)[None]  # (1, H, W, 3), writable
    except Exception as e:  # PIL raises several error types for bad input
        raise SkipSample("decode_error", f"image: {type(e).__name__}: {e}") from e
    return DecodedClip(frame, np.zeros(1, dtype=np.int64), 1, 0.0, "image")


def _decode_decord(
    data: bytes, choose: IndexChooser, dims: Optional[tuple[int, int]], threads: int
) -> DecodedClip:
    """Read the chosen frames with decord, resized in the decoder to ``dims`` = (width, height)."""
    import decord

    width, height = dims if dims is not None else (-1, -1)
    reader = decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=threads)
    total, fps = len(reader), float(reader.get_avg_fps())
    indices = choose(total, fps)
    if len(indices) == 0:
        return DecodedClip(np.zeros((0, 1, 1, 3), np.uint8), indices, total, fps, "decord")
    frames = reader.get_batch(indices.tolist()).asnumpy()  # (t, H, W, 3)
    return DecodedClip(frames, indices, total, fps, "decord")


def _decode_pyav(
    data: bytes, choose: IndexChooser, short_side: Optional[int], threads: int
) -> DecodedClip:
    """Read the chosen frames with PyAV, decoding forward from the nearest keyframe before the first."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        total = int(stream.frames) or int(round(_stream_duration(stream, container) * fps))
        indices = choose(total, fps)
        cc = stream.codec_context
        width, height = resized_dims(cc.width, cc.height, short_side)
        frames = _pyav_read(container, stream, indices, fps, width, height)
    if len(frames) < len(indices):  # the header promised more frames than the stream holds
        indices = indices[: len(frames)]
    stacked = np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
    return DecodedClip(stacked, indices, total, fps, "pyav")


def _pyav_read(container, stream, indices: np.ndarray, fps: float, width: int, height: int) -> list:
    """Decode forward and keep, for each wanted index, the first frame at or after its timestamp."""
    if len(indices) == 0:
        return []
    origin = stream.start_time or 0
    first_time = float(indices[0]) / fps
    if first_time > 1.0 and stream.time_base is not None:  # seek near the window; lands on a keyframe
        container.seek(origin + int(first_time / stream.time_base), stream=stream, backward=True)
    out: list[np.ndarray] = []
    pos, counter = 0, 0
    for frame in container.decode(stream):
        if frame.pts is not None and stream.time_base is not None:
            index = int(round(float((frame.pts - origin) * stream.time_base) * fps))
        else:
            index = counter
        counter += 1
        while pos < len(indices) and indices[pos] <= index:
            out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            pos += 1
        if pos == len(indices):
            break
    return out


def _run_backend(
    backend: str,
    data: bytes,
    choose: IndexChooser,
    short_side: Optional[int],
    size_hint: Optional[tuple[int, int]],
    threads: int,
) -> DecodedClip:
    """Decode with one backend; decord needs the source size to keep the aspect ratio when resizing."""
    if backend == "decord":
        dims = None
        if short_side:
            if size_hint is None:
                info = probe_video(data)
                size_hint = (info["width"], info["height"])
            if min(size_hint) != short_side:
                dims = resized_dims(size_hint[0], size_hint[1], short_side)
        return _decode_decord(data, choose, dims, threads)
    if backend == "pyav":
        return _decode_pyav(data, choose, short_side, threads)
    raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")


def decode_clip(
    data: bytes,
    choose_indices: IndexChooser,
    *,
    short_side: Optional[int] = None,
    backend: Backend = "decord",
    fallback: bool = True,
    threads: int = 1,
    size_hint: Optional[tuple[int, int]] = None,
) -> DecodedClip:
    """Frames of a video (or image) held in ``data``.

    Args:
        data: the file's bytes.
        choose_indices: ``(total_frames, fps) -> indices`` picking the frames to read.
        short_side: resize in the decoder so the shorter side has this many pixels (None: keep).
        backend: ``decord`` or ``pyav``; with ``fallback`` the other one is tried when it fails.
        threads: decoder threads per video (1 suits DataLoader workers).
        size_hint: the source (width, height) when known from metadata; saves a header probe.

    Returns the frames as ``DecodedClip`` (``frames`` may hold fewer frames than asked for when the
    clip is short). Raises ``SkipSample`` with ``empty_file`` or ``decode_error``.
    """
    if len(data) == 0:
        raise SkipSample("empty_file")
    if is_image_bytes(data):
        return decode_image(data, short_side)
    order = [backend] + ([b for b in BACKENDS if b != backend] if fallback else [])
    errors = []
    for name in order:
        try:
            clip = _run_backend(name, data, choose_indices, short_side, size_hint, threads)
        except SkipSample as e:
            errors.append(f"{name}: {e}")
            continue
        except Exception as e:  # decord/PyAV raise many error types (RuntimeError, DECORDError, av.*)
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if clip.total_frames > 0 and (len(clip.frames) > 0 or len(clip.indices) == 0):
            return clip
        errors.append(f"{name}: no frames decoded")
    raise SkipSample("decode_error", "; ".join(errors))


def quiet_decoders() -> None:
    """Silence decord's FFmpeg log lines (one per bad file), which would flood training logs."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
