"""Synthetic video-caption shards whose captions take time to understand.

Each clip shows coloured shapes on a lightly textured background, drawn with numpy and encoded as a
small H.264 (or MPEG-4) mp4 in memory with PyAV. Three kinds of event, each caption naming what
only the order of the frames reveals:

- ``move``: a shape moves left/right/up/down ("a red square moves from left to right");
- ``size``: a shape grows or shrinks ("a blue circle grows bigger");
- ``order``: one shape is shown, then another ("a red circle appears, then a green triangle appears").

The two clips of each pair (left->right and right->left, grow and shrink, A-then-B and B-then-A) are
time reversals of one another, so a model that averages its frames cannot tell them apart. With
``task="direction"``, every clip is a ``move`` and captions of a given colour and shape differ only in
the direction words; with ``task="motion"``, captions name only the direction, each in its own words
("an object moves to the right", "... upwards"): colour and shape vary but go unsaid, so the captions
of all clips differ only in the direction of motion, and telling them apart takes the order of the
frames but no word order (unlike "from left to right" against "from right to left"). Samples are deterministic functions of (seed, split, index), whatever the number
of worker processes.

With ``holdout=True`` the splits test composition, not memory: an object (colour and shape; the first
object of an ``order`` event) is paired with an event family (horizontal or vertical motion, size change,
order) and a quarter of these (object, family) compositions never occur in training: every object is
trained with its other families and every family with other objects. Validation and test clips show the
held-out compositions only (``held_out``), each (object, event) in turn: with ``task="all"`` the first 24
clips of a split are the 24 held-out (object, event) pairs once each, every clip beside its time reversal
(the two ``order`` clips of a first object show the same second object, ``order_partner``), and no two
share a caption: a gallery of distinct clips, so text-to-video R@1 can reach 100%.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Literal

import numpy as np

SynthTask = Literal["all", "direction", "motion", "size", "order"]
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 230), "yellow": (235, 215, 40),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[str, str, str, str]] = {
    # label: (from, to, "moving ..." phrase, one-word answer)
    "left_to_right": ("left", "right", "to the right", "right"),
    "right_to_left": ("right", "left", "to the left", "left"),
    "top_to_bottom": ("top", "bottom", "downwards", "down"),
    "bottom_to_top": ("bottom", "top", "upwards", "up"),
}
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "direction": tuple(DIRECTIONS),
    "size": ("grows", "shrinks"),
    "order": ("first_then_second", "second_then_first"),
}
TASK_LABELS["all"] = TASK_LABELS["direction"] + TASK_LABELS["size"] + TASK_LABELS["order"]
TASK_LABELS["motion"] = TASK_LABELS["direction"]
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Event family of each label: both directions of an axis, grow and shrink, and both orders are one family, so a
# held-out composition holds out a clip and its time reversal together
FAMILIES: dict[str, str] = {"left_to_right": "horizontal", "right_to_left": "horizontal",
                            "top_to_bottom": "vertical", "bottom_to_top": "vertical",
                            "grows": "size", "shrinks": "size",
                            "first_then_second": "order", "second_then_first": "order"}
FAMILY_ORDER: tuple[str, ...] = ("horizontal", "vertical", "size", "order")
HOLDOUT_EVERY = 4  # one (object, family) composition in four is held out


@dataclass(frozen=True)
class SynthConfig:
    """Shape of the synthetic clips."""

    frames: int = 16  # frames per clip
    size: int = 64  # frames are size x size pixels (even)
    fps: int = 8  # frame rate written in the mp4
    task: SynthTask = "all"  # which events appear; "direction" for motion-direction-only captions
    seed: int = 0
    codec: str = "libx264"  # libx264 or mpeg4 (fallback when libx264 is missing)
    holdout: bool = False  # val/test only on (object, event family) compositions never seen in training


def held_out(obj: tuple[str, str], label: str) -> bool:
    """True when the composition of object ``obj`` (colour, shape) and ``label``'s event family is held out of
    training: objects and families are numbered, and one pair in ``HOLDOUT_EVERY`` (a diagonal pattern, so that
    each object keeps three families in training and each family nine of the twelve objects) is held out."""
    index = list(COLORS).index(obj[0]) * len(SHAPES) + SHAPES.index(obj[1])
    return (index + FAMILY_ORDER.index(FAMILIES[label])) % HOLDOUT_EVERY == 0


def order_partner(first: tuple[str, str], seed: int, split: str) -> tuple[str, str]:
    """The second object of the held-out ``order`` clips whose first object is ``first``: one per (seed, split,
    first object), so that a clip and its time reversal (A then B, B then A) show the same two objects, and
    never itself the first object of a held-out ``order`` clip, so that no two clips of a held-out split
    share a caption (A then B would otherwise also be drawn as B's clip with partner A)."""
    colors = list(COLORS)
    partners = [(c, sh) for c in colors for sh in SHAPES
                if c != first[0] and sh != first[1] and not held_out((c, sh), "first_then_second")]
    pick = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), colors.index(first[0]), SHAPES.index(first[1]), 2])
    return partners[int(pick.integers(len(partners)))]


def _shape_masks(shape: str, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (T, size, size) of ``shape`` with per-frame centre (cx, cy) and half-size r (T,)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (S, S)
    dx = xx[None] - cx[:, None, None]  # (T, S, S)
    dy = yy[None] - cy[:, None, None]
    rr = r[:, None, None]
    if shape == "square":
        return (np.abs(dx) <= rr) & (np.abs(dy) <= rr)
    if shape == "circle":
        return dx * dx + dy * dy <= rr * rr
    if shape == "triangle":  # apex up: half-width grows from 0 at the top to r at the bottom
        return (dy >= -rr) & (dy <= rr) & (np.abs(dx) <= (dy + rr) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dim plain colour with light static texture, (size, size, 3) float."""
    base = rng.uniform(20, 90, size=3)
    texture = rng.normal(0, 6, size=(size // 8 + 1, size // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:size, :size]
    return base[None, None] + texture + rng.normal(0, 2, size=(size, size, 1))


def _motion(label: str, t: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Centre x, centre y and half-size r per frame (each (T,)) of a ``move`` or ``size`` event."""
    if label in DIRECTIONS:
        r = np.full_like(t, size * rng.uniform(0.10, 0.15))
        lo, hi = r[0] + 2, size - r[0] - 3
        along = lo + (hi - lo) * (t if label in ("left_to_right", "top_to_bottom") else 1 - t)
        across = np.full_like(t, rng.uniform(lo, hi))
        horizontal = label in ("left_to_right", "right_to_left")
        return (along, across, r) if horizontal else (across, along, r)
    small, big = size * 0.05, size * rng.uniform(0.22, 0.28)
    r = small + (big - small) * (t if label == "grows" else 1 - t)
    c = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    return np.full_like(t, c[0]), np.full_like(t, c[1]), r


def _draw(label: str, objects: list[tuple[str, str]], cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 frames (T, S, S, 3) of one event with the given (colour, shape) objects."""
    n, s = cfg.frames, cfg.size
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    video = np.repeat(_background(rng, s)[None], n, axis=0)  # (T, S, S, 3)
    if label in TASK_LABELS["order"]:
        half = n // 2  # first_then_second and second_then_first are exact time reversals for even n
        slots = (slice(0, half), slice(n - half, n))
        slots = slots if label == "first_then_second" else slots[::-1]
        for (color, shape), frames in zip(objects, slots):
            r = np.full(n, s * rng.uniform(0.14, 0.2), np.float32)
            c = rng.uniform(r[0] + 2, s - r[0] - 3, size=2)
            mask = _shape_masks(shape, np.full(n, c[0]), np.full(n, c[1]), r, s)
            shown = np.zeros(n, bool)
            shown[frames] = True
            video[mask & shown[:, None, None]] = COLORS[color]
    else:
        color, shape = objects[0]
        cx, cy, r = _motion(label, t, s, rng)
        video[_shape_masks(shape, cx, cy, r, s)] = COLORS[color]
    return video.clip(0, 255).astype(np.uint8)


def captions_for(label: str, objects: list[tuple[str, str]], name_objects: bool = True) -> list[str]:
    """Paraphrases describing the event; the first is the canonical caption written to ``KEY.txt``.
    ``name_objects=False`` (``motion`` clips): the captions say only which way something moves."""
    (c, s) = objects[0]
    if label in DIRECTIONS:
        a, b, phrase, _ = DIRECTIONS[label]
        if not name_objects:  # the direction in its own words ("to the right", "upwards"): not word order
            return [f"an object moves {phrase}", f"an object moving {phrase}", f"the object travels {phrase}",
                    f"something slides {phrase}"]
        return [f"a {c} {s} moves from {a} to {b}", f"a {c} {s} moving {phrase}",
                f"the {c} {s} travels from the {a} to the {b}", f"a {c} {s} slides {phrase}"]
    if label in ("grows", "shrinks"):
        grow = label == "grows"
        return [f"a {c} {s} grows bigger" if grow else f"a {c} {s} shrinks",
                f"a {c} {s} getting {'larger' if grow else 'smaller'}",
                f"the {c} {s} {'expands' if grow else 'contracts'}",
                f"a {'small' if grow else 'big'} {c} {s} becomes {'big' if grow else 'small'}"]
    (c1, s1), (c2, s2) = objects if label == "first_then_second" else objects[::-1]
    return [f"a {c1} {s1} appears, then a {c2} {s2} appears", f"first a {c1} {s1}, then a {c2} {s2}",
            f"a {c1} {s1} is followed by a {c2} {s2}", f"the {c1} {s1} comes before the {c2} {s2}"]


def _qa_for(label: str, objects: list[tuple[str, str]], rng: np.random.Generator,
            name_objects: bool = True, extra_rng: np.random.Generator | None = None) -> list[dict]:
    """The clip's questions (DESIGN §2 ``qa`` items), each with a ``type``:

    - open-ended, about time (``direction``: which way, ``size``: grow or shrink, ``order``: which shape
      first), as TGIF-QA's temporal questions;
    - open-ended, about appearance (``color``: "what colour is the square?"), as most MSRVTT-QA questions;
    - multiple choice ``transition``: "what happens in the video?" among the event's caption and captions
      of other events with the same objects (time reversals among them), as TGIF-Transition;
    - multiple choice ``caption`` (clips whose captions name their objects): the caption among captions
      of the same event with other objects, as MSRVTT-MC's captions of other videos.
    """
    (c, s) = objects[0]
    the = f"the {c} {s}" if name_objects else "the object"
    if label in DIRECTIONS:
        open_q = {"question": f"which way does {the} move?", "answer": DIRECTIONS[label][3], "type": "direction"}
        options = list(DIRECTIONS)
    elif label in ("grows", "shrinks"):
        open_q = {"question": f"does {the} grow or shrink?", "answer": "grow" if label == "grows" else "shrink",
                  "type": "size"}
        options = ["grows", "shrinks", "left_to_right", "top_to_bottom"]
    else:
        first = objects[0] if label == "first_then_second" else objects[1]
        open_q = {"question": "which shape appears first?", "answer": f"{first[0]} {first[1]}", "type": "order"}
        options = ["first_then_second", "second_then_first", "grows", "shrinks"]
    colour_q = {"question": f"what colour is the {s if name_objects else 'object'}?", "answer": c, "type": "color"}
    order = rng.permutation(len(options))
    choices = [captions_for(options[i], objects, name_objects)[0] for i in order]
    answer_idx = int(np.flatnonzero(np.asarray(options)[order] == label)[0])
    items = [open_q, colour_q, {"question": "what happens in the video?", "choices": choices, "answer_idx": answer_idx,
                                "type": "transition"}]
    if name_objects:
        rng = extra_rng or rng  # draws after the clip's own: a separate stream keeps the clips' pixels unchanged
        others: list[list[tuple[str, str]]] = []
        while len(others) < 3:  # the same event with other objects, all different
            pick = [(list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]) for _ in objects]
            if pick[0] not in [o[0] for o in others] + [objects[0]] and (len(pick) == 1 or pick[1] != pick[0]):
                others.append(pick)
        captions = [captions_for(label, objects)[0]] + [captions_for(label, o)[0] for o in others]
        order = rng.permutation(4)
        items.append({"question": "which caption describes the video?", "choices": [captions[i] for i in order],
                      "answer_idx": int(np.flatnonzero(order == 0)[0]), "type": "caption"})
    return items


def encode_mp4(frames: np.ndarray, fps: int, codec: str = "libx264") -> bytes:
    """uint8 frames (T, H, W, 3) -> mp4 bytes, encoded in memory with PyAV (yuv420p)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"} if codec == "libx264" else {"qscale": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def make_sample(split: str, index: int, cfg: SynthConfig) -> dict:
    """The webdataset sample ``{"__key__", "mp4", "txt", "json"}`` of clip ``index`` of ``split``."""
    from datapipes.shards import stream_seed

    rng = np.random.default_rng(stream_seed(cfg.seed, SPLIT_IDS.get(split, 3), index))
    labels = TASK_LABELS[cfg.task]
    label = labels[index % len(labels)]
    colors, shapes = list(COLORS), list(SHAPES)
    first = (colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])
    if cfg.holdout and split != "train":  # each held-out (object, event) in turn: distinct clips, twins included
        unseen = [(c, sh) for c in colors for sh in shapes if held_out((c, sh), label)]
        first = unseen[(index // len(labels)) % len(unseen)]
    while cfg.holdout and split == "train" and held_out(first, label):  # training: seen compositions only
        first = (colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])
    second = first
    while second[0] == first[0] or second[1] == first[1]:
        second = (colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])
    if cfg.holdout and split != "train":  # the pair fixed by the first object, drawn from a stream of its own
        second = order_partner(first, cfg.seed, split)  # (the draws above stay, so other clips are unchanged)
    objects = [first, second] if label in TASK_LABELS["order"] else [first]
    named = cfg.task != "motion"
    captions = captions_for(label, objects, named)
    meta = {
        "key": f"{split}{index:07d}", "status": "success", "caption": captions[0], "captions": captions,
        "qa": _qa_for(label, objects, rng, named, np.random.default_rng([cfg.seed, SPLIT_IDS.get(split, 3), index, 1])),
        "task": "order" if label in TASK_LABELS["order"] else
        ("size" if label in ("grows", "shrinks") else "move"), "label": label,
        "objects": [list(o) for o in objects], "held_out": held_out(first, label), "width": cfg.size,
        "height": cfg.size, "fps": cfg.fps,
        "num_frames": cfg.frames, "duration": cfg.frames / cfg.fps,
    }
    mp4 = encode_mp4(_draw(label, objects, cfg, rng), cfg.fps, cfg.codec)
    return {"__key__": meta["key"], "mp4": mp4, "txt": captions[0].encode(), "json": json.dumps(meta).encode()}


def _make_sample_job(job: tuple[str, int, SynthConfig]) -> dict:
    return make_sample(*job)


def _pick_codec(codec: str) -> str:
    import av

    return codec if codec in av.codecs_available else "mpeg4"


def write_split(out: str, split: str, count: int, cfg: SynthConfig, *, maxcount: int = 1000, workers: int = 1,
                progress: bool = True) -> dict:
    """Write ``count`` clips of ``split`` as ``out/{split}-000000.tar ...``; returns the split's summary."""
    import webdataset as wds
    from tqdm import tqdm

    os.makedirs(out, exist_ok=True)
    jobs = [(split, i, cfg) for i in range(count)]
    pool = get_context("fork" if os.name == "posix" else "spawn").Pool(workers) if workers > 1 else None
    samples = pool.imap(_make_sample_job, jobs, chunksize=16) if pool else map(_make_sample_job, jobs)
    with wds.ShardWriter(os.path.join(out, f"{split}-%06d.tar"), maxcount=maxcount, verbose=0) as writer:
        for sample in tqdm(samples, total=count, desc=f"synth {split}", unit="clip", disable=not progress):
            writer.write(sample)
        num_shards = writer.shard if count else 0
    if pool:
        pool.close()
        pool.join()
    name = f"{split}-{{000000..{max(0, num_shards - 1):06d}}}.tar"
    return {"pattern": name, "path": os.path.join(os.path.abspath(out), name), "num_samples": count,
            "num_shards": num_shards}


def existing_synth(out: str, counts: dict[str, int], cfg: SynthConfig) -> bool:
    """True when ``out/splits.json`` records the same clip counts and settings, and its shards exist."""
    path = os.path.join(out, "splits.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        info = json.load(f)
    wanted = {**cfg.__dict__, "codec": _pick_codec(cfg.codec)}
    splits = info.get("splits", {})
    same_counts = {k: v["num_samples"] for k, v in splits.items()} == {k: n for k, n in counts.items() if n > 0}
    shards_exist = all(os.path.exists(os.path.join(out, f"{k}-{i:06d}.tar"))
                       for k, v in splits.items() for i in range(v["num_shards"]))
    return info.get("config") == wanted and same_counts and shards_exist


def write_synth(out: str, counts: dict[str, int], cfg: SynthConfig, *, maxcount: int = 1000, workers: int = 1,
                progress: bool = True) -> dict:
    """Write every split of ``counts`` (e.g. ``{"train": 2000, "val": 200, "test": 200}``) and ``splits.json``."""
    cfg = SynthConfig(**{**cfg.__dict__, "codec": _pick_codec(cfg.codec)})
    if cfg.size % 2 or cfg.size < 16:
        raise ValueError(f"synthetic frames need an even size of at least 16 pixels, got {cfg.size}")
    if os.path.islink(out) and not os.path.exists(out):
        raise FileNotFoundError(f"{out} is a link to {os.readlink(out)}, which does not exist: remove the link "
                                f"or create its target")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} exists and is not a folder")
    summary: dict[str, dict] = {}
    for split, count in counts.items():
        if count > 0:
            summary[split] = write_split(out, split, count, cfg, maxcount=maxcount, workers=workers, progress=progress)
    info = {"splits": summary, "config": cfg.__dict__}
    with open(os.path.join(out, "splits.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info

