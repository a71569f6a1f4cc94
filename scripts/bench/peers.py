"""Train-step throughput of vl's video encoders against peer implementations at the same dimensions.

Pairs (ours vs peer, identical width/depth/heads/patch/tubelet/frames/resolution):
- ``vit_st`` temporal=joint   vs Hugging Face transformers' ``VideoMAEModel`` (joint space-time ViT)
- ``vit_st`` temporal=divided vs Hugging Face transformers' ``TimesformerModel`` (divided attention)
- ``clip_st`` frame tower     vs open_clip's ``VisionTransformer`` run on every frame

A step is forward, mean of the output tokens as the loss, backward and an AdamW step. Memory: on CPU
the MiB autograd saves for backward in one forward (activations; weights left out), on CUDA the peak
allocated memory of a step; ``memory_ratio_ours_over_peer`` below 1.0: ours uses less. Ours and the peer
alternate, several rounds, and each side's median step time counts; the result is the ratio
ours/peer of samples per second (above 1.0: ours is faster). Peers are built from configs with random
weights: nothing is downloaded.

    python scripts/bench/peers.py                      # CPU: tiny, small and base dims (8 x 112 px, batch 2)
    python scripts/bench/peers.py --sizes base --frames 8 --image 224 --batch 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model.py's helpers, run from a checkout

RESULTS = Path("bench_results")


@dataclass(frozen=True)
class Dims:
    """Transformer dimensions shared by ours and the peer."""

    name: str
    width: int
    depth: int
    heads: int
    patch: int


SIZES = {
    "tiny": Dims("tiny", 192, 4, 3, 16),
    "small": Dims("small", 384, 6, 6, 16),
    "base": Dims("base", 768, 12, 12, 16),
}


def ours_vit_st(d: Dims, temporal: str, frames: int, image: int) -> nn.Module:
    from vl.models import create_video_encoder

    return create_video_encoder("vit_st_base", embed_dim=d.width, depth=d.depth, num_heads=d.heads, patch_size=d.patch,
                                tubelet_size=2 if temporal == "joint" else 1, temporal=temporal,
                                num_frames=frames, img_size=image)


def peer_videomae(d: Dims, frames: int, image: int) -> nn.Module:
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(image_size=image, patch_size=d.patch, num_frames=frames, tubelet_size=2,
                         hidden_size=d.width, num_hidden_layers=d.depth, num_attention_heads=d.heads,
                         intermediate_size=4 * d.width, use_mean_pooling=True, attn_implementation="sdpa")
    return VideoMAEModel(cfg)


def peer_timesformer(d: Dims, frames: int, image: int) -> nn.Module:
    from transformers import TimesformerConfig, TimesformerModel

    cfg = TimesformerConfig(image_size=image, patch_size=d.patch, num_frames=frames, hidden_size=d.width,
                            num_hidden_layers=d.depth, num_attention_heads=d.heads, intermediate_size=4 * d.width,
                            attention_type="divided_space_time")
    return TimesformerModel(cfg)


def ours_clip_st(d: Dims, frames: int, image: int) -> nn.Module:
    from vl.models import create_video_encoder

    return create_video_encoder("clip_st_base", width=d.width, layers=d.depth, heads=d.heads, patch_size=d.patch,
                                num_frames=frames, img_size=image)


def peer_open_clip(d: Dims, frames: int, image: int) -> nn.Module:
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=image, patch_size=d.patch, width=d.width, layers=d.depth, heads=d.heads,
                             mlp_ratio=4.0, output_dim=512)


def forward_fn(kind: str) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """How each implementation is called on a (B, T, C, H, W) clip; returns a scalar loss."""
    if kind == "ours":
        return lambda m, v: m.forward_features(v).float().mean()
    if kind == "hf":
        return lambda m, v: m(pixel_values=v).last_hidden_state.float().mean()
    if kind == "open_clip":  # per frame: (B*T, C, H, W)
        return lambda m, v: m(v.flatten(0, 1)).float().mean()
    raise ValueError(kind)


def time_steps(model: nn.Module, fwd: Callable, video: torch.Tensor, steps: int) -> list[float]:
    """Seconds per training step (forward, backward, AdamW), `steps` times after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        if video.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = fwd(model, video)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if video.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def activation_mib(model: nn.Module, fwd: Callable, video: torch.Tensor) -> float:
    """MiB autograd saves for backward in one forward (each storage once, parameters left out)."""
    from model import saved_activation_bytes  # scripts/bench/model.py

    with saved_activation_bytes(list(model.parameters())) as saved:
        loss = fwd(model, video)
    del loss
    return sum(saved.values()) / 2 ** 20


def peak_cuda_mib(model: nn.Module, fwd: Callable, video: torch.Tensor) -> float:
    """Peak CUDA memory (MiB) of one training step, weights and optimiser included."""
    torch.cuda.reset_peak_memory_stats()
    time_steps(model, fwd, video, 1)
    return torch.cuda.max_memory_allocated() / 2 ** 20


def compare(pair: str, d: Dims, args: argparse.Namespace) -> dict:
    """Alternate ours and the peer for `args.rounds` rounds; median samples/s of each and their ratio."""
    builders = {
        "vit_st joint vs HF VideoMAE": (lambda: ours_vit_st(d, "joint", args.frames, args.image), "ours",
                                        lambda: peer_videomae(d, args.frames, args.image), "hf"),
        "vit_st divided vs HF TimeSformer": (lambda: ours_vit_st(d, "divided", args.frames, args.image), "ours",
                                             lambda: peer_timesformer(d, args.frames, args.image), "hf"),
        "clip_st vs open_clip ViT per frame": (lambda: ours_clip_st(d, args.frames, args.image), "ours",
                                               lambda: peer_open_clip(d, args.frames, args.image), "open_clip"),
    }
    make_ours, kind_ours, make_peer, kind_peer = builders[pair]
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours, peer = make_ours().to(device).train(), make_peer().to(device).train()
    video = torch.randn(args.batch, args.frames, 3, args.image, args.image, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
    t_ours, t_peer = [], []
    with ctx:
        for _ in range(args.rounds):
            t_ours += time_steps(ours, forward_fn(kind_ours), video, args.steps)
            t_peer += time_steps(peer, forward_fn(kind_peer), video, args.steps)
        mem = peak_cuda_mib if device.type == "cuda" else activation_mib
        mem_ours, mem_peer = mem(ours, forward_fn(kind_ours), video), mem(peer, forward_fn(kind_peer), video)
    sps_ours = args.batch / statistics.median(t_ours)
    sps_peer = args.batch / statistics.median(t_peer)
    memory = "peak_cuda_MiB" if device.type == "cuda" else "activations_MiB"
    return {
        "pair": pair, "size": d.name, "params_ours_M": sum(p.numel() for p in ours.parameters()) / 1e6,
        "params_peer_M": sum(p.numel() for p in peer.parameters()) / 1e6, "samples_per_s_ours": sps_ours,
        "samples_per_s_peer": sps_peer, "ratio_ours_over_peer": sps_ours / sps_peer,
        f"{memory}_ours": mem_ours, f"{memory}_peer": mem_peer, "memory_ratio_ours_over_peer": mem_ours / mem_peer,
    }


PAIRS = ("vit_st joint vs HF VideoMAE", "vit_st divided vs HF TimeSformer", "clip_st vs open_clip ViT per frame")


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, compare every pair at every size, print the table; returns the results (JSON-ready)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=sorted(SIZES))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--image", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and the peer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "model_peers.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [compare(pair, SIZES[s], args) for s in args.sizes for pair in PAIRS]
    print(f"{'pair':38s} {'size':6s} {'params ours/peer (M)':>22s} {'ours/s':>8s} {'peer/s':>8s} {'ratio':>6s}"
          f" {'mem ratio':>9s}")
    for r in rows:
        print(f"{r['pair']:38s} {r['size']:6s} {r['params_ours_M']:10.1f} /{r['params_peer_M']:9.1f} "
              f"{r['samples_per_s_ours']:8.2f} {r['samples_per_s_peer']:8.2f} {r['ratio_ours_over_peer']:6.2f}"
              f" {r['memory_ratio_ours_over_peer']:9.2f}")
    return {"section": "peers", "args": vars(args), "rows": rows, "torch": torch.__version__,
            "dims": {k: asdict(v) for k, v in SIZES.items()}}


def main(argv: list[str] | None = None) -> int:
    result = run(argv)
    out = Path(result["args"]["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
