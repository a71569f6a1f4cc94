"""MSR-VTT multiple choice (JSFusion's test set, 2,990 clips): its two published files -> records.

Used by `msrvtt.py`, which writes them as `mc_test.jsonl`. Either file is read:
- `msrvtt_mc_test.jsonl` (ClipBERT, All-in-one): one JSON object a line, `{"qid", "clip_name"
  ("video7010"), "answer" (0-based index into options), "options" ([5 sentences])}`.
- `MSR_MC_test.csv` (JSFusion): tab-separated with a header, columns `vid_key` ("msr7010", the clip
  `video7010`), `a1`..`a5`, `answer` (0-based index into a1..a5), and `key` (the question id) when
  present.
Each question becomes `qa: [{"question": "", "choices", "answer_idx", "id"}]` (no question text: pick
the clip's caption), grouped per clip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.prepare.common import AnnotationError, Record, Report, clean_text, progress, read_table

JSONL_FILE = "msrvtt_mc_test.jsonl"
CSV_FILE = "MSR_MC_test.csv"
MC_FILES = (JSONL_FILE, CSV_FILE)
NUM_CHOICES = 5
CHOICE_COLUMNS = ("a1", "a2", "a3", "a4", "a5")


def mc_entry(options: Any, answer: Any, qid: Any) -> dict[str, Any] | None:
    """A multiple-choice qa entry, or None unless there are 5 non-empty options and a 0-based answer."""
    if not isinstance(options, list) or len(options) != NUM_CHOICES:
        return None
    choices = [clean_text(o) if isinstance(o, str) else "" for o in options]
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if not all(choices) or not isinstance(answer, int) or not 0 <= answer < NUM_CHOICES:
        return None
    return {"question": "", "choices": choices, "answer_idx": answer, "id": qid}


def jsfusion_clip(vid_key: str) -> str | None:
    """JSFusion's `msr7010` -> MSR-VTT's `video7010`; None for any other form."""
    number = vid_key[3:] if vid_key.startswith("msr") else ""
    return f"video{number}" if number.isdigit() else None


def group(entries: list[tuple[str, dict[str, Any]]]) -> list[Record]:
    """One test record per clip with its questions in file order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for clip, entry in entries:
        grouped.setdefault(clip, []).append(entry)
    return [{"id": clip, "video": f"{clip}.mp4", "split": "test", "qa": qa} for clip, qa in grouped.items()]


def parse_jsonl(path: Path, report: Report) -> list[Record]:
    """Records of ClipBERT's `msrvtt_mc_test.jsonl`; malformed lines counted, bad JSON an error."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(progress(f, path.name), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{line_no}: not valid JSON: {err.msg}") from err
            clip = item.get("clip_name") if isinstance(item, dict) else None
            entry = mc_entry(item.get("options"), item.get("answer"), item.get("qid")) if clip else None
            if not isinstance(clip, str) or entry is None:
                report.skip("malformed multiple-choice row", f"{path.name}:{line_no}")
                continue
            entries.append((clip.strip(), entry))
    return group(entries)


def parse_csv(path: Path, report: Report) -> list[Record]:
    """Records of JSFusion's `MSR_MC_test.csv`; malformed rows counted, a missing column an error."""
    entries = []
    for line_no, row in progress(read_table(path, ["vid_key", *CHOICE_COLUMNS, "answer"]), path.name):
        clip = jsfusion_clip((row.get("vid_key") or "").strip())
        qid = (row.get("key") or "").strip() or f"{path.name}:{line_no}"
        entry = mc_entry([row.get(c) for c in CHOICE_COLUMNS], (row.get("answer") or "").strip(), qid)
        if clip is None or entry is None:
            report.skip("malformed multiple-choice row", f"{path.name}:{line_no}")
            continue
        entries.append((clip, entry))
    return group(entries)


def parse(path: Path, report: Report) -> list[Record]:
    """Records of either published file, chosen by its name."""
    return parse_jsonl(path, report) if path.name == JSONL_FILE else parse_csv(path, report)
