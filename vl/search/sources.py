"""Where the videos of an index come from: folders (with caption sidecars), single files and WebDataset shards.

``find_units`` turns the inputs of ``vl index`` (and of ``vl predict``'s ``predict_videos``) into units, each
read in a stable order so that a build can resume at an item's position; ``unit_items`` yields a unit's items
as ``RawItem``s, undecoded; ``item_clip`` decodes one through the pipeline's evaluation path.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import torch

from datapipes.decode import VIDEO_EXTENSIONS, SkipSample, SkipTally
from datapipes.meta import check_status, parse_meta
from datapipes.process import ClipConfig
from datapipes.shards import expand_shards, shard_samples
from datapipes.text import caption_list, decode_text

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class Unit:
    """One resumable source of videos: the sorted video files of a folder (or one file), or one shard."""

    kind: Literal["files", "shard"]
    name: str  # folder or file path, or shard URL
    files: list[str] = field(default_factory=list)  # absolute paths (kind "files")
    root: str = ""  # keys are paths relative to this folder, without extension

    def describe(self) -> dict:
        """What the unit holds, for the resume signature (a folder's file names and sizes)."""
        if self.kind == "shard":
            return {"kind": "shard", "name": self.name}
        listing = "\n".join(f"{os.path.relpath(f, self.root)}\t{os.path.getsize(f)}" for f in self.files)
        return {"kind": "files", "name": self.name, "count": len(self.files),
                "digest": hashlib.sha1(listing.encode()).hexdigest()}


@dataclass
class RawItem:
    """One input video before decoding: bytes (shards) or a path to read (folders), and its captions."""

    key: str
    source: str  # the file, or the shard URL it came from
    path: Optional[str] = None  # file to read (folders)
    data: Optional[bytes] = None  # the video's bytes (shards)
    ext: str = "mp4"
    meta: dict = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    error: Optional[SkipSample] = None  # known unusable before decoding


def _is_video_file(path: str) -> bool:
    return path.lower().rsplit(".", 1)[-1] in VIDEO_EXTENSIONS and not os.path.basename(path).startswith(".")


def _walk_videos(root: str) -> list[str]:
    """Video files under ``root``, sorted, hidden files and folders left out, symlinked folders not followed."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, n) for n in names if _is_video_file(n)]
    return sorted(found)


def _video_files(spec: str) -> Optional[list[str]]:
    """The video files a spec names when it is a video file or a local glob of them; None when it names shards."""
    if spec.endswith(SHARD_SUFFIXES) or "://" in spec or spec.startswith("pipe:"):
        return None
    if os.path.isfile(spec):
        if not _is_video_file(spec):
            raise ValueError(f"{spec} is neither a folder, a video ({', '.join(VIDEO_EXTENSIONS)}) nor a shard (.tar)")
        return [os.path.abspath(spec)]
    if not any(c in spec for c in "*?["):
        return None
    matches = sorted(glob.glob(spec))
    if not matches and _is_video_file(spec):
        raise FileNotFoundError(f"no video file matches {spec}")
    videos = [os.path.abspath(m) for m in matches if os.path.isfile(m) and _is_video_file(m)]
    if matches and len(videos) < len(matches):
        raise ValueError(f"{spec} matches files that are not videos: give videos, folders or shards (.tar)")
    return videos or None


def find_units(specs: Sequence[str]) -> list[Unit]:
    """Folders, video files (one unit for all of them) and shard specs (paths, brace patterns, globs, URLs)
    -> units, in order.

    Raises ValueError for an input that names no video and FileNotFoundError for missing shards.
    """
    if not specs:
        raise ValueError("no input: give a folder of videos, video files or shards (.tar)")
    units: list[Unit] = []
    loose: list[str] = []  # video files named one by one or by a glob
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        if os.path.isdir(spec):
            root = os.path.abspath(spec)
            files = _walk_videos(root)
            if not files:
                raise ValueError(f"{spec} holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
            units.append(Unit("files", root, files, root))
        elif (videos := _video_files(spec)) is not None:
            loose += [v for v in videos if v not in loose]
        else:
            units.extend(Unit("shard", url) for url in expand_shards(spec))
    if loose:
        root = os.path.commonpath([os.path.dirname(v) for v in loose])
        name = loose[0] if len(loose) == 1 else f"{len(loose)} video files under {root}"
        units.insert(0, Unit("files", name, sorted(loose), root))
    return units


def _sidecar_captions(video: str) -> list[str]:
    """Captions of a folder video from ``NAME.txt`` (one per line) or ``NAME.json`` (caption/captions)."""
    stem = os.path.splitext(video)[0]
    try:
        if os.path.isfile(stem + ".json"):
            meta = json.loads(Path(stem + ".json").read_text(encoding="utf-8"))
            if isinstance(meta, dict):
                return caption_list(meta, None)
        if os.path.isfile(stem + ".txt"):
            lines = Path(stem + ".txt").read_text(encoding="utf-8").splitlines()
            return [line.strip() for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []  # a bad caption file leaves the video searchable, without captions
    return []


def _shard_item(raw: dict) -> RawItem:
    """A raw webdataset sample -> RawItem. Metadata is read and checked as the training pipeline reads it
    (``datapipes.meta``): an unreadable json, a failed download (video2dataset's ``status`` with its
    ``error_message`` as the detail) or a sample without a video file becomes ``error`` (skipped, listed in
    ``skipped.jsonl``)."""
    item = RawItem(key=str(raw.get("__key__")), source=str(raw.get("__url__")))
    try:
        item.meta = parse_meta(raw)
        check_status(item.meta)
    except SkipSample as e:
        item.error = e
        return item
    ext = next((e for e in VIDEO_EXTENSIONS if e in raw), None)
    if ext is None:  # the index holds videos the app can play: image samples are not indexed
        item.error = SkipSample("no_video", f"files: {sorted(k for k in raw if not k.startswith('__'))}")
        return item
    item.ext, item.data = ext, raw[ext]
    try:
        item.captions = caption_list(item.meta, decode_text(raw.get("txt")))
    except SkipSample:
        item.captions = caption_list(item.meta, None)
    return item


def unit_items(unit: Unit, start: int, tar_errors: list[dict]) -> Iterator[RawItem]:
    """The items of a unit from ordinal ``start`` on; shard-level read errors are appended to ``tar_errors``."""
    if unit.kind == "files":
        for path in unit.files[start:]:
            key = os.path.splitext(os.path.relpath(path, unit.root))[0].replace(os.sep, "/")
            yield RawItem(key=key, source=path, path=path, ext=path.rsplit(".", 1)[-1].lower(),
                          captions=_sidecar_captions(path))
        return
    counter = SkipTally()
    for i, raw in enumerate(shard_samples([{"url": unit.name}], counter)):
        if i >= start:
            yield _shard_item(raw)
    for reason, n in counter.totals().items():
        tar_errors.append({"key": None, "source": unit.name, "reason": reason, "count": n,
                           "detail": counter.last_detail.get(reason, "")})


def item_clip(item: RawItem, cfg: ClipConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One item -> its normalised clip (T, C, H, W) and frame mask (T,) bool (False: a frame padding a short
    clip): the item's bytes read, then ``vl.search.encoder.prepare_video_clip``. Raises ``SkipSample`` for an item
    that gives no clip (its known ``error``, a file that cannot be read, ``decode_error``, ``not_a_video``, ...)."""
    from vl.search.encoder import prepare_video_clip

    if item.error is not None:
        raise item.error
    try:
        data = item.data if item.data is not None else Path(item.path).read_bytes()
    except OSError as e:
        raise SkipSample("read_error", f"{type(e).__name__}: {e}") from e
    return prepare_video_clip(data, cfg, item.meta)
