"""LSMDC 2016 (retrieval and movie multiple choice): the challenge's tab-separated files -> JSONL.

Retrieval files, no header, one sentence per line: `<clip_id> <start_aligned> <end_aligned>
<start_extracted> <end_extracted> <sentence>` (times `hh.mm.ss.mmm`): `LSMDC16_annos_training.csv`,
`LSMDC16_annos_val.csv`, `LSMDC16_annos_test.csv` and `LSMDC16_challenge_1000_publictect.csv` (the
1k retrieval test). A clip may carry several sentences: they are grouped into `captions`.

Multiple choice: `LSMDC16_multiple_choice_{train,valid}.csv` (the five time/clip columns, then the
correct sentence and four distractors) and `LSMDC16_multiple_choice_test_randomized.csv` (five
sentences, then the 1-based index of the correct one). Train/valid choices are shuffled with a seed
made from the clip id and line, so the answer position is not always 0 and the output is reproducible.

Clips are already cut from the movies, so the movie times are not written as `start`/`end`; a clip is
`<movie>/<clip_id>.avi`, as the release stores it. Outputs `train`, `val`, `test`, `test_1k`,
`mc_train`, `mc_val`, `mc_test` (`.jsonl`), for whichever files are present.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (Record, Report, clean_text, convert_and_finish, find_annotation, progress,
                                    read_rows, run)

RETRIEVAL_FILES = {
    "train": ("LSMDC16_annos_training.csv", "train"),
    "val": ("LSMDC16_annos_val.csv", "val"),
    "test": ("LSMDC16_annos_test.csv", "test"),
    "test_1k": ("LSMDC16_challenge_1000_publictect.csv", "test"),
}
MC_FILES = {
    "mc_train": ("LSMDC16_multiple_choice_train.csv", "train"),
    "mc_val": ("LSMDC16_multiple_choice_valid.csv", "val"),
    "mc_test": ("LSMDC16_multiple_choice_test_randomized.csv", "test"),
}
TIME = re.compile(r"^\d{2}\.\d{2}\.\d{2}\.\d{3}$")
NUM_CHOICES = 5


def clip_video(clip_id: str) -> str:
    """`1004_Juno_00.00.32.849-00.00.35.458` -> `1004_Juno/1004_Juno_00.00.32.849-00.00.35.458.avi`."""
    return f"{clip_id.rsplit('_', 1)[0]}/{clip_id}.avi"


def valid_prefix(row: list[str]) -> bool:
    """A clip id and four `hh.mm.ss.mmm` times in the first five columns."""
    return len(row) >= 5 and bool(row[0].strip()) and all(TIME.match(t.strip()) for t in row[1:5])


def parse_retrieval(path: Path, split: str, report: Report) -> list[Record]:
    """One record per clip, its sentences in file order; rows not of six valid columns counted."""
    captions: dict[str, list[str]] = {}
    for line_no, row in progress(read_rows(path), f"{path.name}"):
        if len(row) != 6 or not valid_prefix(row) or not row[5].strip():
            report.skip("malformed row", f"{path.name}:{line_no}")
            continue
        captions.setdefault(row[0].strip(), []).append(clean_text(row[5]))
    return [
        {"id": clip, "video": clip_video(clip), "split": split, "caption": texts[0], "captions": texts}
        for clip, texts in captions.items()
    ]


def mc_entry(row: list[str], randomized: bool, seed: str) -> dict[str, Any] | None:
    """The multiple-choice qa entry of one row, or None when the row is malformed."""
    expected = 5 + NUM_CHOICES + (1 if randomized else 0)
    if len(row) != expected or not valid_prefix(row):
        return None
    choices = [clean_text(c) for c in row[5 : 5 + NUM_CHOICES]]
    if not all(choices):
        return None
    if randomized:
        answer = row[-1].strip()
        if not answer.isdigit() or not 1 <= int(answer) <= NUM_CHOICES:
            return None
        return {"question": "", "choices": choices, "answer_idx": int(answer) - 1}
    order = list(range(NUM_CHOICES))
    random.Random(seed).shuffle(order)  # the file puts the correct sentence first
    return {"question": "", "choices": [choices[i] for i in order], "answer_idx": order.index(0)}


def parse_multiple_choice(path: Path, split: str, randomized: bool, report: Report) -> list[Record]:
    """One record per clip with its multiple-choice questions (an empty `question`: pick the caption)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for line_no, row in progress(read_rows(path), f"{path.name}"):
        entry = mc_entry(row, randomized, seed=f"{row[0].strip() if row else ''}:{line_no}")
        if entry is None:
            report.skip("malformed multiple-choice row", f"{path.name}:{line_no}")
            continue
        grouped.setdefault(row[0].strip(), []).append(entry)
    return [{"id": clip, "video": clip_video(clip), "split": split, "qa": qa} for clip, qa in grouped.items()]


def convert(sources: Sequence[Path], report: Report) -> dict[str, list[Record]]:
    """Records per output for every LSMDC file found."""
    outputs: dict[str, list[Record]] = {}
    for name, (file_name, split) in RETRIEVAL_FILES.items():
        path = find_annotation(sources, [file_name])
        if path is not None:
            outputs[name] = parse_retrieval(path, split, report)
    for name, (file_name, split) in MC_FILES.items():
        path = find_annotation(sources, [file_name])
        if path is not None:
            outputs[name] = parse_multiple_choice(path, split, randomized=name == "mc_test", report=report)
    if not outputs:
        names = [f for f, _ in (*RETRIEVAL_FILES.values(), *MC_FILES.values())]
        raise FileNotFoundError(f"none of {', '.join(names)} found in {', '.join(map(str, sources))}")
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("lsmdc", __doc__, convert, argv)


if __name__ == "__main__":
    sys.exit(run(main))
