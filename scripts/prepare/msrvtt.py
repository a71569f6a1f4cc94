"""MSR-VTT (retrieval and captioning): official video-info JSON and the 1k-A split -> annotation JSONL.

Inputs (any that are present):
- `train_val_videodatainfo.json`, `test_videodatainfo.json` (the official release) or `MSRVTT_data.json`
  (the same layout, all 10k videos): `{"videos": [{"video_id", "split", "start time", "end time", ...}],
  "sentences": [{"video_id", "caption", "sen_id"}]}`, 20 captions per video.
- `MSRVTT_JSFUSION_test.csv` (columns key, vid_key, video_id, sentence): the 1k-A test set, one
  sentence per video.
- `MSRVTT_train.9k.csv` / `MSRVTT_train.7k.csv` (column video_id): 1k-A training lists.

Outputs: `train.jsonl`, `val.jsonl`, `test.jsonl` (the official split, all captions per video),
`test_1k.jsonl` (1k-A test), `train_9k.jsonl` / `train_7k.jsonl`. The distributed clips are already
cut, so the source video's `start time`/`end time` are not written as `start`/`end`.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare.common import (
    AnnotationError,
    Record,
    Report,
    build_parser,
    find_annotation,
    finish,
    parse_args,
    progress,
    read_json,
    read_table,
    run,
)

INFO_FILES = ("train_val_videodatainfo.json", "test_videodatainfo.json", "MSRVTT_data.json")
TEST_1K_FILE = "MSRVTT_JSFUSION_test.csv"
TRAIN_LIST_FILES = ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def video_file(video_id: str) -> str:
    """Default file name of an MSR-VTT clip (`video123` -> `video123.mp4`)."""
    return f"{video_id}.mp4"


def merge_info(infos: Sequence[dict[str, Any]], report: Report) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Split per video id and captions per video id (ordered by `sen_id`) from one or more info JSONs."""
    splits: dict[str, str] = {}
    captions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    seen: set[tuple[str, Any, str]] = set()
    for info in infos:
        if not isinstance(info, dict) or "videos" not in info or "sentences" not in info:
            raise AnnotationError("an MSR-VTT info JSON must hold 'videos' and 'sentences' lists")
        for video in info["videos"]:
            vid, split = video.get("video_id"), SPLIT_NAMES.get(str(video.get("split")))
            if vid is None or split is None:
                report.skip("malformed video entry", str(video)[:80])
                continue
            splits[str(vid)] = split
        for sentence in progress(info["sentences"], "sentences"):
            vid, text, sen_id = sentence.get("video_id"), sentence.get("caption"), sentence.get("sen_id")
            if vid is None or not isinstance(text, str) or not text.strip():
                report.skip("malformed sentence", str(sentence)[:80])
                continue
            order = sen_id if isinstance(sen_id, int) else len(seen)  # sen_id orders; file order otherwise
            if (str(vid), sen_id, text) in seen:  # the same sentence given by two files
                continue
            seen.add((str(vid), sen_id, text))
            captions[str(vid)].append((order, text.strip()))
    ordered = {vid: [text for _, text in sorted(items, key=lambda item: item[0])] for vid, items in captions.items()}
    return splits, ordered


def official_split_records(
    splits: dict[str, str], captions: dict[str, list[str]], report: Report
) -> dict[str, list[Record]]:
    """One record per video with all its captions, grouped by the official split."""
    out: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for vid, split in splits.items():
        if not captions.get(vid):
            report.skip("video without captions", vid)
            continue
        out[split].append({"id": vid, "video": video_file(vid), "split": split, "captions": captions[vid]})
    return {name: records for name, records in out.items() if records}


def train_list_records(path: Path, captions: dict[str, list[str]], report: Report) -> list[Record]:
    """Records of a 1k-A training list (`MSRVTT_train.9k.csv`), captions taken from the info JSON."""
    records = []
    for line_no, row in read_table(path, required=["video_id"], delimiter=","):
        vid = (row.get("video_id") or "").strip()
        if not vid:
            report.skip("malformed row", f"{path.name}:{line_no}")
        elif not captions.get(vid):
            report.skip("video without captions", vid)
        else:
            records.append({"id": vid, "video": video_file(vid), "split": "train", "captions": captions[vid]})
    return records


def test_1k_records(path: Path, report: Report) -> list[Record]:
    """Records of `MSRVTT_JSFUSION_test.csv`: one per video, its sentence(s) as the retrieval queries."""
    sentences: dict[str, list[str]] = defaultdict(list)
    for line_no, row in read_table(path, required=["video_id", "sentence"], delimiter=","):
        vid, text = (row.get("video_id") or "").strip(), (row.get("sentence") or "").strip()
        if not vid or not text:
            report.skip("malformed row", f"{path.name}:{line_no}")
            continue
        sentences[vid].append(text)
    return [
        {"id": vid, "video": video_file(vid), "split": "test", "caption": texts[0], "captions": texts}
        for vid, texts in sentences.items()
    ]


def convert(sources: Sequence[Path], report: Report) -> dict[str, list[Record]]:
    """All the outputs the files found among `sources` allow."""
    info_paths = [p for p in (find_annotation(sources, [name]) for name in INFO_FILES) if p is not None]
    test_1k = find_annotation(sources, [TEST_1K_FILE])
    if not info_paths and test_1k is None:
        raise FileNotFoundError(
            f"none of {', '.join(INFO_FILES + (TEST_1K_FILE,))} found in {', '.join(map(str, sources))}"
        )
    splits, captions = merge_info([read_json(p) for p in info_paths], report)
    outputs = official_split_records(splits, captions, report)
    for name in TRAIN_LIST_FILES:
        path = find_annotation(sources, [name])
        if path is None:
            continue
        if not info_paths:
            raise FileNotFoundError(
                f"{name} lists videos whose captions are in {INFO_FILES[0]} or {INFO_FILES[2]}, not found"
            )
        size = re.search(r"(\d+k)", name).group(1)
        outputs[f"train_{size}"] = train_list_records(path, captions, report)
    if test_1k is not None:
        outputs["test_1k"] = test_1k_records(test_1k, report)
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    parser = build_parser("msrvtt", __doc__.splitlines()[0])
    args = parse_args(parser, argv)
    report = Report("msrvtt")
    return finish(convert(args.annotations, report), args, report)


if __name__ == "__main__":
    sys.exit(run(main))
