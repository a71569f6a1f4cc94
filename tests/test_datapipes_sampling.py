"""Unit tests: frame sampling (pure functions) and clip-consistent augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datapipes.augment import (
    center_crop_box,
    eval_transform,
    norm_stats,
    normalize,
    normalize_into,
    pad_frames,
    random_resized_crop_box,
    train_transform,
)
from datapipes.sampling import (
    clip_bounds,
    fps_indices,
    random_segment_indices,
    sample_indices,
    uniform_indices,
)


def test_clip_bounds_converts_seconds_and_clamps():
    assert clip_bounds(100, 10.0) == (0, 100)
    assert clip_bounds(100, 10.0, start=1.0, end=2.5) == (10, 25)
    assert clip_bounds(100, 10.0, start=-3, end=50) == (0, 100)
    lo, hi = clip_bounds(100, 10.0, start=20.0, end=30.0)  # past the end: empty window
    assert lo >= hi


def test_uniform_takes_segment_middles_in_window():
    idx = uniform_indices(10, 26, 4)  # segments of 4 frames: 10-13, 14-17, 18-21, 22-25
    assert idx.tolist() == [12, 16, 20, 24]
    assert uniform_indices(0, 3, 8).tolist() == [0, 1, 2]  # short clip: every frame, no repeats


def test_random_segment_draws_one_frame_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = random_segment_indices(0, 40, 4, rng)
        assert len(idx) == 4
        for k, i in enumerate(idx):
            assert 10 * k <= i < 10 * (k + 1)
        seen.add(tuple(idx))
    assert len(seen) > 50  # random, not fixed


def test_random_segment_uneven_segments_stay_in_window():
    rng = np.random.default_rng(1)
    for lo, hi, num in [(5, 12, 6), (0, 9, 8), (3, 100, 7)]:
        for _ in range(50):
            idx = random_segment_indices(lo, hi, num, rng)
            assert len(idx) == num and np.all(np.diff(idx) > 0) and idx.min() >= lo and idx.max() < hi


def test_fps_sampling_keeps_the_rate():
    idx = fps_indices(0, 250, 8, video_fps=25.0, target_fps=5.0)  # every 5th frame, window centred
    assert np.all(np.diff(idx) == 5) and len(idx) == 8
    assert idx[0] == (250 - 36) // 2  # centred: slack (250 - 36) / 2
    rng = np.random.default_rng(0)
    starts = {int(fps_indices(0, 250, 8, 25.0, 5.0, rng)[0]) for _ in range(20)}
    assert len(starts) > 5  # training: random window
    short = fps_indices(0, 20, 8, video_fps=25.0, target_fps=5.0)  # 0.8 s clip, 1.6 s window
    assert short.tolist() == [0, 5, 10, 15]  # what fits; the clip is padded later


def test_sample_indices_honours_start_end():
    idx = sample_indices("uniform", 240, 24.0, 4, start=2.0, end=4.0)  # frames 48..95
    assert idx.min() >= 48 and idx.max() < 96
    rng = np.random.default_rng(0)
    idx = sample_indices("random_segment", 240, 24.0, 4, start=2.0, end=4.0, rng=rng)
    assert idx.min() >= 48 and idx.max() < 96
    idx = sample_indices("fps", 240, 24.0, 4, start=2.0, end=4.0, target_fps=4.0)
    assert idx.min() >= 48 and idx.max() < 96 and np.all(np.diff(idx) == 6)
    assert len(sample_indices("uniform", 240, 24.0, 4, start=20.0)) == 0  # outside the video
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices("bogus", 10, 1.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rng"):
        sample_indices("random_segment", 10, 1.0, 2)


def _ramp_frames(t: int = 6, h: int = 40, w: int = 60) -> np.ndarray:
    """Identical frames: red ramps left to right, green top to bottom, blue constant."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, :, 0] = np.arange(w, dtype=np.uint8)[None] * 4
    frame[:, :, 1] = np.arange(h, dtype=np.uint8)[:, None] * 6
    frame[:, :, 2] = 90
    return np.repeat(frame[None], t, axis=0)


def test_train_transform_is_the_same_for_every_frame():
    frames = _ramp_frames()
    rng = np.random.default_rng(3)
    clip = train_transform(frames, 32, rng, hflip=1.0, jitter=0.3, scale=(0.3, 0.6))
    assert clip.shape == (6, 3, 32, 32) and clip.dtype == torch.uint8  # normalised at collation
    # Identical input frames stay identical: one crop, one flip, one set of jitter factors per clip.
    assert torch.equal(clip, clip[:1].expand(6, -1, -1, -1))
    assert (clip[0, 0, :, 0] > clip[0, 0, :, -1]).all()  # flipped: the red ramp now decreases
    other = train_transform(frames, 32, rng, scale=(0.3, 0.6))
    assert not torch.equal(clip, other)  # another clip, other parameters
    plain = train_transform(frames, 32, np.random.default_rng(3), hflip=0.0, scale=(1.0, 1.0), ratio=(1.5, 1.5))
    assert (plain[0, 0, :, 0] < plain[0, 0, :, -1]).all()  # no flip
    jittered = train_transform(frames, 32, np.random.default_rng(3), jitter=0.5, scale=(1.0, 1.0), ratio=(1.5, 1.5))
    assert not torch.equal(jittered, plain) and torch.equal(jittered, jittered[:1].expand(6, -1, -1, -1))


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(100):
        box = random_resized_crop_box(100, 150, (0.2, 0.5), (3 / 4, 4 / 3), rng)
        assert 0 <= box.top and box.top + box.height <= 100 and 0 <= box.left and box.left + box.width <= 150
        assert 0.15 <= box.height * box.width / 15000 <= 0.55
    fallback = random_resized_crop_box(10, 200, (0.9, 1.0), (1.0, 1.0), rng)  # impossible: centred square
    assert (fallback.height, fallback.width) == (10, 10) and fallback.left == 95


def test_eval_transform_center_crops_and_normalises():
    frames = np.full((2, 32, 48, 3), 255, np.uint8)
    frames[:, :, 8:40] = 0  # the centre 32 columns are black, the sides white
    clip = eval_transform(frames, 32)
    assert clip.shape == (2, 3, 32, 32) and clip.dtype == torch.uint8
    assert clip.eq(0).all()  # only the black centre is kept
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's
    assert norm_stats("clip") == (mean, std)
    assert norm_stats("imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(clip, "clip"), expected.expand(2, 3, 32, 32), atol=1e-5)
    out = torch.empty(2, 3, 32, 32)
    normalize_into(out, clip, "clip")
    assert torch.allclose(out, expected.expand(2, 3, 32, 32), atol=1e-5)
    assert center_crop_box(32, 48, 32).left == 8


def test_normalize_statistics_differ_by_model():
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    a, b = normalize(x, "imagenet"), normalize(x, "clip")
    assert not torch.allclose(a, b)
    assert torch.allclose(a[0, 0, 0, 0], torch.tensor((128 / 255 - 0.485) / 0.229), atol=1e-5)
    assert torch.allclose(normalize(x.float() / 255, "imagenet"), a, atol=1e-5)  # float input in [0, 1]


def test_pad_frames_repeats_last_frame_and_masks_it():
    clip = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    padded, mask = pad_frames(clip, 5)
    assert padded.shape == (5, 3, 2, 2) and mask.tolist() == [True, True, True, False, False]
    assert padded[3:].eq(2).all()
    with pytest.raises(ValueError):
        pad_frames(clip[:0], 5)


@pytest.mark.parametrize("bad,message", [
    (dict(sampling="dense"), "sampling"), (dict(backend="opencv"), "backend"), (dict(norm="laion"), "norm"),
    (dict(text_field="answer"), "text_field"), (dict(crop_scale=(0.6, 0.2)), "crop_scale"),
    (dict(num_frames=0), "num_frames"),
])
def test_clip_config_rejects_bad_settings(bad, message):
    from datapipes.pipeline import ClipConfig

    with pytest.raises(ValueError, match=message):
        ClipConfig(**bad)
