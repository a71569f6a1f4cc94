"""``vl data vq-targets``: precompute MVM ``vq`` targets (visual-tokenizer codes) into shards.

    vl data vq-targets 'data/synth/train-{000000..000001}.tar' --tokenizer runs/vq_tokenizer/.../last.ckpt \
        --out data/synth_vq --frames 4 --size 32 --grid 4

Every clip is decoded as evaluation does (uniform frames, centre crop, ``--size`` px), its frames resized
to ``grid * f`` px and encoded; each output sample is ``KEY.vq.npy`` (T, grid, grid) int32 codes plus
``KEY.json`` with the settings. ``MVMConfig.vq.precomputed`` points MVM at these shards: it looks the
codes up by sample key instead of running the tokenizer. They match the training clip only when training
decodes clips the same way (``train_sampling: uniform``, ``crop_scale: [1.0, 1.0]``, square videos);
clips whose key is missing are tokenized on the fly. ``load_vq_targets`` reads these shards back (MVM calls it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:  # torch and the pipeline load when a command runs, not for `vl data vq-targets --help`
    import torch
    from torch import Tensor


def load_tokenizer(kind: str, path: str, norm: str) -> torch.nn.Module:
    """The frozen tokenizer: a ``vl fit -c configs/vq_tokenizer/...`` checkpoint or DALL-E's encoder."""
    if kind == "dalle":
        from vl.models.dalle import DalleTokenizer

        return DalleTokenizer(path, norm=norm)
    from vl.models.vq_tokenizer import load_vq_tokenizer_checkpoint

    return load_vq_tokenizer_checkpoint(path)


def encode_video_clips(tokenizer: torch.nn.Module, video: Tensor, grid: int, norm: str) -> Tensor:
    """video (B, T, C, H, W) -> codes (B, T, grid, grid), frames resized to ``grid * f`` px."""
    import torch

    from vl.objectives.mvm_targets import VQTarget

    target = VQTarget(tokenizer, (video.shape[1], grid, grid), (1, 1, 1), input_norm=norm)
    with torch.no_grad():
        return target(video).view(video.shape[0], video.shape[1], grid, grid)  # (B, N, 1) -> (B, T, g, g)


def precompute_vq_targets(shards: list[str], tokenizer_path: str, out: str, *, kind: str = "vl", frames: int = 4,
                          size: int = 224, grid: int = 14, norm: str = "imagenet", batch_size: int = 16,
                          maxcount: int = 1000, progress: bool = True) -> dict:
    """Write the codes of every clip of ``shards`` to ``out/vq-%06d.tar``; returns a summary."""
    import torch
    import webdataset as wds
    from tqdm import tqdm

    from datapipes.pipeline import ClipConfig, build_eval_loader
    from vl.models.hub import load_tokenizer as load_text_tokenizer

    tokenizer = load_tokenizer(kind, tokenizer_path, norm)
    cfg = ClipConfig(num_frames=frames, size=size, sampling="uniform", norm=norm)
    loader = build_eval_loader(shards, load_text_tokenizer("minilm"), cfg, batch_size=batch_size, rank=0, world_size=1)
    os.makedirs(out, exist_ok=True)
    settings = {"tokenizer": os.path.abspath(tokenizer_path), "kind": kind, "frames": frames, "size": size,
                "grid": grid, "norm": norm, "sampling": "uniform", "crop": "center"}
    written = 0
    with wds.ShardWriter(os.path.join(out, "vq-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for batch in tqdm(loader, desc="vq targets", unit="batch", disable=not progress):
            codes = encode_video_clips(tokenizer, batch.video, grid, norm).to(torch.int32).numpy()
            for key, clip_codes in zip(batch.keys, codes):
                buf = io.BytesIO()
                np.save(buf, clip_codes)
                sink.write({"__key__": key, "vq.npy": buf.getvalue(), "json": json.dumps(settings).encode()})
                written += 1
    summary = {"written": written, "out": out, **settings}
    with open(os.path.join(out, "vq-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_vq_targets(spec: str) -> dict[str, Tensor]:
    """Shards written by ``precompute_vq_targets`` -> {sample key: codes (T, grid, grid) long}."""
    import torch
    import webdataset as wds

    from datapipes.shards import expand_shards

    urls = expand_shards(spec)
    if not urls:
        raise ValueError(f"vq targets: no shards match {spec!r}")
    table: dict[str, Tensor] = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        table[sample["__key__"]] = torch.from_numpy(np.load(io.BytesIO(sample["vq.npy"]))).long()
    return table


def main(argv: Optional[list[str]] = None) -> int:
    """``vl data vq-targets`` entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="vl data vq-targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", help="video shards: paths, brace patterns or globs")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (.ckpt) or DALL-E encoder.pkl")
    p.add_argument("--kind", choices=["vl", "dalle"], default="vl")
    p.add_argument("--out", required=True, help="output folder for vq-%%06d.tar")
    p.add_argument("--frames", type=int, default=4, help="frames per clip, as the model reads them")
    p.add_argument("--size", type=int, default=224, help="frame size, as the model reads them")
    p.add_argument("--grid", type=int, required=True, help="codes per side: the video encoder's H' (e.g. 14)")
    p.add_argument("--norm", choices=["imagenet", "clip"], default="imagenet")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--maxcount", type=int, default=1000, help="samples per output shard")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    summary = precompute_vq_targets(args.shards, args.tokenizer, args.out, kind=args.kind, frames=args.frames,
                                    size=args.size, grid=args.grid, norm=args.norm, batch_size=args.batch_size,
                                    maxcount=args.maxcount, progress=not args.quiet)
    print(f"wrote vq targets of {summary['written']} clips to {args.out}/vq-*.tar")
    return 0 if summary["written"] else 1
