"""YouCook2 (clip retrieval and captioning): `youcookii_annotations_trainval.json` -> annotation JSONL.

The file is `{"database": {<YouTube id>: {"subset": "training"|"validation", "duration", "recipe_type",
"video_url", "annotations": [{"segment": [start, end], "sentence", "id"}]}}}`. Each annotated segment
becomes one record: `start`/`end` in seconds inside the whole video, `caption` its sentence, key
`<video id>_<segment id>`. Segments with start < 0, end <= start or end past the duration (beyond
`TOLERANCE_S`) are skipped and counted, as are videos without annotations (the test file has none).
Videos are found by id with any suffix (the release stores `raw_videos/<subset>/<recipe>/<id>.<ext>`).
Outputs `train.jsonl`, `val.jsonl`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (AnnotationError, Record, Report, clean_text, convert_and_finish, progress,
                                    read_json, require_annotation, run)

ANNOTATION_FILES = ("youcookii_annotations_trainval.json",)
SUBSETS = {"training": "train", "validation": "val", "testing": "test"}
TOLERANCE_S = 1.0  # segment ends may overshoot the rounded duration by this much


def segment_record(video_id: str, video: dict[str, Any], ann: Any, split: str, report: Report) -> Record | None:
    """The record of one annotated segment, or None (counted) when it is malformed or out of range."""
    segment = ann.get("segment") if isinstance(ann, dict) else None
    sentence = ann.get("sentence") if isinstance(ann, dict) else None
    if (
        not isinstance(segment, (list, tuple))
        or len(segment) != 2
        or not all(isinstance(t, (int, float)) for t in segment)
        or not isinstance(sentence, str)
        or not sentence.strip()
    ):
        report.skip("malformed segment", video_id)
        return None
    start, end = float(segment[0]), float(segment[1])
    duration = video.get("duration")
    if start < 0 or end <= start or (isinstance(duration, (int, float)) and end > duration + TOLERANCE_S):
        report.skip("segment out of range", f"{video_id} {segment}")
        return None
    return {
        "id": f"{video_id}_{ann.get('id', 0)}",
        "video": f"{video_id}.mp4",
        "split": split,
        "caption": clean_text(sentence),
        "start": start,
        "end": end,
        "recipe_type": str(video.get("recipe_type", "")),
    }


def parse_database(data: Any, report: Report) -> dict[str, list[Record]]:
    """Segment records grouped by split (train, val; test when annotated)."""
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise AnnotationError("a YouCook2 annotation file must hold {'database': {video id: ...}}")
    outputs: dict[str, list[Record]] = {}
    for video_id, video in progress(data["database"].items(), "videos", total=len(data["database"])):
        split = SUBSETS.get(video.get("subset")) if isinstance(video, dict) else None
        if split is None:
            report.skip("malformed video entry", str(video_id))
            continue
        annotations = video.get("annotations")
        if not isinstance(annotations, list) or not annotations:
            report.skip("video without annotations", str(video_id))
            continue
        for ann in annotations:
            record = segment_record(str(video_id), video, ann, split, report)
            if record is not None:
                outputs.setdefault(split, []).append(record)
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("youcook2", __doc__, lambda sources, report: parse_database(
        read_json(require_annotation(sources, ANNOTATION_FILES)), report), argv)


if __name__ == "__main__":
    sys.exit(run(main))
