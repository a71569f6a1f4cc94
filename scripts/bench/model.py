"""Model benchmarks, one function per section (``--section``); each prints a table and writes JSON.

Sections:
- ``mask_ratio``: sparse encoding under MVM. One MVM training step (masked clip -> ``vit_st`` joint
  encoder on the visible tokens only -> VideoMAE-style decoder -> pixel loss -> backward -> AdamW) with
  tube masking at ratios 0, 0.5, 0.75 and 0.9; time per step (CPU: process CPU time, steady on a shared
  machine; CUDA: synchronised wall clock) and activation memory (the storages
  autograd saves for backward, parameters left out; on CUDA also peak allocated memory), as ratios
  against ratio 0 in the same process. Ratio 0 runs the dense encoder alone (no masked token, so no decoder): a
  conservative baseline. Writes ``bench_results/model_mask.json``.

- ``peers``: ``scripts/bench/peers.py`` (vit_st vs Hugging Face VideoMAE and TimeSformer, clip_st vs
  open_clip's ViT per frame, equal dimensions; ratio ours/peer of train-step samples/s). Writes
  ``bench_results/model_peers.json``.
- ``memory``: training memory of the base models (``violet_base``, ``allinone_base``, ``clip_base``) at
  ``--memory-frames`` (8) frames of 224 px, ``--memory-batch`` (32) clips per GPU, 32 text tokens, bf16
  autocast, activation checkpointing, VTC + VTM + MLM, AdamW. COMPUTED, not measured on a GPU: one
  training forward runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes only,
  no arithmetic, so it takes seconds on a CPU) and the bytes autograd saves for backward are summed,
  with and without checkpointing; to them are added fp32 weights, fp32 gradients and AdamW's two fp32
  moments (16 bytes per parameter) and, for the backward pass, one block's activations rebuilt by the
  recomputation (saved bytes without checkpointing / number of blocks).
  Not counted: the CUDA context and allocator fragmentation (typically a few GB). Writes
  ``bench_results/model_memory.json``.

    python scripts/bench/model.py --section mask_ratio
    python scripts/bench/model.py --section mask_ratio --encoder vit_st_base --frames 16 --size 224 --batch 8  # GPU
    python scripts/bench/model.py --section memory
    python scripts/bench/model.py --section peers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from vl.models import create_model  # noqa: E402
from vl.objectives.masking import MaskSpec  # noqa: E402
from vl.objectives.mvm import MVMLoss  # noqa: E402
from vl.objectives.mvm_targets import PixelTarget  # noqa: E402

RESULTS = Path("bench_results")


@contextmanager
def saved_activation_bytes(params: list[torch.Tensor]) -> Iterator[dict[int, int]]:
    """Bytes of the storages autograd saves for backward inside the block, each storage once, parameters
    (weights saved by reference) left out: ``{storage pointer: bytes}``."""
    skip = {p.untyped_storage()._cdata for p in params}  # the storage object, also for fake tensors
    storages: dict[int, int] = {}
    # Each counted storage is held until the block ends: a storage freed inside it (its graph dropped with
    # an unused loss) could otherwise hand its address to a later one, which would then not be counted,
    # and how often that happens depends on the allocator's state, i.e. on what ran before in the process.
    held: list = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in skip and storage._cdata not in storages:
            storages[storage._cdata] = storage.nbytes()
            held.append(storage)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield storages


def mvm_step_fn(args: argparse.Namespace, ratio: float, device: torch.device) -> tuple[Callable[[], int], list]:
    """A closure running one MVM training step at ``ratio`` (returns saved-activation bytes) and its modules."""
    torch.manual_seed(0)
    video_opts = dict(name=args.encoder, temporal="joint", num_frames=args.frames, img_size=args.size)
    model = create_model("vl_tiny", video=video_opts).to(device)
    enc = model.video_encoder
    mvm = MVMLoss(PixelTarget(enc.grid, enc.token_size), [MaskSpec("tube", ratio)], enc.grid, enc.embed_dim,
                  decoder_depth=args.decoder_depth, decoder_dim=args.decoder_dim, decoder_heads=args.decoder_dim // 64)
    mvm.to(device)
    params = list(enc.parameters()) + list(mvm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    dummy_text = torch.zeros(args.batch, 1, 8, device=device)
    dummy_embed = torch.zeros(args.batch, 8, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> int:
        with saved_activation_bytes(params) as saved, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = mvm(model, video, video, dummy_text, torch.ones(args.batch, 1, device=device), dummy_embed, gen)
        out["mvm_loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sum(saved.values())

    return step, [model, mvm, opt]


def time_steps(step: Callable[[], int], warmup: int, repeats: int, device: torch.device) -> tuple[list[float], int]:
    """Seconds per step over ``repeats`` steps after ``warmup`` ones, and the last step's activation bytes.

    On CUDA: wall-clock time, synchronised. On CPU: this process's CPU time, which other processes on a
    shared machine do not inflate (with one thread it is the compute the step did)."""
    for _ in range(warmup):
        step()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times, act = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        act = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return times, act


def bench_mask_ratio(args: argparse.Namespace) -> dict:
    """Train-step time and memory of MVM with tube masking at each ratio, against ratio 0."""
    device = torch.device(args.device)
    rows = []
    for ratio in args.ratios:
        step, keep = mvm_step_fn(args, ratio, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, act = time_steps(step, args.warmup, args.repeats, device)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        row = {"mask_ratio": ratio, "step_s": statistics.median(times), "step_s_all": times, "activation_bytes": act}
        if peak is not None:
            row["peak_allocated_bytes"] = peak
        rows.append(row)
        del step, keep
    base = rows[0]
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"]
        r["activation_ratio"] = r["activation_bytes"] / base["activation_bytes"]
    enc = create_model("vl_tiny", video=dict(name=args.encoder, temporal="joint", num_frames=args.frames,
                                             img_size=args.size)).video_encoder
    setup = {"encoder": args.encoder, "temporal": "joint", "frames": args.frames, "size": args.size,
             "grid": list(enc.grid), "tokens": enc.num_grid_tokens, "batch": args.batch, "masking": "tube",
             "target": "pixel", "decoder_depth": args.decoder_depth, "decoder_dim": args.decoder_dim,
             "device": str(device), "clock": "wall" if device.type == "cuda" else "process CPU time",
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "machine": platform.machine(), "cpus": os.cpu_count()}
    print_table(rows, setup)
    return {"section": "mask_ratio", "setup": setup, "rows": rows}


def pretrain_forward_saved_bytes(model: str, frames: int, batch: int, checkpointing: bool, fake: bool = True,
                                 **overrides) -> tuple[int, int, int]:
    """(saved bytes, parameters, blocks) of the forward passes of one VTC + VTM + MLM training step of
    ``model`` (as ``PretrainModule.compute_losses`` runs them) under bf16 autocast. The inputs are fake
    tensors (``FakeTensorMode``): every op runs for its output shapes and dtypes only, so the bytes
    autograd would save are exact without computing anything. ``fake=False`` runs the same passes on real
    tensors (to check the fake count); ``overrides`` go to ``PretrainModule`` (e.g. ``video``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vl.lit.pretrain import Objectives, PretrainModule

    torch.manual_seed(0)
    overrides.setdefault("video", {"num_frames": frames})
    module = PretrainModule(model=model, tokenizer="minilm", **overrides,
                            objectives=Objectives(vtc=1.0, vtm=1.0, mlm=1.0), grad_checkpointing=checkpointing)
    module.train()
    size = module.model.video_encoder.img_size
    params = list(module.parameters())
    blocks = sum(len(m) for m in module.modules() if isinstance(m, torch.nn.ModuleList))
    ids = torch.randint(1000, 20000, (batch, 32))
    model = module.model
    # Index choices the losses make from data (VTM's sampled negatives, MLM's masked positions) are drawn
    # here as real tensors: fake tensors have no values to draw them from.
    neg_text, neg_video = torch.randint(0, batch, (batch,)), torch.randint(0, batch, (batch,))
    rows, cols = (torch.rand(batch, 32) < 0.15).nonzero(as_tuple=True)  # MLM's masked (sample, position)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext() as mode:
        video, mask = torch.randn(batch, frames, 3, size, size), torch.ones_like(ids)
        if fake:
            video, ids, mask = mode.from_tensor(video), mode.from_tensor(ids), mode.from_tensor(mask)
        text_ids, text_mask = ids, mask
        with torch.autocast("cpu", dtype=torch.bfloat16), saved_activation_bytes(params) as saved:
            v, t = model.encode_video(video), model.encode_text(text_ids, text_mask)
            module.vtc(model.embed_video(v["pooled"]), model.embed_text(t["pooled"]), model.logit_scale)
            videos = torch.cat([v["tokens"], v["tokens"], v["tokens"][neg_video]])  # VTM: B positive, 2B negative
            texts = torch.cat([t["tokens"], t["tokens"][neg_text], t["tokens"]])
            model.vtm_head(model.fuse(videos, texts, text_mask.repeat(3, 1))["cls"])
            masked_text = model.encode_text(text_ids, text_mask)  # MLM: the text re-encoded with masks
            fused = model.fuse(v["tokens"], masked_text["tokens"], text_mask)["text_tokens"]
            model.mlm_head(fused[rows, cols])
    return sum(saved.values()), sum(p.numel() for p in params), blocks


def bench_memory(args: argparse.Namespace) -> dict:
    """Computed peak training memory per GPU of the base models (see the module docstring)."""
    rows = []
    gib = 1024 ** 3
    for model in args.memory_models:
        ckpt, n_params, blocks = pretrain_forward_saved_bytes(model, args.memory_frames, args.memory_batch, True)
        full, _, _ = pretrain_forward_saved_bytes(model, args.memory_frames, args.memory_batch, False)
        states = 16 * n_params  # fp32 weights + grads + AdamW exp_avg, exp_avg_sq
        recompute = full / max(blocks, 1)  # about one block's activations, rebuilt during backward
        total = states + ckpt + recompute
        rows.append({"model": model, "params_M": round(n_params / 1e6, 1), "blocks": blocks,
                     "weights_grads_adam_GiB": round(states / gib, 2),
                     "activations_checkpointed_GiB": round(ckpt / gib, 2),
                     "activations_no_checkpointing_GiB": round(full / gib, 2),
                     "recompute_one_block_GiB": round(recompute / gib, 2),
                     "total_GiB": round(total / gib, 2), "fits_80GB": total < 80e9})
        print(f"{model}: {rows[-1]}", flush=True)
    setup = {"frames": args.memory_frames, "size": 224, "batch": args.memory_batch, "text_tokens": 32,
             "precision": "bf16 autocast", "checkpointing": True, "objectives": "VTC + VTM + MLM",
             "optimizer": "AdamW (fp32 states)", "method": "computed: saved-tensor bytes of a fake-tensor forward",
             "torch": torch.__version__}
    print(f"{'model':<15}{'params':>9}{'states GiB':>12}{'act ckpt GiB':>14}{'act full GiB':>14}{'total GiB':>11}")
    for r in rows:
        print(f"{r['model']:<15}{r['params_M']:>8}M{r['weights_grads_adam_GiB']:>12}"
              f"{r['activations_checkpointed_GiB']:>14}{r['activations_no_checkpointing_GiB']:>14}{r['total_GiB']:>11}")
    return {"section": "memory", "setup": setup, "rows": rows}


def bench_peers(args: argparse.Namespace) -> dict:
    """Train-step samples/s of vl's encoders against HF VideoMAE / TimeSformer and open_clip's ViT at equal
    dimensions (``scripts/bench/peers.py`` with its defaults; run that script for other sizes or a GPU)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers

    return peers.run(["--threads", str(args.threads or 0)])


def print_table(rows: list[dict], setup: dict) -> None:
    print(f"\nMVM train step, {setup['encoder']} joint, {setup['frames']}x{setup['size']}px "
          f"({setup['tokens']} tokens), batch {setup['batch']}, tube masking, {setup['device']}")
    print(f"{'mask ratio':>10} {'step (s)':>10} {'speedup':>8} {'activations (MiB)':>18} {'vs ratio 0':>10}")
    for r in rows:
        print(f"{r['mask_ratio']:>10.2f} {r['step_s']:>10.3f} {r['speedup']:>7.2f}x "
              f"{r['activation_bytes'] / 2**20:>18.1f} {r['activation_ratio']:>10.2f}")


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"mask_ratio": bench_mask_ratio, "memory": bench_memory,
                                                              "peers": bench_peers}
OUTPUTS = {"mask_ratio": "model_mask.json", "memory": "model_memory.json", "peers": "model_peers.json"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=sorted(SECTIONS), nargs="+", default=sorted(SECTIONS))
    p.add_argument("--encoder", default="vit_st_base", help="registered vit_st encoder (default: vit_st_base)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    p.add_argument("--decoder-depth", type=int, default=1)
    p.add_argument("--decoder-dim", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1, so that CPU time measures the step's compute)")
    p.add_argument("--memory-models", nargs="+", default=["violet_base", "allinone_base", "clip_base"])
    p.add_argument("--memory-frames", type=int, default=8)
    p.add_argument("--memory-batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ratios[0] != 0.0:
        args.ratios = [0.0, *args.ratios]  # the baseline every ratio is compared with
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.section:
        result = SECTIONS[name](args)
        path = args.out / OUTPUTS[name]
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
