"""DiDeMo (paragraph-to-video retrieval): `train_data.json`, `val_data.json`, `test_data.json` -> JSONL.

Each file is a JSON list of moment descriptions `{"video", "times", "description", "annotation_id",
"num_segments", "dl_link", ...}`; `times` holds each annotator's `[first, last]` 5-second segment.
All descriptions of a video become one record: `captions` in temporal order (by the median annotated
start, then annotation id) and `caption`, the paragraph they make joined with spaces, as
paragraph retrieval (ClipBERT, Frozen) uses it. Outputs `train.jsonl`, `val.jsonl`, `test.jsonl`.

Video names are Flickr's (`.mov`, `.avi`, `.mp4`, `.mpg`, `.wmv`, `.m4v`, `.3gp`, `.3g2`, `.mts`,
`.m2ts`, or a bare `.`). A video is found under its own name, as the official AWS download script
saves it (`<video name>.mp4`, e.g. `x.m4v.mp4`, `x..mp4`), or converted (`x.mp4` for `x.mov`).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (AnnotationError, Record, Report, clean_text, convert_and_finish, find_annotation,
                                    progress, read_json, run, strip_video_suffix)

DATA_FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}


def moment_start(times: Any) -> float | None:
    """Median first segment over the annotators' `[first, last]` pairs, or None if `times` is malformed."""
    if not isinstance(times, list) or not times:
        return None
    starts = []
    for pair in times:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, (int, float)) for t in pair):
            return None
        starts.append(float(pair[0]))
    return statistics.median(starts)


def join_paragraph(sentences: Sequence[str]) -> str:
    """Sentences joined with single spaces into one paragraph."""
    return " ".join(clean_text(s) for s in sentences)


def group_descriptions(items: Any, split: str, report: Report) -> list[Record]:
    """One record per video with its descriptions in temporal order and their paragraph."""
    if not isinstance(items, list):
        raise AnnotationError(f"DiDeMo {split}: the file must hold a JSON list of moments")
    moments: dict[str, list[tuple[float, Any, str]]] = {}
    for item in progress(items, f"{split} moments"):
        video = item.get("video") if isinstance(item, dict) else None
        text = item.get("description") if isinstance(item, dict) else None
        start = moment_start(item.get("times")) if isinstance(item, dict) else None
        if not isinstance(video, str) or not video or not isinstance(text, str) or not text.strip() or start is None:
            report.skip("malformed moment", str(item)[:80])
            continue
        moments.setdefault(video, []).append((start, item.get("annotation_id", 0), clean_text(text)))
    records = []
    for video, found in moments.items():
        ordered = [text for _, _, text in sorted(found, key=lambda m: (m[0], str(m[1])))]
        records.append(
            {
                "id": strip_video_suffix(video),
                "video": video,
                "split": split,
                "caption": join_paragraph(ordered),
                "captions": ordered,
            }
        )
    return records


def convert(sources: Sequence[Path], report: Report) -> dict[str, list[Record]]:
    """Records per split for every `*_data.json` found."""
    outputs = {}
    for split, name in DATA_FILES.items():
        path = find_annotation(sources, [name])
        if path is not None:
            outputs[split] = group_descriptions(read_json(path), split, report)
    if not outputs:
        raise FileNotFoundError(f"none of {', '.join(DATA_FILES.values())} found in {', '.join(map(str, sources))}")
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("didemo", __doc__, convert, argv)


if __name__ == "__main__":
    sys.exit(run(main))
