"""MSVD-QA (open-ended video QA): `*_qa.json` + `youtube_mapping.txt` -> annotation JSONL.

The QA files have MSRVTT-QA's format (see `msrvtt_qa.py`); their integer `video_id` N names `vidN`, and
`youtube_mapping.txt` (lines `<youtube clip name> vidN`, e.g. `-4wsuPCjDBc_5_15 vid1`) maps it to the
clip file of the MSVD release (`YouTubeClips/-4wsuPCjDBc_5_15.avi`). Questions whose video has no
mapping line are skipped and counted. Outputs `train.jsonl`, `val.jsonl`, `test.jsonl`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import Report, build_parser, finish, parse_args, require_annotation, run
from scripts.prepare.msrvtt_qa import convert_qa

MAPPING_FILE = "youtube_mapping.txt"


def parse_mapping(path: Path, report: Report) -> dict[int, str]:
    """`vidN` number -> YouTube clip name, from `youtube_mapping.txt`; malformed lines counted."""
    mapping: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
                report.skip("malformed mapping line", f"{path.name}:{line_no}")
                continue
            mapping[int(parts[1][3:])] = parts[0]
    return mapping


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    parser = build_parser("msvd_qa", __doc__.splitlines()[0])
    args = parse_args(parser, argv)
    report = Report("msvd_qa")
    mapping = parse_mapping(require_annotation(args.annotations, [MAPPING_FILE]), report)
    return finish(convert_qa(args.annotations, report, mapping.get, ".avi"), args, report)


if __name__ == "__main__":
    sys.exit(run(main))
