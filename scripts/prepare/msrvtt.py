"""MSR-VTT (retrieval, captioning, multiple choice): the official, JSFusion or Frozen files -> JSONL.

Inputs (any that are present):
- `train_val_videodatainfo.json`, `test_videodatainfo.json` (the official release) or `MSRVTT_data.json`
  (the same layout, all 10k videos): `{"videos": [{"video_id", "split", "start time", "end time", ...}],
  "sentences": [{"video_id", "caption", "sen_id"}]}`, 20 captions per video.
- `MSRVTT_JSFUSION_test.csv` (columns key, vid_key, video_id, sentence): the 1k-A test set, one
  sentence per video.
- `MSRVTT_train.9k.csv` / `MSRVTT_train.7k.csv` (column video_id): 1k-A training lists.
- The Frozen / All-in-one layout: `annotation/MSR_VTT.json` (`{"annotations": [{"image_id":
  "video0", "caption", ...}], "images": [...]}`, all captions) with the id lists (one video id a
  line) `train_list_jsfusion.txt` (-> train_9k), `val_list_jsfusion.txt` (-> test_1k),
  `train_list_full.txt`, `val_list_full.txt`, `test_list_full.txt` (-> train, val, test).
- Multiple choice: `msrvtt_mc_test.jsonl` (ClipBERT / All-in-one) or `MSR_MC_test.csv` (JSFusion),
  see `msrvtt_mc.py` (-> mc_test).

Outputs: `train.jsonl`, `val.jsonl`, `test.jsonl` (the official split, all captions per video),
`test_1k.jsonl` (1k-A test), `train_9k.jsonl` / `train_7k.jsonl`, `mc_test.jsonl`. The official
files win over the Frozen layout's, `MSRVTT_JSFUSION_test.csv` (the 1k-A protocol's one
sentence per video) over `val_list_jsfusion.txt` (all 20 captions per video), and `MSRVTT_train.9k.csv`
over `train_list_jsfusion.txt`; a list that loses is not read (its videos are not counted). The distributed clips
are already cut, so the source video's `start time`/`end time` are not written as `start`/`end`.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `scripts.prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.prepare import msrvtt_mc
from scripts.prepare.common import (AnnotationError, Record, Report, clean_text, convert_and_finish, find_annotation,
                                    progress, read_json, read_table, run)

INFO_FILES = ("train_val_videodatainfo.json", "test_videodatainfo.json", "MSRVTT_data.json")
TEST_1K_FILE = "MSRVTT_JSFUSION_test.csv"
TRAIN_LIST_FILES = ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv")
FROZEN_FILE = "MSR_VTT.json"
# Frozen's id lists -> the output each becomes (and that output's split)
FROZEN_LISTS = {
    "train_list_jsfusion.txt": ("train_9k", "train"),
    "val_list_jsfusion.txt": ("test_1k", "test"),
    "train_list_full.txt": ("train", "train"),
    "val_list_full.txt": ("val", "val"),
    "test_list_full.txt": ("test", "test"),
}
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
            captions[str(vid)].append((order, clean_text(text)))
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
        vid, text = (row.get("video_id") or "").strip(), clean_text(row.get("sentence") or "")
        if not vid or not text:
            report.skip("malformed row", f"{path.name}:{line_no}")
            continue
        sentences[vid].append(text)
    return [
        {"id": vid, "video": video_file(vid), "split": "test", "caption": texts[0], "captions": texts}
        for vid, texts in sentences.items()
    ]


def frozen_captions(data: Any, path: Path, report: Report) -> dict[str, list[str]]:
    """Captions per video id, in file order, from the Frozen layout's `MSR_VTT.json`."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{path}: expected a JSON object with an 'annotations' list")
    captions: dict[str, list[str]] = defaultdict(list)
    for item in progress(data["annotations"], path.name):
        vid = item.get("image_id") if isinstance(item, dict) else None
        text = item.get("caption") if isinstance(item, dict) else None
        if not isinstance(vid, str) or not vid or not isinstance(text, str) or not text.strip():
            report.skip("malformed annotation", str(item)[:80])
            continue
        captions[vid].append(clean_text(text))
    return dict(captions)


def id_list_records(path: Path, split: str, captions: dict[str, list[str]], report: Report) -> list[Record]:
    """Records of a Frozen id list (`train_list_jsfusion.txt`: one video id a line), all captions each."""
    records = []
    with open(path, encoding="utf-8") as f:
        for vid in (line.strip() for line in f):
            if not vid:
                continue
            if not captions.get(vid):
                report.skip("video without captions", vid)
                continue
            records.append({"id": vid, "video": video_file(vid), "split": split, "captions": captions[vid]})
    return records


def caption_sources(sources: Sequence[Path], report: Report) -> tuple[dict[str, str], dict[str, list[str]], str]:
    """Official splits and captions per video, and the name of the file(s) they came from ("" if none).

    The official info JSONs are used when present; otherwise the Frozen layout's `MSR_VTT.json`.
    """
    info_paths = [p for p in (find_annotation(sources, [name]) for name in INFO_FILES) if p is not None]
    if info_paths:
        splits, captions = merge_info([read_json(p) for p in info_paths], report)
        return splits, captions, ", ".join(p.name for p in info_paths)
    frozen = find_annotation(sources, [FROZEN_FILE])
    if frozen is None:
        return {}, {}, ""
    return {}, frozen_captions(read_json(frozen), frozen, report), frozen.name


def list_outputs(
    sources: Sequence[Path], captions: dict[str, list[str]], origin: str, report: Report,
    superseded: dict[str, str],
) -> dict[str, list[Record]]:
    """Outputs of the 1k-A CSV training lists and of the Frozen id lists found (these need captions).

    A list whose output another file gives (`superseded`: output -> the note saying which file wins), or
    that an earlier list of the same output already gave (`MSRVTT_train.9k.csv` before
    `train_list_jsfusion.txt`), is not read, so its videos are neither written nor counted as skipped.
    """
    lists = {name: find_annotation(sources, [name]) for name in (*TRAIN_LIST_FILES, *FROZEN_LISTS)}
    lists = {name: path for name, path in lists.items() if path is not None}
    if lists and not origin:
        raise FileNotFoundError(
            f"{', '.join(lists)} list videos whose captions are in {INFO_FILES[0]}, {INFO_FILES[2]} or "
            f"{FROZEN_FILE}, none found"
        )
    outputs: dict[str, list[Record]] = {}
    given_by: dict[str, str] = {}
    for name, path in lists.items():
        if name in FROZEN_LISTS:
            output, split = FROZEN_LISTS[name]
        else:  # MSRVTT_train.9k.csv -> train_9k
            output, split = "train_" + re.search(r"(\d+k)", name).group(1), "train"
        if output in superseded:
            report.note(superseded[output])
            continue
        if output in given_by:
            report.note(f"{output}: {given_by[output]} is used, not {name}")
            continue
        given_by[output] = name
        if name in FROZEN_LISTS:
            outputs[output] = id_list_records(path, split, captions, report)
        else:
            outputs[output] = train_list_records(path, captions, report)
    return outputs


def convert(sources: Sequence[Path], report: Report) -> dict[str, list[Record]]:
    """All the outputs the files found among `sources` allow."""
    splits, captions, origin = caption_sources(sources, report)
    test_1k = find_annotation(sources, [TEST_1K_FILE])
    mc_path = find_annotation(sources, list(msrvtt_mc.MC_FILES))
    if not origin and test_1k is None and mc_path is None:
        names = (*INFO_FILES, FROZEN_FILE, TEST_1K_FILE, *msrvtt_mc.MC_FILES)
        raise FileNotFoundError(f"none of {', '.join(names)} found in {', '.join(map(str, sources))}")
    outputs = official_split_records(splits, captions, report)
    # the official split wins over Frozen's copy of it, the 1k-A csv over val_list_jsfusion.txt
    superseded = {name: f"{name}: the official split of {origin} is used, not Frozen's list" for name in outputs}
    if test_1k is not None:
        superseded["test_1k"] = f"test_1k: {TEST_1K_FILE} is used, not val_list_jsfusion.txt"
    outputs.update(list_outputs(sources, captions, origin, report, superseded))
    if test_1k is not None:
        outputs["test_1k"] = test_1k_records(test_1k, report)
    elif "test_1k" in outputs:
        report.note("test_1k from val_list_jsfusion.txt has all 20 captions per video; the 1k-A protocol's one "
                    f"sentence per video is in {TEST_1K_FILE}")
    if mc_path is not None:
        outputs["mc_test"] = msrvtt_mc.parse(mc_path, report)
    return outputs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point; returns the JSONL paths written."""
    return convert_and_finish("msrvtt", __doc__, convert, argv)


if __name__ == "__main__":
    sys.exit(run(main))
