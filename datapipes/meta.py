"""A sample's ``KEY.json``: ours (``vl data shards``, DESIGN §2) or video2dataset's, read the same way.

video2dataset (github.com/iejMac/video2dataset, ``workers/download_worker.py``) writes for every input row
``url``, ``key``, ``status`` (``success``, ``failed_to_download``, ``failed_to_subsample``), ``error_message``,
the saved columns (``caption``, ``clips``, ``save_additional_columns``) and, with its FFProbeSubsampler,
``video_metadata`` (ffprobe's output). Three of its facts change how a sample is read:

- a sample whose ``status`` is not ``success`` has no video; its ``error_message`` says why (``check_status``);
- with ``clips`` in the json the file *is* that clip, cut by its ClippingSubsampler: saved ``start``/``end``
  columns are times in the source video, not bounds inside the file (``clip_bounds``);
- ``video_metadata`` is probed before its ResolutionSubsampler resizes the file, so it may describe another
  frame size than the file's (``size_hint`` never uses it).
"""

from __future__ import annotations

import json
from typing import Optional

from datapipes.decode import SkipSample

# The fields our shard writer's header probe stores together (datapipes.write); width/height beside them
# describe the file itself.
PROBED_FIELDS: tuple[str, ...] = ("width", "height", "num_frames")


def parse_meta(raw: dict) -> dict:
    """The sample's ``json`` as a dict ({} when absent); ``SkipSample("bad_metadata")`` when unreadable."""
    data = raw.get("json")
    if data is None:
        return {}
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SkipSample("bad_metadata", str(e)) from e
    if not isinstance(meta, dict):
        raise SkipSample("bad_metadata", f"json is a {type(meta).__name__}, not an object")
    return meta


def check_status(meta: dict) -> None:
    """Raise ``SkipSample("status_not_success")`` for a failed download, its detail being the status and
    video2dataset's ``error_message`` (``failed_to_download: HTTP Error 404: Not Found``)."""
    if "status" not in meta or meta["status"] == "success":
        return
    error = meta.get("error_message")
    detail = str(meta["status"]) + (f": {str(error).strip()}" if error not in (None, "") else "")
    raise SkipSample("status_not_success", detail)


def is_cut_clip(meta: dict) -> bool:
    """True when the file is a clip video2dataset cut from its source (``clips`` in the json)."""
    return meta.get("clips") is not None


def clip_bounds(meta: dict) -> tuple[Optional[float], Optional[float]]:
    """``start``/``end`` seconds of the clip inside the file (None when absent, or when the file is itself
    the clip: see ``is_cut_clip``); ``SkipSample("bad_clip_bounds")`` for unusable values."""
    if is_cut_clip(meta):
        return None, None  # start/end, if saved, are the cut's times in the source video
    try:
        start = None if meta.get("start") is None else float(meta["start"])
        end = None if meta.get("end") is None else float(meta["end"])
    except (TypeError, ValueError) as e:
        raise SkipSample("bad_clip_bounds", f"start={meta.get('start')!r} end={meta.get('end')!r}") from e
    if start is not None and end is not None and end <= start:
        raise SkipSample("bad_clip_bounds", f"end {end} is not after start {start}")
    return start, end


def size_hint(meta: dict) -> Optional[tuple[int, int]]:
    """The file's (width, height) when the metadata is known to describe the file itself: our writer's
    header probe (``PROBED_FIELDS``). None otherwise, and the decoder reads the file's header: video2dataset's
    ``video_metadata`` describes the source before resizing, and bare ``width``/``height`` columns may too."""
    if all(isinstance(meta.get(k), int) and meta[k] > 0 for k in PROBED_FIELDS):
        return meta["width"], meta["height"]
    return None
