"""`vl data shards | inspect | synth` through ``datapipes.cli.main``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import encode_indexed_clip, jpeg_bytes

from datapipes.cli import main
from datapipes.pipeline import ClipConfig, build_eval_loader
from datapipes.shards import expand_shards


@pytest.mark.parametrize("command", ["shards", "inspect", "synth"])
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"vl data {command}" in capsys.readouterr().out
    assert main([]) == 2  # no subcommand: usage error


@pytest.fixture
def video_folder(tmp_path) -> tuple[Path, Path]:
    """A folder of inputs, good and bad, and a JSONL annotation file about them."""
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.mp4").write_bytes(encode_indexed_clip())  # 3 s
    (folder / "sub" / "b.v2.mp4").write_bytes(encode_indexed_clip(num_frames=16))
    (folder / "c.jpg").write_bytes(jpeg_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "corrupt.mp4").write_bytes(os.urandom(3000))
    (folder / "notes.txt").write_text("not a video")
    rows = [
        {"video": "a.mp4", "caption": "grey frames get brighter", "source_id": 7},
        {"video": "sub/b.v2.mp4", "captions": ["first caption", "second caption"]},
        {"video": "c.jpg", "caption": "a still image"},
        {"video": "a.mp4", "caption": "the middle second", "start": 1.0, "end": 2.0},
        {"video": "a.mp4", "qa": [{"question": "is it grey?", "answer": "yes"}]},
        {"video": "a.mp4", "caption": "a duplicate row of the first clip"},
        {"video": "empty.mp4", "caption": "x"},
        {"video": "corrupt.mp4", "caption": "x"},
        {"video": "missing.mp4", "caption": "x"},
        {"video": "notes.txt", "caption": "x"},
        {"video": "a.mp4"},
        {"video": "a.mp4", "caption": "x", "start": 10.0},
        {"caption": "no video field"},
    ]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    return folder, ann


def test_shards_from_folder_and_jsonl(video_folder, tmp_path, tokenizer, capsys):
    folder, ann = video_folder
    out = tmp_path / "shards"
    assert main(["shards", str(folder), str(ann), "--out", str(out), "--maxcount", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "wrote 6 samples in 2 shards" in text and "missing_file" in text
    summary = json.loads((out / "shard-summary.json").read_text())
    assert summary["skipped"] == {"empty_file": 1, "unreadable_video": 1, "missing_file": 1,
                                  "unsupported_format": 1, "no_caption": 1, "bad_clip_bounds": 1,
                                  "no_video_field": 1, "bad_row": 1}
    assert sorted(Path(p).name for p in expand_shards(summary["pattern"])) == ["shard-000000.tar", "shard-000001.tar"]
    batches = list(build_eval_loader(summary["pattern"], tokenizer, ClipConfig(num_frames=4, size=32), batch_size=8))
    metas = {m["caption"]: m for b in batches for m in b.meta}
    first = metas["grey frames get brighter"]
    assert first["width"] == 64 and first["duration"] == pytest.approx(3.0, abs=0.2) and first["source_id"] == 7
    assert metas["first caption"]["captions"] == ["first caption", "second caption"]
    assert metas["the middle second"]["start"] == 1.0 and metas["the middle second"]["end"] == 2.0
    assert metas["a still image"]["source"] == "c.jpg"
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == len(set(keys)) == 5  # the QA-only row has no caption row in caption mode
    assert sum(b.skipped.get("no_caption", 0) for b in batches) == 1
    assert all("." not in k for k in keys) and any(k.endswith("-2") for k in keys)  # 3rd row of clip a.mp4


def test_shard_keys_are_stable_across_runs(video_folder, tmp_path):
    folder, ann = video_folder
    keys = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        assert main(["shards", str(folder), str(ann), "--out", str(out), "--quiet", "--maxsize", "1K"]) == 0
        summary = json.loads((out / "shard-summary.json").read_text())
        assert summary["num_shards"] == 6  # --maxsize 1K: one sample per shard
        keys.append(sorted(f for p in summary["shards"] for f in _tar_names(p)))
    assert keys[0] == keys[1] and keys[0]


def _tar_names(path: str) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return tar.getnames()


def test_shards_from_csv(tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(encode_indexed_clip())
    with open(tmp_path / "ann.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["video", "caption"], ["x.mp4", "a clip, with a comma"], ["y.mp4", "missing"]])
    assert main(["shards", str(folder), str(tmp_path / "ann.csv"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "wrote 1 samples in 1 shards" in capsys.readouterr().out
    (name,) = [n for n in _tar_names(str(tmp_path / "o" / "shard-000000.tar")) if n.endswith(".txt")]
    assert name.startswith("x_")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.mp4,hi\n")
    assert main(["shards", str(folder), str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "video" in capsys.readouterr().err
    assert main(["shards", str(folder), str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o3")]) == 1


def test_inspect_reports_statistics_and_failures(fault_shards, synth_dir, capsys):
    assert main(["inspect", synth_dir["val"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == report["usable"] == 12 and report["failures"] == {}
    assert report["resolutions"] == {"32x32": 12} and report["duration"]["mean"] == pytest.approx(1.0)
    assert len(report["examples"]) == 5
    assert main(["inspect", fault_shards["faults"], fault_shards["truncated"], "--decode"]) == 0
    text = capsys.readouterr().out
    for reason in ["decode_error", "empty_file", "no_caption", "bad_text_encoding", "status_not_success",
                   "no_video", "bad_metadata", "truncated_tar"]:
        assert reason in text
    assert "resolutions" in text and "64x48" in text
    assert main(["inspect", "/nonexistent/shard-{0..3}.tar"]) == 1


def test_synth_writes_splits(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["synth", "--out", str(out), "--train", "20", "--val", "4", "--test", "4", "--frames", "8",
            "--size", "32", "--workers", "2", "--task", "direction", "--maxcount", "8", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "clips/min" in text and "train-{000000..000002}.tar" in text
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert {k: v["num_samples"] for k, v in splits.items()} == {"train": 20, "val": 4, "test": 4}
    assert len(expand_shards(splits["train"]["path"])) == 3
    assert main(args + ["--skip-existing"]) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(args[:-1] + ["--skip-existing", "--seed", "3", "--quiet"]) == 0  # other settings: rewritten
    assert "clips/min" in capsys.readouterr().out
    assert main(["synth", "--out", str(out), "--size", "33", "--train", "1", "--quiet"]) == 1  # odd size


def _readme_command(prefix: str) -> list[str]:
    """The arguments of the README line that starts with ``prefix``, as a user would paste it."""
    import shlex

    readme = Path(__file__).resolve().parents[1] / "README.md"
    (line,) = [ln for ln in readme.read_text().splitlines() if ln.startswith(prefix)]
    return shlex.split(line.split("#")[0])[2:]  # drop `vl data`


def test_readme_shards_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """README: `vl data shards --videos videos/ --annotations ann.jsonl --out shards/ ...` (flags form)."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "x.mp4").write_bytes(encode_indexed_clip())
    (tmp_path / "ann.jsonl").write_text(json.dumps({"video": "x.mp4", "caption": "a clip"}) + "\n")
    monkeypatch.chdir(tmp_path)
    argv = _readme_command("vl data shards")
    assert "--videos" in argv and "--annotations" in argv
    assert main(argv + ["--quiet"]) == 0
    assert "wrote 1 samples in 1 shards" in capsys.readouterr().out
    assert (tmp_path / "shards" / "shard-000000.tar").exists()
    # A positional and its flag mixed, or an input missing: a usage error naming the input.
    assert main(["shards", "videos", "--annotations", "ann.jsonl", "--out", "o2", "--quiet"]) == 0
    assert main(["shards", "videos", "ann.jsonl", "--annotations", "ann.jsonl", "--out", "o3"]) == 2
    assert "given as well as" in capsys.readouterr().err
    assert main(["shards", "--videos", "videos", "--out", "o4"]) == 2
    assert "missing the ANNOTATIONS file" in capsys.readouterr().err


def test_non_utf8_annotation_line_is_named_and_counted(tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(encode_indexed_clip())
    ann = tmp_path / "ann.jsonl"
    ann.write_bytes(b'{"video": "x.mp4", "caption": "fine"}\n{"video": "x.mp4", "caption": "caf\xe9"}\n')
    assert main(["shards", str(folder), str(ann), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 samples" in out and f"{ann}, line 2: not UTF-8: byte 0xe9 at column 35" in out
    csv_ann = tmp_path / "ann.csv"
    csv_ann.write_bytes(b"video,caption\nx.mp4,fine\nx.mp4,caf\xe9\n")
    assert main(["shards", str(folder), str(csv_ann), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 samples" in out and f"{csv_ann}, line 3: not UTF-8: byte 0xe9 at column 4" in out


def test_csv_without_video_column_names_the_file_and_leaves_no_shard(tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(encode_indexed_clip())
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.mp4,hi\n")
    out = tmp_path / "o"
    assert main(["shards", str(folder), str(bad), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}, line 1" in err and "`video` column" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_failed_run_leaves_no_shard(tmp_path, monkeypatch):
    """An error in the middle of a run removes the shards already written, complete or not."""
    import datapipes.write as write

    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(encode_indexed_clip())
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": "x.mp4", "caption": f"row {i}"}) + "\n" for i in range(5)))
    real, calls = write.build_sample, []

    def failing(folder, row, probe=True):
        calls.append(row)
        if len(calls) == 4:
            raise OSError("disk full")
        return real(folder, row, probe=probe)

    monkeypatch.setattr(write, "build_sample", failing)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="disk full"):
        write.write_shards(str(folder), str(ann), str(out), maxcount=2, probe=False, progress=False)
    assert len(calls) == 4 and list(out.iterdir()) == []  # one full shard and one partial: both gone
    report = write.write_shards(str(folder), str(ann), str(out), maxcount=2, probe=False, progress=False)
    assert report.written == 5 and sorted(p.name for p in out.iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-summary.json"]


def _encode_with_pyav(path: Path, container: str, codec: str, frames: int = 8) -> None:
    """A small clip in ``container`` / ``codec``, written by PyAV (FFmpeg), as cameras and old encoders write them."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)  # a frame rate every one of these codecs allows
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), 16 + 20 * i, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("name,container,codec", [("a.mpg", "mpeg", "mpeg1video"), ("b.wmv", "asf", "wmv2"),
                                                  ("c.3gp", "3gp", "mpeg4"), ("d.mts", "mpegts", "mpeg2video")])
def test_camera_and_legacy_formats_are_written_and_decoded(name, container, codec, tmp_path, tokenizer):
    """Containers that benchmark datasets ship (DiDeMo's .mpg / .wmv / .3gp / .mts) go into shards and decode."""
    folder = tmp_path / "v"
    folder.mkdir()
    _encode_with_pyav(folder / name, container, codec)
    (tmp_path / "ann.jsonl").write_text(json.dumps({"video": name, "caption": "a clip"}) + "\n")
    assert main(["shards", str(folder), str(tmp_path / "ann.jsonl"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    shard = str(tmp_path / "s" / "shard-000000.tar")
    assert any(n.endswith("." + name.rsplit(".", 1)[1]) for n in _tar_names(shard))
    batch = next(iter(build_eval_loader(shard, tokenizer, ClipConfig(num_frames=4, size=32), batch_size=1)))
    assert batch.video.shape == (1, 4, 3, 32, 32) and not batch.skipped
