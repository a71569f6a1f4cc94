"""TGIF-QA: the official question files -> annotation JSONL, one file per task and split.

Files `{Train,Test}_{task}_question.csv` for task frameqa, count, action, transition (e.g.
`Train_frameqa_question.csv`, `Test_transition_question.csv`; the dataset README calls them `.tsv`,
both are read), tab-separated with a header line, fields quoted as CSV (a choice holding quotes is
written in double quotes with its quotes doubled, as pandas writes it; it is read back as
`write "i love you"`):
- `frameqa`: gif_name, question, answer, type (0..3 = object/number/color/location), vid_id, key,
  description -> open-ended `qa: [{"question", "answer", "type", "id"}]`.
- `count`: gif_name, question, answer (a number), vid_id, key -> open-ended, type `count`.
- `action`, `transition`: gif_name, question, a1..a5, answer (index 0..4), vid_id, key -> multiple
  choice `qa: [{"question", "choices", "answer_idx", "id"}]`.
The question id is `vid_id` (`FRAMEQA1159`, `TRANS23`), unique per question; `key` numbers the GIF's
description and is shared by its questions. Questions are grouped per GIF (`<gif_name>.gif`).
Outputs `<task>_<split>.jsonl` (split: train, test).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (Record, Report, build_parser, clean_text, find_annotation, finish, parse_args,
                                    progress, read_table, run)

TASKS = ("frameqa", "count", "action", "transition")
MULTIPLE_CHOICE = ("action", "transition")
SPLITS = {"train": "Train", "test": "Test"}
FRAMEQA_TYPES = {"0": "object", "1": "number", "2": "color", "3": "location"}
CHOICE_COLUMNS = ("a1", "a2", "a3", "a4", "a5")


def question_file_names(task: str, split: str) -> list[str]:
    """The names the question file of a task and split goes by (`.csv` as shipped, `.tsv` as documented)."""
    stem = f"{SPLITS[split]}_{task}_question"
    return [f"{stem}.csv", f"{stem}.tsv"]


def open_ended_entry(row: dict[str, str], task: str) -> dict[str, Any] | None:
    """The qa entry of a frameqa or count row, or None when question or answer is missing."""
    question, answer = clean_text(row.get("question") or ""), clean_text(row.get("answer") or "")
    if not question or not answer:
        return None
    raw_type = (row.get("type") or "").strip()
    qtype = FRAMEQA_TYPES.get(raw_type, raw_type or "unknown") if task == "frameqa" else "count"
    return {"question": question, "answer": answer, "type": qtype, "id": (row.get("vid_id") or "").strip()}


def multiple_choice_entry(row: dict[str, str]) -> dict[str, Any] | None:
    """The qa entry of an action or transition row, or None when a choice or the answer index is bad."""
    question = clean_text(row.get("question") or "")
    choices = [clean_text(row.get(c) or "") for c in CHOICE_COLUMNS]
    answer = (row.get("answer") or "").strip()
    if not question or not all(choices) or not answer.isdigit() or not 0 <= int(answer) < len(choices):
        return None
    qid = (row.get("vid_id") or "").strip()
    return {"question": question, "choices": choices, "answer_idx": int(answer), "id": qid}


def parse_questions(path: Path, task: str, split: str, report: Report) -> list[Record]:
    """One record per GIF with its questions of one task, in file order; bad rows counted."""
    mc = task in MULTIPLE_CHOICE
    required = ["gif_name", "question", "answer", "vid_id", *(CHOICE_COLUMNS if mc else ())]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for line_no, row in progress(read_table(path, required), f"{task} {split}"):
        gif = (row.get("gif_name") or "").strip()
        entry = (multiple_choice_entry(row) if mc else open_ended_entry(row, task)) if gif else None
        if entry is None:
            report.skip(f"malformed {task} row", f"{path.name}:{line_no}")
            continue
        grouped.setdefault(gif, []).append(entry)
    return [{"id": gif, "video": f"{gif}.gif", "split": split, "qa": qa} for gif, qa in grouped.items()]


def convert(sources: Sequence[Path], report: Report, tasks: Sequence[str] = TASKS) -> dict[str, list[Record]]:
    """Records per `<task>_<split>` for every question file found."""
    outputs: dict[str, list[Record]] = {}
    for task in tasks:
        for split in SPLITS:
            path = find_annotation(sources, question_file_names(task, split))
            if path is not None:
                outputs[f"{task}_{split}"] = parse_questions(path, task, split, report)
    if not outputs:
        example = question_file_names(tasks[0], "train")[0]
        raise FileNotFoundError(f"no TGIF-QA question files (e.g. {example}) in {', '.join(map(str, sources))}")
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    parser = build_parser("tgif_qa", __doc__)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to convert")
    args = parse_args(parser, argv)
    report = Report("tgif_qa")
    return finish(convert(args.annotations, report, args.tasks), args, report)


if __name__ == "__main__":
    sys.exit(run(main))
