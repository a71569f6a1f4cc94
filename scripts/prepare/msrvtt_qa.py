"""MSRVTT-QA (open-ended video QA): `train_qa.json` / `val_qa.json` / `test_qa.json` -> annotation JSONL.

Each file is a JSON list of `{"answer", "category_id", "id", "question", "video_id" (int)}`.
`category_id` is the MSR-VTT *video* category (0..19, e.g. music, sports), not a question type: the
type is the question's first word (what / who / how / when / where), as the QA authors' evaluation
and ClipBERT count it; any other first word is type `other`. Questions are grouped by video into
one record per video, `qa: [{"question", "answer", "type", "id"}]`; video `N` is `videoN.mp4`.
Outputs `train.jsonl`, `val.jsonl`, `test.jsonl`. MSVD-QA shares this format without `category_id`
(see `msvd_qa.py`). The summary counts questions per type.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (AnnotationError, Record, Report, clean_text, convert_and_finish, find_annotation,
                                    progress, read_json, run)

QA_FILES = {"train": "train_qa.json", "val": "val_qa.json", "test": "test_qa.json"}
QUESTION_TYPES = ("what", "who", "how", "when", "where")


def question_type(question: str) -> str:
    """The question's first word when it is one of QUESTION_TYPES (case-insensitive), else `other`."""
    words = question.split()
    first = words[0].lower() if words else ""
    return first if first in QUESTION_TYPES else "other"


def parse_qa_item(item: Any) -> tuple[int, dict[str, Any]] | None:
    """(video id, qa entry) of one question, or None when a field is missing or of the wrong type."""
    if not isinstance(item, dict):
        return None
    question, answer, video_id = item.get("question"), item.get("answer"), item.get("video_id")
    if isinstance(video_id, str) and video_id.strip().isdigit():
        video_id = int(video_id)
    if not isinstance(question, str) or not question.strip() or not isinstance(video_id, int):
        return None
    if not isinstance(answer, (str, int)) or not str(answer).strip():
        return None
    entry = {
        "question": clean_text(question),
        "answer": clean_text(str(answer)),
        "type": question_type(question),
    }
    if "id" in item:
        entry["id"] = item["id"]
    return video_id, entry


def group_qa(items: Any, split: str, video_name: Callable[[int], str], report: Report) -> list[Record]:
    """One record per video with its questions in file order; malformed items counted.

    `video_name(video_id)` gives the record id, also the file stem of the video.
    """
    if not isinstance(items, list):
        raise AnnotationError(f"{split}: a QA file must hold a JSON list of questions")
    grouped: dict[int, list[dict[str, Any]]] = {}
    for item in progress(items, f"{split} questions"):
        parsed = parse_qa_item(item)
        if parsed is None:
            report.skip("malformed question", str(item)[:80])
            continue
        grouped.setdefault(parsed[0], []).append(parsed[1])
    types = Counter(entry["type"] for qa in grouped.values() for entry in qa)
    report.note(f"{split} questions per type: " + ", ".join(f"{t} {n}" for t, n in types.most_common()))
    records = []
    for video_id, qa in grouped.items():
        stem = video_name(video_id)
        records.append({"id": stem, "video": stem, "split": split, "qa": qa})
    return records


def convert_qa(
    sources: Sequence[Path], report: Report, video_name: Callable[[int], str], suffix: str
) -> dict[str, list[Record]]:
    """Records per split for every `*_qa.json` found; default video file is `<stem><suffix>`."""
    outputs: dict[str, list[Record]] = {}
    for split, name in QA_FILES.items():
        path = find_annotation(sources, [name])
        if path is None:
            continue
        records = group_qa(read_json(path), split, video_name, report)
        outputs[split] = [{**r, "video": r["video"] + suffix} for r in records]
    if not outputs:
        raise FileNotFoundError(f"none of {', '.join(QA_FILES.values())} found in {', '.join(map(str, sources))}")
    return outputs


def msrvtt_video_name(video_id: int) -> str:
    """MSRVTT-QA video ids are MSR-VTT's numbers: 7 -> `video7`."""
    return f"video{video_id}"


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("msrvtt_qa", __doc__,
                              lambda sources, report: convert_qa(sources, report, msrvtt_video_name, ".mp4"), argv)


if __name__ == "__main__":
    sys.exit(run(main))
