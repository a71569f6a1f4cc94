"""``vl data inspect``: what a set of shards holds, and what is wrong with it.

Counts samples, reads duration, resolution and frame rate from each sample's metadata (or from the
video header when the metadata lacks them), shows a few captions, and counts failures by the same
reasons the training pipeline uses. With ``decode=True`` every video is also decoded (a few frames),
which finds corrupt files that a header read misses.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from typing import Optional

import numpy as np

from datapipes.decode import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    SkipSample,
    SkipTally,
    decode_clip,
    probe_video,
    quiet_decoders,
)
from datapipes.meta import check_status, parse_meta
from datapipes.sampling import uniform_indices
from datapipes.shards import ShardSpec, SplitShards, expand_shards, shard_samples
from datapipes.text import caption_list, decode_text


def _media(sample: dict) -> tuple[Optional[str], Optional[bytes]]:
    """(extension, bytes) of the sample's video or image; (None, None) when it has neither."""
    for ext in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    return None, None


def _video_facts(meta: dict, ext: str, data: bytes, decode: bool) -> dict:
    """Width, height, fps, duration of one video (metadata first, else header); raises ``SkipSample``."""
    if not data:
        raise SkipSample("empty_file")
    if ext in IMAGE_EXTENSIONS:
        facts = {"width": meta.get("width"), "height": meta.get("height"), "duration": None, "fps": None}
    elif all(isinstance(meta.get(k), (int, float)) for k in ("width", "height", "duration")):
        facts = {k: meta.get(k) for k in ("width", "height", "duration", "fps")}
    else:
        facts = probe_video(data)
    if decode:  # read a few frames: finds corrupt streams behind a valid header
        decode_clip(data, lambda n, fps: uniform_indices(0, n, 4), short_side=64)
    return facts


def _inspect_sample(sample: dict, decode: bool) -> tuple[dict, list[str]]:
    """Facts and captions of one raw sample; raises ``SkipSample`` for unusable ones."""
    meta = parse_meta(sample)
    check_status(meta)  # detail: video2dataset's status and error_message
    ext, data = _media(sample)
    if ext is None:
        raise SkipSample("no_video")
    captions = caption_list(meta, decode_text(sample.get("txt")))
    if not captions and not meta.get("qa"):
        raise SkipSample("no_caption")
    facts = _video_facts(meta, ext, data, decode)
    facts["ext"] = ext
    return facts, captions


def inspect_shards(spec: ShardSpec, *, limit: Optional[int] = None, decode: bool = False,
                   examples: int = 5) -> dict:
    """A report on the shards of ``spec``: counts, duration/resolution/fps statistics, captions, failures.

    ``limit`` stops after that many samples. Returns a JSON-serialisable dict (see ``format_report``).
    """
    quiet_decoders()
    urls = expand_shards(spec)
    tally = SkipTally()
    failures: dict[str, list[str]] = {}
    durations, resolutions, fps, exts, caption_counts = [], Counter(), Counter(), Counter(), []
    seen, shown = 0, []
    for sample in shard_samples(SplitShards(urls), tally):
        if limit is not None and seen >= limit:
            break
        seen += 1
        try:
            facts, captions = _inspect_sample(sample, decode)
        except SkipSample as e:
            tally.skip(e.reason)
            example = f"{sample['__key__']}: {e.detail}" if e.detail else sample["__key__"]
            failures.setdefault(e.reason, []).append(example[:300])
            continue
        exts[facts["ext"]] += 1
        caption_counts.append(len(captions))
        if facts.get("duration") is not None:
            durations.append(float(facts["duration"]))
        if facts.get("width") and facts.get("height"):
            resolutions[f"{facts['width']}x{facts['height']}"] += 1
        if facts.get("fps"):
            fps[f"{float(facts['fps']):.3g}"] += 1
        if captions and len(shown) < examples:
            shown.append(f"{sample['__key__']}: {captions[0]}")
    totals = tally.totals()
    return {
        "shards": len(urls), "samples": seen, "usable": seen - sum(len(v) for v in failures.values()),
        "extensions": dict(exts), "duration": _stats(durations), "resolutions": dict(resolutions.most_common(10)),
        "fps": dict(fps.most_common(5)), "captions_per_sample": _stats(caption_counts), "examples": shown,
        "failures": totals, "failure_examples": {r: v[:5] for r, v in failures.items()},
        "video2dataset": video2dataset_stats(urls),
    }


V2D_COUNTS = ("count", "successes", "failed_to_download", "failed_to_subsample")  # video2dataset's logger.py


def video2dataset_stats(urls: list[str]) -> dict:
    """The ``SHARD_stats.json`` files video2dataset writes beside local shards, summed: its counts of input
    rows (``count``, ``successes``, ``failed_to_*``) and ``status_dict`` (statuses and error messages);
    ``{}`` when no shard has one. Rows it counted but wrote into no shard show up as ``count`` > samples."""
    total: dict = {}
    for url in urls:
        path = os.path.splitext(url)[0] + "_stats.json"
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                stats = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            total.setdefault("unreadable", []).append(f"{path}: {e}")
            continue
        total["files"] = total.get("files", 0) + 1
        for k in V2D_COUNTS:
            total[k] = total.get(k, 0) + int(stats.get(k) or 0)
        for status, n in (stats.get("status_dict") or {}).items():
            total.setdefault("status_dict", {})[status] = total.get("status_dict", {}).get(status, 0) + int(n)
    return total


def _stats(values: list) -> dict:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "mean": float(arr.mean()), "median": float(statistics.median(values)),
            "max": float(arr.max()), "total": float(arr.sum())}


def format_report(report: dict) -> str:
    """The report as aligned text for a terminal."""
    d, c = report["duration"], report["captions_per_sample"]
    lines = [
        f"shards              {report['shards']}",
        f"samples             {report['samples']} ({report['usable']} usable)",
        f"files               {', '.join(f'{k}: {v}' for k, v in report['extensions'].items()) or '-'}",
    ]
    if d:
        lines.append(f"duration (s)        min {d['min']:.2f}  mean {d['mean']:.2f}  median {d['median']:.2f}  "
                     f"max {d['max']:.2f}  total {d['total'] / 3600:.2f} h")
    res = ", ".join(f"{k} ({v})" for k, v in report["resolutions"].items())
    lines.append(f"resolutions         {res or '-'}")
    lines.append(f"fps                 {', '.join(f'{k} ({v})' for k, v in report['fps'].items()) or '-'}")
    if c:
        lines.append(f"captions/sample     min {c['min']:.0f}  mean {c['mean']:.2f}  max {c['max']:.0f}")
    lines.append("example captions")
    lines += [f"  {e}" for e in report["examples"]] or ["  -"]
    lines.append("failures" + ("" if report["failures"] else "            none"))
    width = max((len(r) for r in report["failures"]), default=0) + 2  # the longest reason, then two spaces
    for reason, n in sorted(report["failures"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason:<{width}}{n}")
        lines += [f"      e.g. {ex}" for ex in report["failure_examples"].get(reason, [])[:3]]
    return "\n".join(lines + _format_v2d(report.get("video2dataset") or {}))


def _format_v2d(stats: dict) -> list[str]:
    """Lines for video2dataset's own stats files (none when the shards have none)."""
    if not stats:
        return []
    lines = [f"video2dataset stats ({stats.get('files', 0)} _stats.json files)"]
    lines.append("  " + "  ".join(f"{k} {stats.get(k, 0)}" for k in V2D_COUNTS))
    for status, n in sorted((stats.get("status_dict") or {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:>6}  {status}")
    lines += [f"  unreadable: {u}" for u in stats.get("unreadable", [])]
    return lines
