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
    table,
    touch_videos,
    write_json,
)

from scripts.prepare import msrvtt, tgif_qa, youcook2

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


# ---------------------------------------------------------------- MSR-VTT official release

OFFICIAL = FIXTURES / "msrvtt_official"
INFO_NAMES = ("train_val_videodatainfo.json", "test_videodatainfo.json")


def test_msrvtt_official_release_real_rows(tmp_path):
    """The 2016 release's `train_val_videodatainfo.json` / `test_videodatainfo.json` (one line each, no
    newline at the end; `split` "train" / "validate" / "test"; 20 sentences a video, the file ordered by
    `sen_id`, not by video): a video's captions repeat (video2960), lead with a space and hold a `\\u00e9`
    (video6420) or a doubled space (video7020), which every converter makes one (`clean_text`)."""
    raw = {name: (OFFICIAL / name).read_bytes() for name in INFO_NAMES}
    assert not any(data.endswith(b"\n") for data in raw.values()) and b"saut\\u00e9ed" in raw[INFO_NAMES[0]]
    infos = {name: json.loads(data) for name, data in raw.items()}
    assert all(json.dumps(info).encode() == raw[name] for name, info in infos.items())  # json.dumps's layout
    videos_in_files = [v for info in infos.values() for v in info["videos"]]
    sentences = [s for info in infos.values() for s in info["sentences"]]
    assert [s["video_id"] for s in sentences[:1]] == ["video2960"]  # sen_id 0 is not video0's
    assert all(sum(s["video_id"] == v["video_id"] for s in sentences) == 20 for v in videos_in_files)

    videos = touch_videos(
        tmp_path / "videos",
        [f"{v['video_id']}.mp4" for v in videos_in_files if v["video_id"] != "video6513"],  # one file missing
    )
    out = tmp_path / "out"
    paths = msrvtt.main(["--annotations", str(OFFICIAL), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"train", "val", "test"}
    train, val, test = load(out, "train"), load(out, "val"), load(out, "test")
    assert [r["id"] for r in train] == ["video0", "video1", "video2960", "video6420"]  # the videos' file order
    assert [r["id"] for r in val] == ["video7009"]  # "validate" in the file; video6513 has no file
    assert [r["id"] for r in test] == ["video7010", "video7020", "video7960", "video9999"]
    assert train[0] == {
        "id": "video0",
        "video": "video0.mp4",
        "split": "train",  # no start / end: the distributed clips are already cut
        "captions": [
            "a car is shown",
            "a group is dancing",
            "a man drives a vehicle through the countryside",
            "a man drives down the road in an audi",
            "a man driving a car",
            "a man is driving a car",
            "a man is driving down a road",
            "a man is driving in a car as part of a commercial",
            "a man is driving",
            "a man riding the car speedly in a narrow road",
            "a man showing the various features of a car",
            "a man silently narrates his experience driving an audi",
            "a person is driving his car around curves in the road",
            "a person telling about a car",
            "guy driving a car down the road",
            "man talking about a car while driving",
            "the man drives the car",
            "the man driving the audi as smooth as possible",
            "a man is driving",  # sen_id 77318 repeats 77308
            "guy driving a car down the road",
        ],
    }
    ice_age = train[2]["captions"]  # sen_id 0..19: the last four repeat earlier ones, all kept
    assert len(ice_age) == 20 and ice_age[16:] == [ice_age[10], ice_age[8], ice_age[0], ice_age[1]]
    assert ice_age[0] == "a cartoon animals runs through an ice cave in a video game"
    paste = "a paste of ginger and garlic and curry leaves are saut\u00e9ed in hot oil"
    assert train[3]["captions"][13] == paste  # " a paste ..." in the file: stripped
    assert val[0]["split"] == "val" and val[0]["captions"][-1] == "a man is lifting up a woman s skirt"
    assert test[1]["captions"][2] == "a woman creating a fondant baby and flower"  # the doubled space made one
    assert test[3]["captions"][:2] == [
        "a baby with pink dress playing in front of the camera",
        "a small girl holding milk bottle and comb doing some actions",
    ]
    for record in train + val + test:  # each video's 20 sentences in sen_id order, spaces made single
        own = sorted((s for s in sentences if s["video_id"] == record["id"]), key=lambda s: s["sen_id"])
        assert record["captions"] == [" ".join(s["caption"].split()) for s in own]
    s = summary(out)
    assert s["skipped"] == {"missing video": 1} and s["skip_examples"]["missing video"] == ["video6513.mp4"]
    assert_counts_add_up(out, len(videos_in_files))  # one record per video: 9 written + 1


def test_msrvtt_official_release_with_the_1k_a_files_real_rows(tmp_path):
    """The release beside the 1k-A files (CLIP4Clip's `MSRVTT_JSFUSION_test.csv`, the collaborative-experts
    id lists): the official split wins over `*_list_full.txt`, the csv over `val_list_jsfusion.txt`, and
    a list that loses is not read, so its videos are not counted; `train_list_jsfusion.txt` takes its
    captions from the release (video9999, an official test video, is a 1k-A training video)."""
    ann = tmp_path / "MSRVTT"
    ann.mkdir()
    jsfusion = FIXTURES / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
    for path in [*OFFICIAL.glob("*.json"), *SPLIT_LISTS.glob("*.txt"), jsfusion]:
        shutil.copyfile(path, ann / path.name)
    out = tmp_path / "out"
    paths = msrvtt.main(["--annotations", str(ann), "--out", str(out)])
    assert set(paths) == {"train", "val", "test", "train_9k", "test_1k"}
    ids = {name: [r["id"] for r in load(out, name)] for name in paths}
    assert ids == {
        "train": ["video0", "video1", "video2960", "video6420"],  # the release, not train_list_full.txt
        "val": ["video6513", "video7009"],
        "test": ["video7010", "video7020", "video7960", "video9999"],
        "train_9k": ["video0", "video1", "video9999"],  # video2: not among the release's rows kept here
        "test_1k": ["video9770", "video9771", "video7020", "video9773"],  # the csv's, one sentence each
    }
    test_captions = {r["id"]: r["captions"] for r in load(out, "test")}
    nine_k = load(out, "train_9k")[-1]
    assert nine_k == {
        "id": "video9999",
        "video": "video9999.mp4",
        "split": "train",
        "captions": test_captions["video9999"],
    }
    one_k = load(out, "test_1k")[2]
    # the csv has one space where the release has two: both come out as the same sentence
    assert one_k["captions"] == [test_captions["video7020"][2]] == ["a woman creating a fondant baby and flower"]
    s = summary(out)
    assert s["skipped"] == {"video without captions": 1}
    assert s["skip_examples"]["video without captions"] == ["video2"]
    assert "test_1k: MSRVTT_JSFUSION_test.csv is used, not val_list_jsfusion.txt" in s["notes"]
    assert sum("the official split of" in note for note in s["notes"]) == 3  # train, val, test lists not read
    videos_in_files = sum(len(json.loads((ann / name).read_text())["videos"]) for name in INFO_NAMES)
    csv_videos = {row["video_id"] for row in table(ann / "MSRVTT_JSFUSION_test.csv")}
    # records read: the release's videos, train_list_jsfusion.txt's lines, the csv's videos; the lists that
    # lose (val_list_jsfusion.txt, *_list_full.txt) are not read
    assert_counts_add_up(out, videos_in_files + len(nonempty_lines(ann / "train_list_jsfusion.txt")) + len(csv_videos))


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


# ---------------------------------------------------------------- TGIF-QA training files

TGIF_TRAIN = FIXTURES / "tgif_qa_train"


def test_tgif_qa_train_files_real_rows(tmp_path):
    """`Train_count_question.csv` / `Train_action_question.csv` as released: tab-separated like the Test
    files but with CRLF line ends (the Test files end lines with LF); a count answer may be "0"; one GIF
    (key 5) asked by both tasks. Read beside the Test fixtures: one output per task and split."""
    for path in TGIF_TRAIN.glob("*.csv"):
        data = path.read_bytes()
        assert data.endswith(b"\r\n") and data.count(b"\r\n") == data.count(b"\n")
    assert b"\r" not in (FIXTURES / "tgif_qa" / "Test_count_question.csv").read_bytes()
    ann = tmp_path / "tgif"
    ann.mkdir()
    for path in [*TGIF_TRAIN.glob("Train_*.csv"), *(FIXTURES / "tgif_qa").glob("Test_*.csv")]:
        shutil.copyfile(path, ann / path.name)
    out = tmp_path / "out"
    paths = tgif_qa.main(["--annotations", str(ann), "--tasks", "count", "action", "--out", str(out)])
    assert set(paths) == {"count_train", "count_test", "action_train", "action_test"}
    count, action = load(out, "count_train"), load(out, "action_train")
    assert count[0] == {
        "id": "tumblr_nqc2mbmU2J1uxhtnwo1_400",
        "video": "tumblr_nqc2mbmU2J1uxhtnwo1_400.gif",
        "split": "train",
        "qa": [
            {"question": "How many times does the woman chew food ?", "answer": "4", "type": "count", "id": "COUNT1"}
        ],
    }
    answers = [(q["id"], q["answer"]) for r in count for q in r["qa"]]
    assert answers == [("COUNT1", "4"), ("COUNT2", "5"), ("COUNT30397", "0")]
    assert action[0] == {
        "id": "tumblr_nqc2mbmU2J1uxhtnwo1_400",  # the GIF of COUNT1: "chew food" is its choice 2
        "video": "tumblr_nqc2mbmU2J1uxhtnwo1_400.gif",
        "split": "train",
        "qa": [
            {
                "question": "What does the woman do 4 times ?",
                "choices": [
                    "flick",
                    "do gymnastic",
                    "chew food",
                    "shake hips left and right",
                    "pat the back of the other man",
                ],
                "answer_idx": 2,
                "id": "ACTION1",
            }
        ],
    }
    assert [(q["id"], q["answer_idx"]) for r in action for q in r["qa"]] == [
        ("ACTION1", 2), ("ACTION2", 4), ("ACTION9", 0), ("ACTION22749", 2)
    ]
    assert action[-1]["qa"][0]["choices"][-1] == "swing arm"  # the last field before the CRLF is clean
    assert [q["id"] for r in load(out, "count_test") for q in r["qa"]] == ["COUNT12", "COUNT18"]
    assert summary(out)["skipped"] == {}
    gifs = 0  # one record per GIF and file; every GIF of these files has one question
    for path in sorted(ann.glob("*_question.csv")):
        if "_count_" in path.name or "_action_" in path.name:
            gifs += len({row["gif_name"] for row in table(path, delimiter="\t")})
    assert_counts_add_up(out, gifs)  # 3 + 4 train, 2 + 2 test


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
