"""Write WebDataset shards from a folder of videos (or images) plus an annotation file (DESIGN §2).

Annotations are JSONL (one object per line with ``video`` and any of ``caption``/``captions``/``qa``/
``start``/``end``; other fields are kept in ``KEY.json``) or CSV with at least ``video,caption``. Every
row becomes ``KEY.mp4`` (the file's own extension), ``KEY.txt`` (first caption) and ``KEY.json``.
Keys are derived from the video path and clip bounds, so they are the same on every run. Rows that
cannot be used are skipped and reported by reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

from datapipes.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, SkipSample, probe_video


@dataclass
class WriteReport:
    """What ``write_shards`` did."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    pattern: str = ""  # brace pattern of the shards written
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> inputs skipped for it

    def skip(self, reason: str, what: str) -> None:
        self.skipped.setdefault(reason, []).append(what)

    def as_dict(self) -> dict:
        return {"written": self.written, "num_shards": len(self.shards), "pattern": self.pattern,
                "shards": self.shards, "skipped": {r: len(v) for r, v in self.skipped.items()},
                "skipped_examples": {r: v[:10] for r, v in self.skipped.items()}}


def read_annotations(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a ``.jsonl``/``.json`` (one object per line) or ``.csv`` annotation file.

    The file is opened and (CSV) its header checked before this returns, so a file that cannot be
    read at all fails at once, naming the file and line, before any shard is opened. A line that is not
    UTF-8 or not a JSON object yields ``(line, {"__error__": message})``, reported as ``bad_row``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return _read_csv(path)
    if ext not in (".jsonl", ".json", ".ndjson"):
        raise ValueError(f"{path}: annotations must be .jsonl (one JSON object per line) or .csv")
    return _read_jsonl(path)


def _not_utf8(text: str) -> Optional[str]:
    """Where ``text`` (read with ``surrogateescape``) holds bytes that are not UTF-8, else None."""
    for column, ch in enumerate(text, start=1):
        if "\udc80" <= ch <= "\udcff":
            return f"not UTF-8: byte 0x{ord(ch) - 0xDC00:02x} at column {column}"
    return None


def _read_csv(path: str) -> Iterator[tuple[int, dict]]:
    """Rows of a CSV with a header naming at least a ``video`` column (checked now, not when iterated)."""
    f = open(path, newline="", encoding="utf-8", errors="surrogateescape")
    reader = csv.DictReader(f)
    try:
        fields = reader.fieldnames
    except csv.Error as e:
        f.close()
        raise ValueError(f"{path}, line 1: not a CSV header: {e}") from e
    if not fields or "video" not in fields:
        f.close()
        raise ValueError(f"{path}, line 1: a CSV needs a header with a `video` column, got columns {fields}")

    def rows() -> Iterator[tuple[int, dict]]:
        with f:
            line = reader.line_num + 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield line, {"__error__": f"not CSV: {e}"}
                    line = reader.line_num + 1
                    continue
                values = [v for v in row.values() if isinstance(v, str)]
                problem = next((p for p in map(_not_utf8, values) if p), None)
                if problem:
                    yield line, {"__error__": problem}
                else:
                    yield line, {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                line = reader.line_num + 1

    return rows()


def _read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Rows of a JSON-lines file; each line is decoded on its own, so one bad line spoils only itself."""
    f = open(path, "rb")

    def rows() -> Iterator[tuple[int, dict]]:
        with f:
            for i, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield i, {"__error__": f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"}
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, {"__error__": f"not JSON: {e.msg} at column {e.colno}"}
                    continue
                yield i, row if isinstance(row, dict) else {"__error__": "not a JSON object"}

    return rows()


def sample_key(video: str, start: Optional[float], end: Optional[float]) -> str:
    """A key stable across runs: the file's stem (safe characters only) plus a hash of path and bounds."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(video))[0])[:80] or "sample"
    digest = hashlib.sha1(f"{video}|{start}|{end}".encode()).hexdigest()[:10]
    return f"{stem}_{digest}"


def _captions(row: dict) -> list[str]:
    """The captions of a row (``captions`` list or a single ``caption``); raises for wrong types."""
    raw = row.get("captions", row.get("caption"))
    if raw is None:
        return []
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise SkipSample("bad_caption", f"captions must be strings, got {raw!r:.80}")
    return [c.strip() for c in raw if c.strip()]


def _bounds(row: dict, duration: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """Validated ``start``/``end`` seconds of a row (None when absent)."""
    try:
        start = None if row.get("start") is None else float(row["start"])
        end = None if row.get("end") is None else float(row["end"])
    except (TypeError, ValueError) as e:
        raise SkipSample("bad_clip_bounds", str(e)) from e
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise SkipSample("bad_clip_bounds", f"start={start} end={end}")
    if duration and start is not None and start >= duration:
        raise SkipSample("bad_clip_bounds", f"start={start} past the end of a {duration:.2f}s video")
    return start, end


def build_sample(folder: str, row: dict, probe: bool = True) -> dict:
    """One annotation row -> a webdataset sample dict; raises ``SkipSample`` with the reason otherwise."""
    if "__error__" in row:
        raise SkipSample("bad_row", row["__error__"])
    video = row.get("video")
    if not isinstance(video, str) or not video:
        raise SkipSample("no_video_field", "the row has no `video` path")
    ext = os.path.splitext(video)[1].lower().lstrip(".")
    if ext not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        raise SkipSample("unsupported_format", ext or "no extension")
    path = video if os.path.isabs(video) else os.path.join(folder, video)
    if not os.path.isfile(path):
        raise SkipSample("missing_file", path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:  # no permission, a folder named like a video, an I/O error
        raise SkipSample("unreadable_file", f"{path}: {e.strerror or e}") from e
    if not data:
        raise SkipSample("empty_file", path)
    captions = _captions(row)
    if not captions and not row.get("qa"):
        raise SkipSample("no_caption")
    info = _probe(data, ext) if probe else {}
    start, end = _bounds(row, info.get("duration"))
    meta = {k: v for k, v in row.items() if k not in ("video", "caption", "captions")}
    meta.update(info, key=sample_key(video, start, end), status="success", source=video)
    if captions:
        meta.update(caption=captions[0], captions=captions)
    sample = {"__key__": meta["key"], ext: data, "json": json.dumps(meta, ensure_ascii=False).encode()}
    if captions:
        sample["txt"] = captions[0].encode("utf-8")
    return sample


def _probe(data: bytes, ext: str) -> dict:
    """Width, height and (videos) fps, frame count and duration; raises ``SkipSample`` when unreadable."""
    if ext in IMAGE_EXTENSIONS:
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
                return {"width": img.width, "height": img.height}
        except Exception as e:  # PIL raises several error types
            raise SkipSample("unreadable_image", f"{type(e).__name__}: {e}") from e
    try:
        return probe_video(data)
    except SkipSample as e:
        raise SkipSample("unreadable_video", e.detail) from e


def parse_size(text: str) -> float:
    """Bytes from ``3e9``, ``500M``, ``1.5G``, ``200K`` (powers of 1000)."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 3e9, 500M, 1.5G)")
    return float(match.group(1)) * 1000 ** " KMGT".index(match.group(2).upper() or " ")


PARTIAL = ".partial"  # suffix of shards still being written


def _remove(paths: list[str]) -> None:
    """Delete the files of ``paths`` that exist."""
    for path in dict.fromkeys(paths):
        if path and os.path.exists(path):
            os.remove(path)


def write_shards(folder: str, annotations: str, out: str, *, prefix: str = "shard", maxcount: int = 1000,
                 maxsize: float = 1e9, probe: bool = True, progress: bool = True) -> WriteReport:
    """Write ``out/{prefix}-000000.tar ...`` from ``annotations`` about files under ``folder``.

    Returns a ``WriteReport`` (also saved as ``out/{prefix}-summary.json``). Duplicate keys (two rows
    for the same clip) get ``-1``, ``-2`` suffixes in annotation order. Shards are written under a
    ``.partial`` name and renamed when every row is done, so a run that fails or is interrupted leaves
    no shard, complete or not, where a glob of ``*.tar`` would pick it up.
    """
    import webdataset as wds
    from tqdm import tqdm

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder not found: {folder}")
    rows = read_annotations(annotations)  # a file that cannot be read fails here, before any shard
    os.makedirs(out, exist_ok=True)
    report, seen = WriteReport(), {}
    partial: list[str] = []  # shards are written as NAME.tar.partial and renamed once every row is done
    writer = wds.ShardWriter(os.path.join(out, f"{prefix}-%06d.tar{PARTIAL}"), maxcount=maxcount,
                             maxsize=maxsize, verbose=0, post=partial.append)
    try:
        with writer:
            for line, row in tqdm(rows, desc="vl data shards", unit="row", disable=not progress):
                try:
                    sample = build_sample(folder, row, probe=probe)
                except SkipSample as e:
                    video = f"{row['video']} " if isinstance(row.get("video"), str) else ""
                    report.skip(e.reason, f"{annotations}, line {line}: {video}{e.detail}".strip())
                    continue
                key = sample["__key__"]
                seen[key] = seen.get(key, 0) + 1
                if seen[key] > 1:  # another row for the same clip (e.g. one row per caption)
                    sample["__key__"] = f"{key}-{seen[key] - 1}"
                    sample["json"] = json.dumps({**json.loads(sample["json"]), "key": sample["__key__"]}).encode()
                writer.write(sample)
                report.written += 1
    except BaseException:  # an error or an interrupt: leave no shard behind, complete or not
        _remove(partial + [writer.fname or ""])
        raise
    if report.written == 0:  # the writer always opens one shard: do not leave an empty one behind
        _remove(partial)
    else:
        for path in partial:
            os.replace(path, path[: -len(PARTIAL)])
            report.shards.append(path[: -len(PARTIAL)])
    if report.shards:
        report.pattern = os.path.join(out, f"{prefix}-{{000000..{len(report.shards) - 1:06d}}}.tar")
    with open(os.path.join(out, f"{prefix}-summary.json"), "w") as f:
        json.dump(report.as_dict(), f, indent=2)
    return report
