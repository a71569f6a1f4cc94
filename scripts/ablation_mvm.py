"""MVM ablation in one command: does masked visual modelling help the tiny model's retrieval?

    python scripts/ablation_mvm.py                       # every arm, one seed: ~10 minutes on 2 cores
    python scripts/ablation_mvm.py --seeds 0 1 2         # the BENCHMARKS.md table: mean ± std over 3 seeds
    python scripts/ablation_mvm.py --arms base pixel     # a subset

Steps (each a `vl` command a user could type):
1. ``vl data synth`` writes synthetic shards (8 frames of 32 px) unless they exist.
2. ``vl fit -c configs/vq_tokenizer/fsq_tiny.yaml``: the FSQ tokenizer of the ``vq`` arm.
3. ``vl fit -c configs/ablation/mvm_base.yaml [-c configs/ablation/mvm_<target>.yaml]`` for each arm:
   VTC + MLM (``base``), then VTC + MLM + MVM with ``pixel``, ``hog``, ``vq`` and ``feature`` targets (the
   teacher of ``feature`` is the ``base`` arm's frozen video encoder). Same seed, data, steps, optimiser.
4. Each arm's last checkpoint is evaluated on the test shards (text-to-video retrieval, every caption a
   query), and the table (mean ± std over seeds) is printed and written to ``OUT/results.json`` and
   ``OUT/results.md``. Runs live in ``OUT/seed<N>/<arm>``; every run uses one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("base", "pixel", "hog", "vq", "feature")
METRICS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MdR", "v2t_R@1")
THREADS = "1"  # torch threads per run: on a shared 2-core machine two threads contend and run ~10x slower


def vl(*args: str) -> None:
    """Run one ``vl`` command in a fresh process (as a user would), failing loudly."""
    cmd = [sys.executable, "-m", "vl.cli", *args]
    print("$ vl " + " ".join(args), flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": THREADS}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def run_yaml(folder: Path) -> Path:
    """A small YAML merged last: this run's directory, logger and checkpoint callback (lists replace)."""
    text = [
        "trainer:",
        f"  default_root_dir: {folder}",
        "  logger:",
        "    class_path: lightning.pytorch.loggers.CSVLogger",
        f"    init_args: {{save_dir: {folder}, name: logs, version: 0}}",
        "  callbacks:",
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        f"      init_args: {{dirpath: {folder}/checkpoints, save_last: true}}",
        "  enable_progress_bar: false",
    ]
    path = folder / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return path


def arm_args(args: argparse.Namespace, arm: str, seed: int) -> list[str]:
    """``-c`` configs and overrides of one arm and seed (its data; the tokenizer and teacher this run made)."""
    configs = ["configs/ablation/mvm_base.yaml"] + ([f"configs/ablation/mvm_{arm}.yaml"] if arm != "base" else [])
    out = [x for c in configs for x in ("-c", c)] + ["--data.init_args.root", str(args.data),
                                                     "--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    if arm == "vq":
        out += ["--model.init_args.objectives.mvm_config.vq.path", str(args.out / "tokenizer/checkpoints/last.ckpt")]
    if arm == "feature":
        teacher = run_dir(args, "base", seed) / "checkpoints" / "last.ckpt"
        out += ["--model.init_args.objectives.mvm_config.teacher.checkpoint", str(teacher)]
    return out


def run_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return args.out / f"seed{seed}" / arm


def train_tokenizer(args: argparse.Namespace) -> Path:
    """Step 2: the tiny FSQ tokenizer (one for every seed); returns its last checkpoint."""
    ckpt = args.out / "tokenizer" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        vl("fit", "-c", "configs/vq_tokenizer/fsq_tiny.yaml", "-c", str(run_yaml(args.out / "tokenizer")),
           "--data.init_args.root", str(args.data), "--trainer.max_steps", str(args.tokenizer_steps),
           "--trainer.check_val_every_n_epoch", "1000")
    return ckpt


def train_arm(args: argparse.Namespace, arm: str, seed: int) -> Path:
    """Step 3: pretrain one arm with one seed; returns its last checkpoint."""
    folder = run_dir(args, arm, seed)
    ckpt = folder / "checkpoints" / "last.ckpt"
    if ckpt.exists() and args.skip_existing:
        return ckpt
    shutil.rmtree(folder, ignore_errors=True)
    vl("fit", *arm_args(args, arm, seed), "-c", str(run_yaml(folder)), "--trainer.max_steps", str(args.steps))
    return ckpt


def evaluate(args: argparse.Namespace, arm: str, seed: int, ckpt: Path) -> dict[str, float]:
    """Step 4: test-split retrieval of one checkpoint (in this process, from the same configs)."""
    from vl.lit.cli import VLLightningCLI

    cli = VLLightningCLI(args=[*arm_args(args, arm, seed), "--trainer.logger", "false", "--trainer.callbacks", "[]",
                               "--trainer.default_root_dir", str(run_dir(args, arm, seed) / "test"),
                               "--trainer.enable_progress_bar", "false"], run=False)
    out = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False, weights_only=False)
    return {k.removeprefix("test/"): float(v) for k, v in out[0].items()}


def final_losses(folder: Path) -> dict[str, float]:
    """Mean of the last five logged values of each training loss."""
    import csv

    path = folder / "logs" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    out = {}
    for key in ("train/vtc_loss", "train/mlm_loss", "train/mvm_loss", "train/mvm_acc", "train/mvm_cos"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            out[key.removeprefix("train/")] = sum(values[-5:]) / len(values[-5:])
    return out


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def table(results: dict[str, dict[int, dict]]) -> str:
    """Mean (± standard deviation over seeds) of each metric, per arm."""
    seeds = sorted({s for runs in results.values() for s in runs})
    lines = [f"| arm | objectives | {' | '.join(METRICS)} | t2v R@1 per seed | final MVM loss |",
             "|---|---|" + "---|" * (len(METRICS) + 2)]
    for arm, runs in results.items():
        objectives = "VTC+MLM" + ("" if arm == "base" else f"+MVM ({arm})")
        cells = [_mean_std([runs[s]["test"][k] for s in runs]) for k in METRICS]
        per_seed = " / ".join(f"{runs[s]['test']['t2v_R@1']:.1f}" for s in sorted(runs))
        mvm = [runs[s]["train"]["mvm_loss"] for s in runs if "mvm_loss" in runs[s]["train"]]
        lines.append(f"| {arm} | {objectives} | {' | '.join(cells)} | {per_seed} | "
                     f"{f'{statistics.fmean(mvm):.3f}' if mvm else '-'} |")
    first = next(iter(next(iter(results.values())).values()))["test"]
    lines.append(f"\nSeeds {', '.join(map(str, seeds))}; chance: t2v R@1 {first['t2v_chance_R@1']:.2f}%, "
                 f"R@5 {first['t2v_chance_R@5']:.2f}%, R@10 {first['t2v_chance_R@10']:.2f}%.")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation_mvm")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synth_mvm")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of every arm per seed (default: 0)")
    p.add_argument("--steps", type=int, default=200, help="training steps per arm (default: 200)")
    p.add_argument("--tokenizer-steps", type=int, default=150)
    p.add_argument("--train-clips", type=int, default=2000)
    p.add_argument("--test-clips", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run (default: 1)")
    p.add_argument("--skip-existing", action="store_true", help="reuse runs that already have a last checkpoint")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    global THREADS
    THREADS = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)  # the in-process evaluation
    args.out, args.data = args.out.resolve(), args.data.resolve()
    vl("data", "synth", "--out", str(args.data), "--train", str(args.train_clips), "--val", "16",
       "--test", str(args.test_clips), "--frames", "8", "--size", "32", "--skip-existing", "--quiet")
    if "vq" in args.arms:
        train_tokenizer(args)
    arms = sorted(set(args.arms) | ({"base"} if "feature" in args.arms else set()), key=ARMS.index)  # base first:
    results: dict[str, dict[int, dict]] = {arm: {} for arm in arms}  # it is the feature arm's teacher
    for seed in args.seeds:
        for arm in arms:
            start = time.perf_counter()
            ckpt = train_arm(args, arm, seed)
            seconds = time.perf_counter() - start
            results[arm][seed] = {"test": evaluate(args, arm, seed, ckpt), "seconds": seconds,
                                  "train": final_losses(run_dir(args, arm, seed))}
            print(f"{arm} seed {seed}: {results[arm][seed]}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
