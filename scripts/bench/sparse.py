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

``--mode quality``: time to quality. ``vl fit`` of the demo recipe (``configs/pretrain/demo.yaml``: joint
attention over 4 frames, VTC with reversed-clip negatives, held-out compositions) at the shards' own 64 px
(``--quality-size``; 8x8 patches, 256 tokens a clip, so that the video encoder dominates the step), once dense
(``token_sparsity`` off) and once per sparse arm (``--arms``: ``motion:0.25`` keeps the quarter of the tokens
that change most between frames, ``random:0.25`` any quarter; the last ``--dense-final`` of the steps dense,
and with ``--dense-every N`` every N-th step too), from the same seed. Every ``--eval-every`` steps the run
validates (held-out text-to-video R@1 and reversal accuracy over the 24 validation clips) and
``vl.lit.TrainingCPUTime`` logs the CPU seconds spent training so far (decoding included: ``num_workers 0``).
The table gives the CPU minutes each arm took to first reach the target (``--target-r1`` 80 and
``--target-reversal`` 95, the demo's goal), and that as a share of dense's. Writes
``bench_results/sparse_quality.json``; the runs stay under ``bench_results/sparse_quality_runs/``.

    python scripts/bench/sparse.py                      # speed, CPU, one thread (about 5 min on 2 cores)
    python scripts/bench/sparse.py --device cuda --batch 8
    python scripts/bench/sparse.py --mode quality      # about 25 min on 1 core
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from scripts.bench.model import saved_activation_bytes, time_steps  # noqa: E402
from vl.models import create_model  # noqa: E402
from vl.models.hub import load_tokenizer  # noqa: E402
from vl.models.sparse import TokenSparsity  # noqa: E402
from vl.objectives import MLMLoss, VTCLoss, VTMLoss  # noqa: E402

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
def parse_arm(text: str) -> tuple[str, float]:
    """``dense`` or ``METHOD:KEEP`` (``motion:0.25``) -> (method, keep ratio)."""
    if text == "dense":
        return "dense", 1.0
    method, _, keep = text.partition(":")
    if method not in ("random", "tube", "motion") or not keep:
        raise argparse.ArgumentTypeError(
            f"an arm is 'dense' or METHOD:KEEP with METHOD random|tube|motion, got {text!r}")
    return method, float(keep)


def val_curve(run_dir: Path) -> list[dict]:
    """The validation points of a run's metrics.csv: step, training CPU seconds so far, R@1, reversal."""
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    if not files:
        raise SystemExit(f"no metrics.csv under {run_dir / 'logs'}: the run failed (its log is {run_dir}/fit.log)")
    for path in reversed(files):  # the newest fit's log (a `vl test` of the run logs a version of its own)
        points = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/t2v_R@1") and row.get("time/train_cpu_s"):
                    points.append({"step": int(row["step"]) + 1, "cpu_min": float(row["time/train_cpu_s"]) / 60,
                                   "R@1": float(row["val/t2v_R@1"]), "reversal": float(row["val/reversal_acc"])})
        if points:
            return points
    return []


def fit_arm(args: argparse.Namespace, name: str, method: str, keep: float, steps: int) -> dict:
    """``vl fit`` of the demo config at ``--quality-size`` px for ``steps`` steps with the arm's token sparsity,
    decoding in the training process (``num_workers 0``: its CPU time is counted), ``vl.lit.TrainingCPUTime``
    logging the training CPU seconds at each validation, then ``vl test`` of its last checkpoint ->
    {"val": the validation curve, "test": the test metrics}."""
    run_dir = Path(args.runs_dir) / name
    data = ["-c", "configs/pretrain/demo.yaml", "--data.init_args.root", args.data,
            "--data.init_args.frame_size", str(args.quality_size), "--data.init_args.num_workers", "0"]
    done = (args.reuse and (run_dir / "checkpoints" / "last.ckpt").exists()
            and max((p["step"] for p in val_curve(run_dir)), default=0) >= steps)
    if done:
        print(f"{name}: the finished run in {run_dir} (--reuse)", flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        cmd = [sys.executable, "-m", "vl.cli", "fit", *data, "--data.init_args.batches_per_epoch", str(args.eval_every),
               "--trainer.max_epochs", str(-(-steps // args.eval_every)), "--trainer.default_root_dir", str(run_dir),
               "--seed_everything", str(args.seed), "--data.init_args.seed", str(args.seed),
               "--trainer.callbacks+=vl.lit.TrainingCPUTime"]
        sparsity = "{keep_ratio: 1.0}" if keep >= 1.0 else (  # the demo config itself is sparse
            f"{{keep_ratio: {keep}, method: {method}, dense_final_steps: {args.dense_final}, "
            f"dense_every: {args.dense_every}}}")
        cmd += ["--model.init_args.objectives.token_sparsity", sparsity]
        print(f"{name}: {steps} steps ({' '.join(cmd[3:])})", flush=True)
        with open(run_dir / "fit.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            raise SystemExit(f"{name}: vl fit exited {code}; its log: {run_dir / 'fit.log'}")
    points = val_curve(run_dir)
    if not points:
        raise SystemExit(f"{name}: no validation figures with training CPU time in {run_dir / 'logs'}")
    for p in points:
        print(f"  {name:14s} step {p['step']:5d}  {p['cpu_min']:6.2f} CPU min  R@1 {p['R@1']:6.2f}  "
              f"reversal {p['reversal']:6.2f}", flush=True)
    test = test_arm(run_dir, data)
    print(f"  {name:14s} test (last checkpoint): R@1 {test['t2v_R@1']:6.2f}  reversal {test['reversal_acc']:6.2f}")
    return {"val": points, "test": test}


def test_arm(run_dir: Path, data_args: list[str]) -> dict:
    """``vl test`` of the run's last checkpoint on the held-out test split (24 clips the run never
    validated on) -> its test metrics (also in the run's logs as test_metrics.json)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "vl.cli", "test", *data_args, "--ckpt_path", str(ckpt),
           "--trainer.default_root_dir", str(run_dir)]
    with open(run_dir / "test.log", "w") as log:
        if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"vl test of {ckpt} failed; its log: {run_dir / 'test.log'}")
    return json.loads(sorted((run_dir / "logs").glob("version_*/test_metrics.json"))[-1].read_text())


def time_to(points: list[dict], r1: float, reversal: float) -> float | None:
    """CPU minutes at the first validation reaching both ``r1`` R@1 and ``reversal`` accuracy (None: never)."""
    return next((p["cpu_min"] for p in points if p["R@1"] >= r1 and p["reversal"] >= reversal), None)


def bench_quality(args: argparse.Namespace) -> dict:
    if not (Path(args.data) / "splits.json").exists():  # the demo's shards (make demo writes the same)
        subprocess.check_call([sys.executable, "-m", "vl.cli", "data", "synth", "--out", args.data, "--train", "2000",
                               "--val", "24", "--test", "24", "--holdout", "--skip-existing"])
    runs: dict[str, dict] = {}
    for method, keep in (parse_arm(a) for a in args.arms):
        every = f"_every{args.dense_every}" if args.dense_every else ""
        name = "dense" if keep >= 1.0 else f"{method}_{keep:g}{every}"
        steps = args.steps if keep >= 1.0 else args.sparse_steps or args.steps
        runs[name] = fit_arm(args, name, method, keep, steps)
    if "dense" not in runs:
        raise SystemExit("--arms needs 'dense': each sparse arm's time is compared with dense training's")
    r1, reversal = args.target_r1, args.target_reversal
    summary, dense_time = {}, time_to(runs["dense"]["val"], r1, reversal)
    for name, run in runs.items():
        last, reached = run["val"][-1], time_to(run["val"], r1, reversal)
        summary[name] = {"steps": last["step"], "cpu_min": last["cpu_min"], "last_val_R@1": last["R@1"],
                         "last_val_reversal": last["reversal"], "test_R@1": run["test"]["t2v_R@1"],
                         "test_reversal": run["test"]["reversal_acc"], "cpu_min_to_target": reached,
                         "vs_dense": None if reached is None or dense_time is None else reached / dense_time}
    print(f"target: held-out validation R@1 >= {r1:.2f} and reversal >= {reversal:.2f}")
    for name, s in summary.items():
        to = "never" if s["cpu_min_to_target"] is None else f"{s['cpu_min_to_target']:.2f} CPU min" + (
            "" if s["vs_dense"] is None else f" ({s['vs_dense']:.2f}x dense)")
        print(f"  {name:14s} {s['steps']:5d} steps in {s['cpu_min']:6.2f} CPU min; target reached after {to}; "
              f"test R@1 {s['test_R@1']:6.2f} reversal {s['test_reversal']:6.2f}")
    setup = {"config": "configs/pretrain/demo.yaml", "frame_size": args.quality_size, "data": args.data,
             "seed": args.seed, "eval_every": args.eval_every, "dense_final": args.dense_final,
             "dense_every": args.dense_every, "arms": args.arms,
             "clock": "training process CPU time, decoding included (num_workers 0), validation left out",
             "threads": 1, "torch": torch.__version__}
    return {"mode": "quality", "setup": setup, "target": {"R@1": r1, "reversal": reversal}, "summary": summary,
            "runs": runs}


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
    p.add_argument("--data", default="data/synth", help="the demo's shards (written when missing, as make demo does)")
    p.add_argument("--arms", nargs="+", default=["dense", "motion:0.25", "random:0.25"],
                   help="'dense' and METHOD:KEEP runs of the demo recipe (quality mode)")
    p.add_argument("--steps", type=int, default=720, help="training steps of the dense arm (the demo's)")
    p.add_argument("--sparse-steps", type=int, default=None, help="training steps of the sparse arms (default --steps)")
    p.add_argument("--eval-every", type=int, default=60, help="steps between validations")
    p.add_argument("--dense-final", type=float, default=0.1,
                   help="share of a sparse arm's steps trained dense at the end")
    p.add_argument("--dense-every", type=int, default=0, help="a sparse arm's every n-th step dense too (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality-size", type=int, default=64, help="frame size of the quality runs (the shards' own)")
    p.add_argument("--target-r1", type=float, default=80.0, help="held-out R@1 to reach (the demo's goal)")
    p.add_argument("--target-reversal", type=float, default=95.0, help="reversal accuracy to reach (the demo's goal)")
    p.add_argument("--runs-dir", default=str(RESULTS / "sparse_quality_runs"))
    p.add_argument("--reuse", action="store_true",
                   help="read an arm's finished run in --runs-dir instead of rerunning it")
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
