"""MSVD-QA (open-ended video QA): `*_qa.json` (+ `youtube_mapping.txt`) -> annotation JSONL.

Files: `train_qa.json`, `val_qa.json`, `test_qa.json`, JSON lists of `{"answer", "id", "question",
"video_id" (int)}` (no `category_id`: the question type is the question's first word, see
`msrvtt_qa.py`); and, optionally, `youtube_mapping.txt` (lines `<youtube clip name> vidN`, e.g.
`-4wsuPCjDBc_5_15 vid1`; a malformed line is an error naming the file and line, not a skipped
record). A `video_id` N is found as the QA authors store it, `vidN.avi` (their
`video/` folder), or as the clip file of the MSVD release it maps to
(`YouTubeClips/-4wsuPCjDBc_5_15.avi`). The record id is `vidN`. Outputs `train.jsonl`, `val.jsonl`,
`test.jsonl`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (AnnotationError, Record, Report, build_parser, find_annotation, finish,
    parse_args, run)
from scripts.prepare.msrvtt_qa import convert_qa

MAPPING_FILE = "youtube_mapping.txt"


def parse_mapping(path: Path) -> dict[int, str]:
    """`vidN` number -> YouTube clip name, from `youtube_mapping.txt`.

    A line of this file is no record (records are the videos of the QA files), so a malformed line is
    not counted as a skipped sample: it is an `AnnotationError` naming the file and line. The released
    file (1,970 lines `<clip> vidN`) has none; one means a different or damaged file, and dropping its
    line would only show up later, misleadingly, as a "missing video".
    """
    mapping: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
                raise AnnotationError(
                    f"{path}:{line_no}: expected '<youtube clip name> vidN', got {line.strip()[:80]!r}"
                )
            mapping[int(parts[1][3:])] = parts[0]
    return mapping


def authors_name(video_id: int) -> str:
    """The QA authors' name of video `video_id`: 1 -> `vid1` (stored as `video/vid1.avi`)."""
    return f"vid{video_id}"


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    parser = build_parser("msvd_qa", __doc__)
    args = parse_args(parser, argv)
    report = Report("msvd_qa")
    mapping_path = find_annotation(args.annotations, [MAPPING_FILE])
    mapping = parse_mapping(mapping_path) if mapping_path is not None else {}
    if mapping_path is None:
        report.note(f"no {MAPPING_FILE}: videos are looked up as vidN.avi only")
    outputs = convert_qa(args.annotations, report, authors_name, ".avi")
    clip_names = {authors_name(n): clip for n, clip in mapping.items()}

    def aliases(record: Record) -> list[str]:
        """The MSVD clip the record's `vidN` maps to, if any."""
        clip = clip_names.get(record["id"])
        return [f"{clip}.avi"] if clip else []

    return finish(outputs, args, report, aliases)


if __name__ == "__main__":
    sys.exit(run(main))
