"""Benchmark converters (scripts/prepare) on more rows copied unchanged from the published annotation files.

Each fixture under `tests/fixtures/prepare/<benchmark>/` keeps the published file's name, fields, order,
quoting and end of file; `tests/fixtures/prepare/README.md` names the repository, path and commit each was
copied from. Counts are taken from the fixture files themselves (`read = written + skipped`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_prepare import (
    FIXTURES,
    assert_counts_add_up,
    load,
    nonempty_lines,
    summary,
    touch_videos,
    write_json,
)

from scripts.prepare import msrvtt, youcook2

# ---------------------------------------------------------------- MSR-VTT split lists (Frozen layout)

SPLIT_LISTS = FIXTURES / "msrvtt_splits"


def test_msrvtt_split_lists_real_rows(tmp_path):
    """The collaborative-experts id lists (one `videoN` a line; all but test_list_full.txt end without a
    newline), as Frozen / All-in-one read them from `structured-symlinks/`. Their captions come from
    `annotation/MSR_VTT.json`, of which no copy was found: written here inline, placeholder text."""
    root = tmp_path / "MSRVTT"
    lists = root / "high-quality" / "structured-symlinks"
    lists.mkdir(parents=True)
    for path in sorted(SPLIT_LISTS.glob("*.txt")):
        shutil.copyfile(path, lists / path.name)  # byte for byte, ends of file included
    assert not (lists / "train_list_jsfusion.txt").read_bytes().endswith(b"\n")
    assert (lists / "test_list_full.txt").read_bytes().endswith(b"video9999\n")

    listed = {path.name: nonempty_lines(path) for path in sorted(lists.glob("*.txt"))}
    assert listed["train_list_jsfusion.txt"] == ["video0", "video1", "video2", "video9999"]
    assert listed["val_list_jsfusion.txt"] == ["video7020", "video7021", "video7024", "video9975"]
    # video9999 is an official test video and a 1k-A training video: both lists name it
    assert "video9999" in listed["test_list_full.txt"] and "video9999" in listed["train_list_jsfusion.txt"]

    with_captions = sorted({vid for ids in listed.values() for vid in ids} - {"video2", "video7021"})
    annotations = [
        {"image_id": vid, "caption": f"placeholder caption {c} of {vid}", "id": 20 * i + c}
        for i, vid in enumerate(with_captions)
        for c in range(2)
    ]
    write_json(root / "annotation" / "MSR_VTT.json", {"images": [], "annotations": annotations})

    out = tmp_path / "out"
    paths = msrvtt.main(["--annotations", str(root), "--out", str(out)])
    assert set(paths) == {"train_9k", "test_1k", "train", "val", "test"}
    ids = {name: [r["id"] for r in load(out, name)] for name in paths}
    assert ids == {
        "train_9k": ["video0", "video1", "video9999"],  # file order; the last line has no newline
        "test_1k": ["video7020", "video7024", "video9975"],
        "train": ["video0", "video1", "video6512"],
        "val": ["video6513", "video6514", "video7009"],
        "test": ["video7010", "video7011", "video9999"],
    }
    last = load(out, "train_9k")[-1]
    assert last == {
        "id": "video9999",
        "video": "video9999.mp4",
        "split": "train",
        "captions": ["placeholder caption 0 of video9999", "placeholder caption 1 of video9999"],
    }
    assert {r["split"] for r in load(out, "test_1k")} == {"test"} and load(out, "val")[0]["split"] == "val"
    s = summary(out)
    assert s["skipped"] == {"video without captions": 2}  # video2, video7021
    assert sorted(s["skip_examples"]["video without captions"]) == ["video2", "video7021"]
    assert_counts_add_up(out, sum(len(ids) for ids in listed.values()))  # one record per listed id


# ---------------------------------------------------------------- MSR-VTT multiple choice


def test_msrvtt_multiple_choice_jsonl_real_rows(tmp_path):
    """`msrvtt_mc_test.jsonl` as All-in-one / DemoVLP ship it in `meta_data/`: keys qid ("mc0"), clip_name,
    title ("msr143897"), answer (a *string*, "0".."4"), options; the last line ends without a newline."""
    ann = FIXTURES / "msrvtt_mc"
    path = ann / "msrvtt_mc_test.jsonl"
    assert not path.read_bytes().endswith(b"\n")
    items = [json.loads(line) for line in nonempty_lines(path)]
    assert all(isinstance(item["answer"], str) for item in items)
    assert len({item["clip_name"] for item in items}) == len(items)  # one question per clip

    videos = touch_videos(tmp_path / "videos", ["video9770.mp4", "video9771.mp4", "video7020.mp4", "video7933.mp4"])
    out = tmp_path / "out"
    paths = msrvtt.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"mc_test"}
    records = load(out, "mc_test")
    assert [r["id"] for r in records] == ["video9770", "video9771", "video7020", "video7933"]  # no video9773
    assert records[0] == {
        "id": "video9770",
        "video": "video9770.mp4",
        "split": "test",
        "qa": [
            {
                "question": "",
                "choices": [
                    "the boy is trying to fix the problem",
                    "a movie trailer shows various scenes from a movie",
                    "asian man discusses technology in the younger generations",
                    "two men on wave runner in ocean rescuing a surfer",
                    "a group is dancing",
                ],
                "answer_idx": 0,  # "0" in the file
                "id": "mc0",
            }
        ],
    }
    last = records[-1]["qa"][0]
    assert last["id"] == "mc2989" and last["answer_idx"] == 2 and last["choices"][2] == "its the beginning of a show"
    by_qid = {item["qid"]: item for item in items}
    for record in records:
        (qa,) = record["qa"]
        assert qa["choices"] == by_qid[qa["id"]]["options"]
        assert qa["answer_idx"] == int(by_qid[qa["id"]]["answer"])
    assert summary(out)["skipped"] == {"missing video": 1}
    assert_counts_add_up(out, len(items))  # one record per line (one clip a line): 4 written + 1


# ---------------------------------------------------------------- YouCook2

YOUCOOK2 = FIXTURES / "youcook2"


def test_youcook2_real_rows(tmp_path):
    """The release's `youcookii_annotations_trainval.json` (4-space indented; recipe_type a string,
    segments whole seconds): sentences with a doubled or a leading space, a video_url of "cc"."""
    data = json.loads((YOUCOOK2 / "youcookii_annotations_trainval.json").read_text())
    database = data["database"]
    assert database["FHvZgt3ExDI"]["video_url"] == "cc"
    assert database["NTyhMGmuWik"]["annotations"][3]["sentence"].startswith(" add 1 tbls")
    assert "chicken  dip" in database["mZwK0TBI1iY"]["annotations"][3]["sentence"]

    # the release's raw_videos/<subset>/<recipe_type>/<id>.<ext>; xHr8X2Wpmno has no file
    videos = touch_videos(
        tmp_path / "raw_videos",
        [
            "training/113/GLd3aX16zBg.mp4",
            "training/205/FHvZgt3ExDI.mkv",
            "validation/201/mZwK0TBI1iY.webm",
            "validation/124/NTyhMGmuWik.mp4",
        ],
    )
    out = tmp_path / "out"
    paths = youcook2.main(["--annotations", str(YOUCOOK2), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"train", "val"}
    train, val = load(out, "train"), load(out, "val")
    assert [r["id"] for r in train] == [f"GLd3aX16zBg_{i}" for i in range(5)] + [f"FHvZgt3ExDI_{i}" for i in range(5)]
    assert [r["id"] for r in val] == [f"mZwK0TBI1iY_{i}" for i in range(8)] + [f"NTyhMGmuWik_{i}" for i in range(6)]
    assert train[0] == {
        "id": "GLd3aX16zBg_0",
        "video": "training/113/GLd3aX16zBg.mp4",
        "split": "train",
        "caption": "spread margarine on two slices of white bread",
        "start": 90.0,
        "end": 102.0,
        "recipe_type": "113",
    }
    assert train[5]["video"] == "training/205/FHvZgt3ExDI.mkv" and train[5]["start"] == 60.0
    dip = val[3]
    assert dip["id"] == "mZwK0TBI1iY_3" and dip["video"] == "validation/201/mZwK0TBI1iY.webm"
    assert dip["caption"] == "rub flour onto the chicken dip it in egg and coat with breadcrumbs"  # space collapsed
    assert (dip["start"], dip["end"], dip["split"]) == (55.0, 78.0, "val")
    mustard = val[8 + 3]
    assert mustard["id"] == "NTyhMGmuWik_3" and mustard["recipe_type"] == "124"
    assert mustard["caption"] == (
        "add 1 tbls prepared yellow mustard 1 tbls worcestershire sauce 2 tsp brown sugar mix simmer 5 minutes"
    )  # the leading space stripped
    for record in train + val:
        video_id, segment_id = record["id"].rsplit("_", 1)
        ann = database[video_id]["annotations"][int(segment_id)]
        assert [record["start"], record["end"]] == ann["segment"]
        assert record["caption"] == " ".join(ann["sentence"].split())
    s = summary(out)
    assert s["skipped"] == {"missing video": 6}  # the 6 segments of xHr8X2Wpmno
    assert_counts_add_up(out, sum(len(video["annotations"]) for video in database.values()))  # one per segment

    youcook2.main(["--annotations", str(YOUCOOK2), "--out", str(tmp_path / "all")])  # videos not checked
    assert summary(tmp_path / "all")["skipped"] == {}  # no segment of these rows is out of range
    assert [r["video"] for r in load(tmp_path / "all", "val")][:1] == ["xHr8X2Wpmno.mp4"]
    assert_counts_add_up(tmp_path / "all", 30)
