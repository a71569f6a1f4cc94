"""Shards in video2dataset's exact layout: its recipes (MSR-VTT's caption_N columns, clipped output with
saved start/end, resized output), failed downloads with their error_message, and its _stats.json files.

The writer below follows video2dataset (github.com/iejMac/video2dataset, commit 28e7d1c):
``workers/download_worker.py`` (``compute_key``, the json fields and their order, failed rows written
without video), ``data_writer.py`` ``WebDatasetSampleWriter`` (webdataset's TarWriter, ``json.dumps(meta,
indent=4)``, ``txt`` only when a caption column is saved), ``subsamplers/clipping_subsampler.py`` (clip keys
``KEY_NNNNN``, ``clips: [[start, end]]``), ``subsamplers/ffprobe_subsampler.py`` (``video_metadata``, probed
before any resizing) and ``logger.py`` ``write_stats``. ``tests/fixtures/v2d/`` holds files copied from a tar
video2dataset wrote (its README names them).
"""

from __future__ import annotations

import json
import logging
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from conftest import encode_indexed_clip, frame_index
from datapipes.cli import main
from datapipes.inspect import format_report, inspect_shards
from datapipes.pipeline import ClipConfig, build_eval_loader, process_sample
from datapipes.synth import encode_mp4

FIXTURES = Path(__file__).parent / "fixtures" / "v2d"
EVAL = ClipConfig(num_frames=8, size=32)


def compute_key(key: int, shard_id: int, oom_sample_per_shard: int, oom_shard_count: int) -> str:
    """video2dataset's ``compute_key`` (workers/download_worker.py), unchanged."""
    true_key = (10**oom_sample_per_shard) * shard_id + key
    return f"{true_key:0{oom_sample_per_shard + oom_shard_count}d}"


def ffprobe_metadata(width: int, height: int, duration: float) -> dict:
    """The parts of ffprobe's ``-show_format -show_streams`` json that the FFProbeSubsampler stores."""
    return {"streams": [{"index": 0, "codec_name": "h264", "codec_type": "video", "width": width, "height": height}],
            "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": f"{duration:.6f}"}}


def write_v2d_shard(out: Path, shard_id: int, rows: list[dict], *, columns: list[str], caption_col: bool,
                    number_sample_per_shard: int = 1000, oom_shard_count: int = 5) -> list[str]:
    """One shard as video2dataset's download worker writes it; returns the keys in shard order.

    A row: its saved ``columns`` (``caption``, ``clips``, ``url``, additional ones), and ``mp4`` (the file
    after subsampling), ``video_metadata`` (ffprobe of the source), ``error`` (a failed download's status
    and error_message); with ``clips`` among the columns, ``clip_mp4s`` (one file per span, cut from the source).
    """
    oom_sample = math.ceil(math.log10(number_sample_per_shard))
    stats = {"count": len(rows), "successes": 0, "failed_to_download": 0, "failed_to_subsample": 0}
    status_dict: dict[str, int] = {}
    keys = []
    name = f"{shard_id:0{oom_shard_count}d}"
    with wds.TarWriter(str(out / f"{name}.tar")) as writer:
        for i, row in enumerate(rows):
            key = compute_key(i, shard_id, oom_sample, oom_shard_count)
            meta = {**{c: row.get(c) for c in columns}, "key": key, "status": None, "error_message": None,
                    "yt_meta_dict": None}
            if "error" in row:  # written without video, status and error_message set
                meta["status"], meta["error_message"] = row["error"]
                stats[row["error"][0]] += 1
                status_dict[row["error"][1]] = status_dict.get(row["error"][1], 0) + 1
                samples = [({}, meta)]
            else:
                if "video_metadata" in row:
                    meta["video_metadata"] = row["video_metadata"]
                meta["status"] = "success"
                stats["successes"] += 1
                status_dict["success"] = status_dict.get("success", 0) + 1
                if "clips" in columns:  # ClippingSubsampler: one sample per span, the file cut to it
                    samples = [({"mp4": data}, {**meta, "clips": [span], "key": f"{key}_{j:05d}"})
                               for j, (span, data) in enumerate(zip(row["clips"], row["clip_mp4s"]))]
                else:
                    samples = [({"mp4": row["mp4"]}, meta)]
            for streams, sample_meta in samples:
                sample = {"__key__": sample_meta["key"], **streams}
                if caption_col:
                    sample["txt"] = str(row["caption"]) if row.get("caption") is not None else ""
                sample["json"] = json.dumps(sample_meta, indent=4)
                writer.write(sample)
                keys.append(sample_meta["key"])
    stats.update(duration=1.0, bytes_downloaded=0, start_time=0.0, end_time=1.0, status_dict=status_dict)
    (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return keys


def raw_samples(path: Path) -> list[dict]:
    """The shard's samples as the pipeline receives them (webdataset grouping)."""
    return list(wds.WebDataset(str(path), shardshuffle=False))


def test_member_layout_is_video2datasets(tmp_path):
    """The writer above lays members out as the tar video2dataset wrote: json, mp4, txt per key."""
    real = (FIXTURES / "return_all_test.members.txt").read_text().split()
    real_exts = [m.split(".", 1)[1] for m in real]
    assert real_exts == ["json", "mp4", "txt"] * (len(real) // 3)
    keys = write_v2d_shard(tmp_path, 0, [{"url": "u0", "caption": "c", "mp4": b"x"}] * 2,
                           columns=["caption", "url"], caption_col=True, number_sample_per_shard=10_000)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
    assert keys == ["000000000", "000000001"] and len(real[0].split(".")[0]) == len(keys[0])
    assert [n.split(".", 1)[1] for n in names] == real_exts[:6]


def test_msrvtt_recipe_reads_all_twenty_caption_columns(tmp_path, tokenizer):
    """dataset_examples/MSRVTT.md: no caption column (so no KEY.txt), captions in caption_0..caption_19."""
    columns = ["video_id", "category", "id"] + [f"caption_{i}" for i in range(20)] + ["url"]
    rows = []
    for n in range(2):
        row = {"video_id": f"video{7010 + n}", "category": 9, "id": 7010 + n, "url": f"/data/TestVideo/video{7010 + n}.mp4",
               "mp4": encode_indexed_clip()}
        row.update({f"caption_{i}": f"video {n} caption number {i}" for i in range(20)})
        rows.append(row)
    rows[1]["caption_19"] = ""  # the recipe fills missing captions with "": not a caption
    write_v2d_shard(tmp_path, 0, rows, columns=columns, caption_col=False)
    assert "txt" not in raw_samples(tmp_path / "00000.tar")[0]

    batches = list(build_eval_loader(str(tmp_path / "00000.tar"), tokenizer, EVAL, batch_size=2))
    assert [b.skipped for b in batches] == [{}]
    refs = batches[0].references
    assert refs[0] == [f"video 0 caption number {i}" for i in range(20)]  # in column order: 2 before 10
    assert refs[1] == [f"video 1 caption number {i}" for i in range(19)]
    report = inspect_shards(str(tmp_path / "00000.tar"))
    assert report["usable"] == 2 and report["captions_per_sample"]["max"] == 20


def failed_and_good_shard(tmp_path: Path) -> Path:
    rows = [
        {"caption": "a dog runs", "url": "https://example.com/a.mp4", "mp4": encode_indexed_clip(),
         "video_metadata": ffprobe_metadata(64, 48, 3.0)},
        {"caption": "gone", "url": "https://example.com/b.mp4",
         "error": ("failed_to_download", "HTTP Error 404: Not Found")},
        {"caption": "bad file", "url": "https://example.com/c.mp4",
         "error": ("failed_to_subsample", "ffprobe: Invalid data found when processing input")},
    ]
    write_v2d_shard(tmp_path, 0, rows, columns=["caption", "url"], caption_col=True)
    return tmp_path / "00000.tar"


def test_error_message_reaches_inspect_and_the_logs(tmp_path, tokenizer, capsys, caplog):
    shard = failed_and_good_shard(tmp_path)
    report = inspect_shards(str(shard))
    assert report["failures"] == {"status_not_success": 2}
    assert report["failure_examples"]["status_not_success"] == [
        "00000001: failed_to_download: HTTP Error 404: Not Found",
        "00000002: failed_to_subsample: ffprobe: Invalid data found when processing input"]
    assert report["video2dataset"] == {"files": 1, "count": 3, "successes": 1, "failed_to_download": 1,
                                       "failed_to_subsample": 1, "status_dict": {
                                           "success": 1, "HTTP Error 404: Not Found": 1,
                                           "ffprobe: Invalid data found when processing input": 1}}
    assert main(["inspect", str(shard)]) == 0
    text = capsys.readouterr().out
    assert "  status_not_success  2\n" in text  # a space between reason and count
    assert "e.g. 00000001: failed_to_download: HTTP Error 404: Not Found" in text
    assert "count 3  successes 1  failed_to_download 1  failed_to_subsample 1" in text

    with caplog.at_level(logging.DEBUG, logger="datapipes"):
        batches = list(build_eval_loader(str(shard), tokenizer, EVAL, batch_size=4))
    assert [k for b in batches for k in b.keys] == ["00000000"]
    assert batches[0].skipped == {"status_not_success": 2}
    assert "skipped (status_not_success) 00000001" in caplog.text
    assert "failed_to_download: HTTP Error 404: Not Found" in caplog.text


def test_inspect_reason_column_fits_the_longest_reason():
    report = {"shards": 1, "samples": 3, "usable": 0, "extensions": {}, "duration": {}, "resolutions": {}, "fps": {},
              "captions_per_sample": {}, "examples": [], "failures": {"status_not_success": 2, "no_video": 1},
              "failure_examples": {}}
    lines = format_report(report).splitlines()
    assert "  status_not_success  2" in lines and "  no_video            1" in lines


def test_clipped_output_with_saved_start_end_reads_the_whole_file(tmp_path):
    """The ACAV100M recipe (dataset_examples/ACAV.md): clip_col plus save_additional_columns [videoID, start,
    end]. The real clip json of tests/fixtures/v2d (clips [[50.37, 55.37]], a 5.0 s file) with those columns:
    start/end are source times; the file is the clip, sampled over its whole length."""
    real = json.loads((FIXTURES / "0000030_00005.json").read_text())
    (start, end), = real["clips"]
    meta = {"videoID": "hS_wm-hAbP4", "start": start, "end": end, **real}
    raw = {"__key__": real["key"], "mp4": encode_indexed_clip(num_frames=30, fps=6),  # 5.0 s, as the real clip
           "txt": (FIXTURES / "0000030_00005.txt").read_bytes(), "json": json.dumps(meta, indent=4).encode()}
    [sample] = process_sample(raw, EVAL, False, np.random.default_rng(0))
    indices = [frame_index(f) for f in sample.video.numpy()]
    assert sample.frame_mask.all() and indices[0] <= 2 and indices[-1] >= 27, indices  # spans the whole file
    assert sample.references == ["a close - up view of a bed in a room ."]

    plain = {k: v for k, v in meta.items() if k != "clips"}  # our own start/end: bounds inside the file
    plain.update(start=1.0, end=2.0)
    [inside] = process_sample({**raw, "json": json.dumps(plain).encode()}, EVAL, False, np.random.default_rng(0))
    assert all(5 <= frame_index(f) <= 12 for f in inside.video.numpy())


def test_clipped_shard_keys_and_bounds_through_the_loader(tmp_path, tokenizer):
    """ACAV's config (2000 samples per shard: 9-digit keys); one row cut into two clips, one row with one."""
    spans = [[[100.0, 103.0], [110.0, 113.0]], [[40.0, 43.0]]]
    rows = [{"videoID": f"v{n}", "start": s[0][0], "end": s[-1][1], "clips": s, "caption": f"row {n}",
             "url": f"https://youtube.com/watch?v=v{n}", "clip_mp4s": [encode_indexed_clip()] * len(s)}
            for n, s in enumerate(spans)]
    keys = write_v2d_shard(tmp_path, 3, rows, columns=["videoID", "start", "end", "clips", "caption", "url"],
                           caption_col=True, number_sample_per_shard=2000)
    assert keys == ["000030000_00000", "000030000_00001", "000030001_00000"]
    batches = list(build_eval_loader(str(tmp_path / "00003.tar"), tokenizer, EVAL, batch_size=4))
    assert batches[0].keys == keys and batches[0].skipped == {}  # source times: no bad_clip_bounds


def stripes_clip(size: int = 64) -> bytes:
    """A square clip whose outer quarters are white and middle half black (stretching it changes the centre)."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[:, : size // 4] = 255
    frame[:, 3 * size // 4:] = 255
    return encode_mp4(np.repeat(frame[None], 8, axis=0), 8)


def test_resized_output_decodes_at_the_files_own_shape(tmp_path):
    """ResolutionSubsampler output: a 64x64 file whose video_metadata (ffprobe of the source) says 1280x540."""
    meta = {"caption": "stripes", "url": "u", "key": "00000000", "status": "success", "error_message": None,
            "yt_meta_dict": None, "video_metadata": ffprobe_metadata(1280, 540, 1.0)}
    raw = {"__key__": "00000000", "mp4": stripes_clip(), "txt": b"stripes", "json": json.dumps(meta).encode()}
    for backend in ("decord", "pyav"):
        [sample] = process_sample(raw, ClipConfig(num_frames=4, size=32, backend=backend), False,
                                  np.random.default_rng(0))
        mean = float(sample.video.float().mean())  # square crop of the whole frame: half white
        assert 100 < mean < 155, (backend, mean)  # stretched to 76x32 its centre would be black (~0)


def test_our_writers_probed_size_is_still_used_and_checked(tmp_path):
    """Our writer's width/height (beside num_frames, from its header probe) describe the file itself."""
    from datapipes.meta import size_hint

    assert size_hint({"width": 64, "height": 48, "num_frames": 24, "fps": 8.0, "duration": 3.0}) == (64, 48)
    assert size_hint({"video_metadata": ffprobe_metadata(1280, 540, 1.0)}) is None
    assert size_hint({"width": 800, "height": 808, "original_width": 800}) is None  # a column of unknown meaning
