"""The synthetic generator: captions match what the frames show, only frame order tells pairs apart."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import decord
import numpy as np
import pytest

from datapipes.pipeline import ClipConfig, build_eval_loader
from datapipes.shards import expand_shards
from datapipes.synth import COLORS, DIRECTIONS, SynthConfig, _draw, make_sample

CFG = SynthConfig(frames=8, size=32, fps=8)


def _decode(mp4: bytes) -> np.ndarray:
    return decord.VideoReader(io.BytesIO(mp4)).get_batch(list(range(CFG.frames))).asnumpy()  # (T, H, W, 3)


def _colour_mask(frames: np.ndarray, color: str) -> np.ndarray:
    """(T, H, W) pixels close to a palette colour (after lossy encoding)."""
    return np.abs(frames.astype(int) - np.array(COLORS[color])).sum(-1) < 90


def _centroids(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    area = mask.sum((1, 2))
    return np.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], 1)  # (T, 2) x, y


def test_samples_are_deterministic():
    a, b = make_sample("train", 3, CFG), make_sample("train", 3, CFG)
    assert a["mp4"] == b["mp4"] and a["json"] == b["json"]
    assert make_sample("val", 3, CFG)["mp4"] != a["mp4"]
    assert make_sample("train", 3, SynthConfig(frames=8, size=32, fps=8, seed=1))["mp4"] != a["mp4"]


@pytest.mark.parametrize("index", range(8))
def test_caption_describes_the_frames(index):
    sample = make_sample("train", index, CFG)
    meta = json.loads(sample["json"])
    frames = _decode(sample["mp4"])
    (color, _shape), label = meta["objects"][0], meta["label"]
    mask = _colour_mask(frames, color)
    if label in DIRECTIONS:
        xy = _centroids(mask)
        axis, sign = {"left_to_right": (0, 1), "right_to_left": (0, -1),
                      "top_to_bottom": (1, 1), "bottom_to_top": (1, -1)}[label]
        assert np.all(sign * np.diff(xy[:, axis]) > 0) and np.ptp(xy[:, 1 - axis]) < 1.5
    elif label in ("grows", "shrinks"):
        area = mask.sum((1, 2))
        assert (area[-1] > 4 * area[0]) if label == "grows" else (area[0] > 4 * area[-1])
    else:
        first, second = meta["objects"] if label == "first_then_second" else meta["objects"][::-1]
        half = CFG.frames // 2
        assert _colour_mask(frames[:half], first[0]).sum() > 10 and _colour_mask(frames[half:], first[0]).sum() < 5
        assert _colour_mask(frames[half:], second[0]).sum() > 10 and _colour_mask(frames[:half], second[0]).sum() < 5
    assert sample["txt"].decode() == meta["captions"][0] and len(meta["captions"]) == 4


@pytest.mark.parametrize("pair", [("left_to_right", "right_to_left"), ("top_to_bottom", "bottom_to_top"),
                                  ("grows", "shrinks"), ("first_then_second", "second_then_first")])
def test_paired_events_are_time_reversals(pair):
    objects = [("red", "square"), ("blue", "circle")]
    a = _draw(pair[0], objects, CFG, np.random.default_rng(5))
    b = _draw(pair[1], objects, CFG, np.random.default_rng(5))
    assert np.array_equal(a, b[::-1])  # same frames, opposite order: frame averaging cannot tell them apart
    assert not np.array_equal(a, b)


def test_direction_task_captions_differ_only_in_direction():
    cfg = SynthConfig(frames=8, size=32, fps=8, task="direction")
    metas = [json.loads(make_sample("train", i, cfg)["json"]) for i in range(48)]
    assert Counter(m["label"] for m in metas) == {d: 12 for d in DIRECTIONS}
    words = r"\b(left|right|top|bottom)\b"
    by_object: dict[tuple, set] = {}
    for m in metas:
        template = re.sub(words, "_", m["caption"])
        by_object.setdefault(tuple(m["objects"][0]), set()).add(template)
        assert m["task"] == "move" and re.findall(words, m["caption"])
    assert all(len(t) == 1 for t in by_object.values())  # one template per object: only directions vary
    colours = {m["objects"][0][0] for m in metas}
    assert len(colours) == len(COLORS)


def test_synth_shards_load_through_the_pipeline(synth_dir, tokenizer):
    info = json.loads(open(f"{synth_dir['dir']}/splits.json").read())
    assert info["splits"]["train"] == {**info["splits"]["train"], "num_samples": 48, "num_shards": 3}
    assert len(expand_shards(synth_dir["train"])) == 3
    cfg = ClipConfig(num_frames=8, size=32, max_text_len=16, text_field="mc")
    batches = list(build_eval_loader(synth_dir["val"], tokenizer, cfg, batch_size=6))
    # two multiple-choice items per clip: what happens (transition) and which caption (other objects)
    assert sum(b.batch_size for b in batches) == 24 and all(b.skipped == {} for b in batches)
    b = batches[0]
    assert b.choice_ids.shape == (6, 4, 16) and b.answer_idx.min() >= 0 and b.answer_idx.max() < 4
    for i, (meta, qtype) in enumerate(zip(b.meta, b.question_type)):  # the right choice is the caption
        item = next(q for q in meta["qa"] if q["type"] == qtype)
        assert item["choices"][int(b.answer_idx[i])] == meta["caption"]
    assert set(b.question_type) == {"transition", "caption"}


def test_synth_questions_about_time_and_appearance():
    from collections import Counter

    metas = [json.loads(make_sample("train", i, SynthConfig(frames=8, size=32))["json"]) for i in range(24)]
    types = Counter(q["type"] for m in metas for q in m["qa"])
    assert types == {"direction": 12, "size": 6, "order": 6, "color": 24, "transition": 24, "caption": 24}
    for m in metas:
        colour = next(q for q in m["qa"] if q["type"] == "color")
        assert colour["answer"] == m["objects"][0][0] and colour["answer"] not in colour["question"]
        caption = next(q for q in m["qa"] if q["type"] == "caption")
        assert len(set(caption["choices"])) == 4 and caption["choices"][caption["answer_idx"]] == m["caption"]
    motion = json.loads(make_sample("train", 0, SynthConfig(frames=8, size=32, task="motion"))["json"])
    assert [q["type"] for q in motion["qa"]] == ["direction", "color", "transition"]  # captions name no objects


def test_synth_into_a_broken_link_or_a_file_says_so(tmp_path, capsys):
    from datapipes.cli import main as data_main

    link = tmp_path / "synth"
    link.symlink_to(tmp_path / "deleted")
    argv = ["synth", "--train", "2", "--val", "0", "--test", "0", "--frames", "4", "--size", "32", "--quiet"]
    assert data_main(argv[:1] + ["--out", str(link)] + argv[1:]) == 1
    assert "which does not exist: remove the link" in capsys.readouterr().err
    plain = tmp_path / "file"
    plain.write_text("")
    assert data_main(argv[:1] + ["--out", str(plain)] + argv[1:]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    (tmp_path / "deleted").mkdir()  # the link's target created: it writes there
    assert data_main(argv[:1] + ["--out", str(link)] + argv[1:]) == 0
    assert sorted(p.name for p in (tmp_path / "deleted").iterdir()) == ["splits.json", "train-000000.tar"]


def test_holdout_keeps_test_compositions_out_of_training():
    """With holdout, no (object, event family) composition of val/test occurs in training, yet every held-out
    object and every event family does; without it, both splits draw from every composition."""
    from datapipes.synth import FAMILIES, held_out

    def compositions(split: str, n: int, cfg: SynthConfig) -> set[tuple[str, str, str]]:
        metas = [json.loads(make_sample(split, i, cfg)["json"]) for i in range(n)]
        assert all(m["held_out"] == held_out(tuple(m["objects"][0]), m["label"]) for m in metas)
        return {(*m["objects"][0], FAMILIES[m["label"]]) for m in metas}

    cfg = SynthConfig(frames=4, size=16, fps=8, holdout=True)
    train, test = compositions("train", 160, cfg), compositions("test", 24, cfg)
    first = [json.loads(make_sample("test", i, cfg)["json"]) for i in range(24)]
    assert len({(*m["objects"][0], m["label"]) for m in first}) == 24  # every held-out (object, event) once
    print(f"\n{len(train)} training and {len(test)} test compositions of 48")
    assert not train & test
    assert {(c, s) for c, s, _ in test} <= {(c, s) for c, s, _ in train}  # objects seen, with other events
    assert {f for *_, f in test} == {f for *_, f in train} == set(FAMILIES.values())
    assert len(test) == 12 and len(train) == 36  # each object holds out one family of four
    plain = SynthConfig(frames=4, size=16, fps=8)
    assert compositions("train", 160, plain) & compositions("test", 48, plain)


def test_holdout_order_twins_show_the_same_two_objects_and_no_captions_repeat():
    """In a held-out split each ``order`` clip's twin (the other order of its first object) shows the same two
    objects the other way round, and the 24 clips' captions are 24 distinct sentences: text-to-video R@1 can
    reach 100%. Clips of other events are the ones the generator drew before (their draws are unchanged)."""
    from datapipes.synth import TASK_LABELS

    cfg = SynthConfig(frames=4, size=16, fps=8, holdout=True)
    for split in ("val", "test"):
        metas = [json.loads(make_sample(split, i, cfg)["json"]) for i in range(24)]
        captions = [c for m in metas for c in m["captions"]]
        assert len(set(captions)) == len(captions), split
        order = {}
        for m in metas:
            if m["label"] in TASK_LABELS["order"]:
                order.setdefault(tuple(m["objects"][0]), {})[m["label"]] = m["objects"]
        assert len(order) == 3
        for first, twins in order.items():
            assert twins["first_then_second"] == twins["second_then_first"], (split, first)
