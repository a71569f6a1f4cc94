"""ActivityNet Captions (paragraph-to-video retrieval, captioning): `train.json`, `val_1.json`,
`val_2.json` -> annotation JSONL.

Each file maps a video id (`v_<YouTube id>`) to `{"duration", "timestamps": [[start, end], ...],
"sentences": [...]}`. A video becomes one record: `captions` (its sentences sorted by start time),
`caption` (the paragraph they make) and `segments` (the matching `[start, end]` in seconds); the whole
video is used, so no `start`/`end`. Videos are looked up as `v_<id>` and as `<id>` (downloads differ)
with any video suffix. Outputs `train.jsonl`, `val_1.jsonl`, `val_2.jsonl` (`split` train / val; val_1
is the usual paragraph-retrieval test set).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (AnnotationError, Record, Report, clean_text, convert_and_finish, find_annotation,
                                    progress, read_json, run)
from scripts.prepare.didemo import join_paragraph

CAPTION_FILES = {"train": ("train.json", "train"), "val_1": ("val_1.json", "val"), "val_2": ("val_2.json", "val")}


def video_key(video_id: str) -> str:
    """The `v_`-prefixed id ActivityNet files use (`QOlSCBRmfWY` -> `v_QOlSCBRmfWY`)."""
    return video_id if video_id.startswith("v_") else f"v_{video_id}"


def video_aliases(record: Record) -> list[str]:
    """Other names the video of a record may be stored under: the YouTube id without `v_`."""
    return [record["id"][2:]]


def valid_segment(segment: Any) -> bool:
    """A `[start, end]` pair of numbers (the release has a few with end past the duration: kept)."""
    return (
        isinstance(segment, (list, tuple)) and len(segment) == 2 and all(isinstance(t, (int, float)) for t in segment)
    )


def video_record(video_id: str, entry: Any, split: str) -> Record | None:
    """The record of one video, or None when its entry is malformed (lengths differ, bad segment, no text)."""
    if not isinstance(entry, dict):
        return None
    sentences, stamps = entry.get("sentences"), entry.get("timestamps")
    if (
        not isinstance(sentences, list)
        or not isinstance(stamps, list)
        or len(sentences) != len(stamps)
        or not sentences
    ):
        return None
    if not all(isinstance(s, str) and s.strip() for s in sentences) or not all(valid_segment(t) for t in stamps):
        return None
    order = sorted(range(len(sentences)), key=lambda i: (stamps[i][0], stamps[i][1]))
    captions = [clean_text(sentences[i]) for i in order]
    key = video_key(video_id)
    return {
        "id": key,
        "video": f"{key}.mp4",
        "split": split,
        "caption": join_paragraph(captions),
        "captions": captions,
        "segments": [[float(stamps[i][0]), float(stamps[i][1])] for i in order],
        "duration": entry.get("duration"),
    }


def parse_captions(data: Any, split: str, report: Report) -> list[Record]:
    """Records of one captions file; malformed entries counted."""
    if not isinstance(data, dict):
        raise AnnotationError(f"ActivityNet {split}: the file must hold a JSON object keyed by video id")
    records = []
    for video_id, entry in progress(data.items(), f"{split} videos", total=len(data)):
        record = video_record(str(video_id), entry, split)
        if record is None:
            report.skip("malformed video entry", str(video_id))
        else:
            records.append(record)
    return records


def convert(sources: Sequence[Path], report: Report) -> dict[str, list[Record]]:
    """Records per output for every captions file found."""
    outputs = {}
    for name, (file_name, split) in CAPTION_FILES.items():
        path = find_annotation(sources, [file_name])
        if path is not None:
            outputs[name] = parse_captions(read_json(path), split, report)
    if not outputs:
        names = [f for f, _ in CAPTION_FILES.values()]
        raise FileNotFoundError(f"none of {', '.join(names)} found in {', '.join(map(str, sources))}")
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("activitynet", __doc__, convert, argv, aliases=video_aliases)


if __name__ == "__main__":
    sys.exit(run(main))
