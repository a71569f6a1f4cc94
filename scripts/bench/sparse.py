"""Token-sparse pretraining benchmarks (``vl.models.sparse``); each mode prints a table and writes JSON.

``--mode speed`` (default): one pretraining step (VTC + VTM + MLM forward, backward, AdamW) with the video
encoded once on a token subset (``encode_video(video, drop=...)``, the same tokens serving all three
objectives) at keep ratios 1.0, 0.5 and 0.25, for each ``--encoders`` entry at base size (8 frames of
224 px, ``--batch`` clips). Time per step (CPU: this process's CPU time with one thread, steady on a shared
machine; CUDA: synchronised wall clock, bf16 autocast) and activation memory (the storages autograd saves
for backward, parameters left out; on CUDA also the peak allocated), as ratios against keep 1.0 of the
same encoder in the same process. Selection: ``tube`` for the per-frame encoders (divided, clip_st),
``random`` for joint (``--method`` overrides). The text side is ``vl_tiny``'s (bert_tiny, 2-layer
single-stream fusion), so the step is dominated by the video encoder, which is what sparsity cuts.
Writes ``bench_results/sparse_speed.json``.

``--mode quality``: time to quality on synthetic data (``vl data synth --task motion``: a shape moving in
one of four directions; written to ``--data`` when missing). A tiny ``vit_st`` (divided, 8 frames of
32 px, 8x8 patches, 128 tokens) is trained with VTC from the same seed, dense and with token sparsity
(``--quality-ratio``, each of ``--quality-methods``, a final dense phase of ``--dense-final`` of the steps), on
clips decoded once into memory. Every ``--eval-every`` steps: held-out video-to-text R@1 over the four
direction captions (chance 25%) and reversal accuracy (the share of clips whose own caption scores them
above their frames reversed; chance 50%), against the CPU minutes spent training so far.
Writes ``bench_results/sparse_quality.json``.

    python scripts/bench/sparse.py                      # speed, CPU, one thread (about 5 min on 2 cores)
    python scripts/bench/sparse.py --device cuda --batch 8
    python scripts/bench/sparse.py --mode quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from scripts.bench.model import saved_activation_bytes, time_steps  # noqa: E402
from vl.models import create_model  # noqa: E402
from vl.models.hub import load_tokenizer  # noqa: E402
from vl.models.sparse import TokenSparsity  # noqa: E402
from vl.objectives import MLMLoss, VTCLoss, VTMLoss, caption_keys  # noqa: E402

RESULTS = Path("bench_results")
ENCODERS = {  # name in the table -> video options of vl_tiny
    "vit_st_base_joint": dict(name="vit_st_base", temporal="joint"),
    "vit_st_base_divided": dict(name="vit_st_base", temporal="divided"),
    "clip_st_base": dict(name="clip_st_base"),
}


# ---- speed ----------------------------------------------------------------------------------------
def pretrain_step_fn(args: argparse.Namespace, encoder: str, ratio: float,
                     device: torch.device) -> tuple[Callable[[], int], list]:
    """A closure running one VTC + VTM + MLM training step at keep ``ratio`` (returns saved-activation bytes)."""
    torch.manual_seed(0)
    video_opts = dict(ENCODERS[encoder], num_frames=args.frames, img_size=args.size)
    model = create_model("vl_tiny", video=video_opts).to(device).train()
    enc = model.video_encoder
    method = args.method or ("random" if enc.token_layout == "any" else "tube")
    sparsity = TokenSparsity(ratio, method)
    tokenizer = load_tokenizer("minilm")
    vtc, vtm, mlm = VTCLoss(), VTMLoss(), MLMLoss.from_tokenizer(tokenizer).to(device)
    texts = [f"a clip number {i} of a red square moving left across the frame" for i in range(args.batch)]
    enc_text = tokenizer(texts, padding="max_length", truncation=True, max_length=args.text_len, return_tensors="pt")
    ids, mask = enc_text["input_ids"].to(device), enc_text["attention_mask"].to(device)
    video = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> int:
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
        with saved_activation_bytes(params) as saved, autocast:
            drop = sparsity.drop_mask(video, None, enc, step=0, max_steps=1, generator=gen)  # (B, N) | None
            v = model.encode_video(video, drop=drop)  # once, for every objective
            t = model.encode_text(ids, mask)
            v_emb, t_emb = model.embed_video(v["pooled"]), model.embed_text(t["pooled"])
            out = vtc(v_emb, t_emb, model.logit_scale)
            sim = VTCLoss.similarity(v_emb, t_emb, model.logit_scale).detach()
            out.update(vtm(model, v["tokens"], t["tokens"], mask, sim, video_mask=v.get("token_mask"), generator=gen))
            out.update(mlm(model, v["tokens"], ids, mask, video_mask=v.get("token_mask"), generator=gen))
        sum(value for key, value in out.items() if key.endswith("_loss")).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sum(saved.values())

    return step, [model, opt]


def bench_speed(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    rows = []
    for encoder in args.encoders:
        base = None
        for ratio in args.ratios:
            step, hold = pretrain_step_fn(args, encoder, ratio, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times, act = time_steps(step, args.warmup, args.repeats, device)
            row = {"encoder": encoder, "keep_ratio": ratio, "step_s": statistics.median(times), "step_s_all": times,
                   "activation_bytes": act}
            if device.type == "cuda":
                row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
            base = base or row
            row["time_ratio"] = row["step_s"] / base["step_s"]
            row["activation_ratio"] = act / base["activation_bytes"]
            if "peak_allocated_bytes" in row:
                row["peak_ratio"] = row["peak_allocated_bytes"] / base["peak_allocated_bytes"]
            rows.append(row)
            print(f"{encoder:22s} keep {ratio:4.2f}  step {row['step_s']:7.2f} s  x{row['time_ratio']:.2f}  "
                  f"activations {act / 2**20:8.1f} MiB  x{row['activation_ratio']:.2f}", flush=True)
            del step, hold
    setup = {"frames": args.frames, "size": args.size, "batch": args.batch, "text_len": args.text_len,
             "objectives": "vtc+vtm+mlm", "text": "bert_tiny", "fusion": "single_stream depth 2",
             "method": args.method or "random (joint) / tube (per-frame)", "device": str(device),
             "clock": "wall" if device.type == "cuda" else "process CPU time", "threads": torch.get_num_threads(),
             "warmup": args.warmup, "repeats": args.repeats, "torch": torch.__version__,
             "machine": platform.machine(), "cpus": os.cpu_count()}
    return {"mode": "speed", "setup": setup, "rows": rows}


# ---- quality --------------------------------------------------------------------------------------
def load_synth(args: argparse.Namespace) -> dict:
    """Clips and captions of the synthetic motion task, decoded once: {split: (video (Nv, T, C, H, W), captions
    (Nt), caption_video (Nt,) the clip of each caption, labels (Nv))}."""
    from datapipes.pipeline import ClipConfig, build_eval_loader
    from datapipes.synth import SynthConfig, write_synth
    root = Path(args.data)
    info_path = root / "splits.json"
    if not info_path.exists():
        write_synth(str(root), {"train": args.train_clips, "val": args.val_clips},
                    SynthConfig(frames=8, size=32, task="motion", seed=1), maxcount=200, workers=1, progress=False)
    splits = json.loads(info_path.read_text())["splits"]
    tokenizer = load_tokenizer("minilm")
    cfg = ClipConfig(num_frames=8, size=32, max_text_len=16)
    data = {}
    for split in ("train", "val"):
        videos, captions, caption_video, labels = [], [], [], []
        for batch in build_eval_loader(splits[split]["path"], tokenizer, cfg, batch_size=100):
            caption_video.append(batch.video_index() + sum(len(v) for v in videos))
            videos.append(batch.video)
            captions += list(batch.texts)
            labels += [m["label"] for m in batch.meta]
        data[split] = (torch.cat(videos), captions, torch.cat(caption_video), labels)
    return data


@torch.no_grad()
def evaluate(model, tokenizer, val: tuple) -> dict[str, float]:
    """Held-out R@1 over the four direction captions and reversal accuracy (own caption: clip > reversed clip)."""
    from datapipes.synth import DIRECTIONS, captions_for
    model.eval()
    video, _, _, labels = val
    names = list(DIRECTIONS)
    queries = [captions_for(label, [("red", "square")], name_objects=False)[0] for label in names]
    q = tokenizer(queries, padding=True, return_tensors="pt")
    text = model.embed_text(model.encode_text(q["input_ids"], q["attention_mask"])["pooled"])  # (4, E)
    v = model.embed_video(model.encode_video(video)["pooled"])  # (Nv, E): dense, as every evaluation
    rev = model.embed_video(model.encode_video(video.flip(1))["pooled"])  # frames in reverse order
    truth = torch.tensor([names.index(label) for label in labels])
    r1 = ((v @ text.t()).argmax(dim=1) == truth).float().mean().item()
    own = text[truth]  # (Nv, E): each clip's direction caption
    reversal = ((v * own).sum(1) > (rev * own).sum(1)).float().mean().item()
    model.train()
    return {"R@1": 100 * r1, "reversal": 100 * reversal}


def train_run(args: argparse.Namespace, data: dict, sparsity: TokenSparsity) -> list[dict]:
    """Train the tiny model for ``--steps`` steps; evaluation points (step, CPU minutes, R@1, reversal)."""
    torch.manual_seed(0)
    video_opts = dict(name="vit_st_tiny", temporal="divided", num_frames=8, img_size=32, patch_size=8,
                      tubelet_size=1, pos_init="sincos")
    model = create_model("vl_tiny", video=video_opts, text=dict(pooling="mean"), heads=[]).train()
    tokenizer = load_tokenizer("minilm")
    vtc = VTCLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    video, captions, caption_video, _ = data["train"]
    gen = torch.Generator().manual_seed(0)
    points, cpu = [], 0.0
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            points.append({"step": step, "cpu_min": cpu / 60, **evaluate(model, tokenizer, data["val"])})
            print(f"  keep {sparsity.keep_ratio:.2f} {sparsity.method:6s} step {step:4d}  {cpu / 60:6.2f} CPU min  "
                  f"R@1 {points[-1]['R@1']:5.1f}  reversal {points[-1]['reversal']:5.1f}", flush=True)
        if step == args.steps:
            break
        start = time.process_time()
        idx = torch.randint(len(captions), (args.quality_batch,), generator=gen)
        texts = [captions[i] for i in idx.tolist()]
        tok = tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
        clips = video[caption_video[idx]]  # (B, T, C, H, W)
        drop = sparsity.drop_mask(clips, None, model.video_encoder, step, args.steps, generator=gen)
        v = model.encode_video(clips, drop=drop)
        t = model.encode_text(tok["input_ids"], tok["attention_mask"])
        keys = caption_keys(texts, [[c] for c in texts])  # multi-positive: captions repeat in a batch
        loss = vtc(model.embed_video(v["pooled"]), model.embed_text(t["pooled"]), model.logit_scale, keys)["vtc_loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        cpu += time.process_time() - start
    return points


def time_to(points: list[dict], target: float) -> float | None:
    """CPU minutes at the first evaluation reaching ``target`` R@1 (None: never)."""
    return next((p["cpu_min"] for p in points if p["R@1"] >= target), None)


def bench_quality(args: argparse.Namespace) -> dict:
    data = load_synth(args)
    runs = {"dense": train_run(args, data, TokenSparsity(1.0))}
    options = {"dense": TokenSparsity(1.0)}
    for method in args.quality_methods:
        options[method] = TokenSparsity(args.quality_ratio, method, dense_final_steps=args.dense_final)
        runs[method] = train_run(args, data, options[method])
    target = max(p["R@1"] for p in runs["dense"]) - args.margin
    summary = {name: {"final_R@1": pts[-1]["R@1"], "final_reversal": pts[-1]["reversal"],
                      "cpu_min": pts[-1]["cpu_min"], "cpu_min_to_target": time_to(pts, target)}
               for name, pts in runs.items()}
    print(f"target R@1 {target:.1f} (dense best - {args.margin}):")
    for name, s in summary.items():
        print(f"  {name:7s} final R@1 {s['final_R@1']:5.1f} reversal {s['final_reversal']:5.1f} "
              f"in {s['cpu_min']:.2f} CPU min; reached target after {s['cpu_min_to_target']} CPU min")
    setup = {"model": "vl_tiny, vit_st_tiny divided 8x32px patch 8 (128 tokens), VTC multi-positive",
             "steps": args.steps, "batch": args.quality_batch,
             "runs": {name: dataclasses.asdict(option) for name, option in options.items()},
             "train_clips": len(data["train"][0]), "val_clips": len(data["val"][0]),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    return {"mode": "quality", "setup": setup, "target_R@1": target, "summary": summary, "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("speed", "quality"), default="speed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: CPU time = compute)")
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    p.add_argument("--ratios", nargs="+", type=float, default=[1.0, 0.5, 0.25])
    p.add_argument("--method", choices=("random", "tube", "motion"), default=None)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data", default="data/synth_motion", help="synthetic motion shards (written when missing)")
    p.add_argument("--train-clips", type=int, default=800)
    p.add_argument("--val-clips", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--quality-batch", type=int, default=32)
    p.add_argument("--quality-ratio", type=float, default=0.25)
    p.add_argument("--quality-methods", nargs="+", choices=("random", "tube", "motion"), default=["tube", "motion"])
    p.add_argument("--dense-final", type=float, default=0.1, help="share of the steps trained dense at the end")
    p.add_argument("--margin", type=float, default=2.0, help="target = dense's best R@1 minus this")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    result = bench_speed(args) if args.mode == "speed" else bench_quality(args)
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.out or RESULTS / f"sparse_{args.mode}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
