"""The GPU check: every CUDA path of vl in one command, under a time budget, on one GPU.

No GPU has run this code before, and a lent GPU comes for about 15 minutes, so the whole check is one
prepared command that stops by itself (default about 8 minutes, ``--quick`` about 4):

1. setup      Installs nothing. Runs with the interpreter that holds vl (the repo's ``.venv``, carried over)
              and records the versions it found; fails if vl, DeepSpeed or CUDA is missing.
2. cuda_tests Every CUDA-only test (``pytest.mark.gpu``, or a ``skipif`` whose reason starts "needs CUDA"),
              collected with ``pytest --collect-only`` and run; a test skipped on a GPU is a failure.
3. fit        ``vl fit`` of each base pretraining config (allinone_base, clip_base, videomae_base,
              violet_base) on tiny synthetic shards (``vl data synth``) under DeepSpeed ZeRO-2, ZeRO-3 and FSDP on one device,
              bf16-mixed, then a resume from the checkpoint each run wrote (``--ckpt_path last``).
              ``--quick``: each config and each strategy once. The configs name the user's weights
              (BERT-base, DALL-E, Video Swin-B, ViT-B/16, VideoMAE-B); random-weight stand-ins in the same
              formats are written to a temp dir.
4. throughput Base-size train-step samples/s and peak memory of ``vit_st`` joint / divided and ``clip_st``
              beside their Hugging Face / open_clip peers (``scripts/bench/peers.py``'s ``compare``, same
              run), and of ``swin3d``; MFU = model FLOPs of a step (``FlopCounterMode`` on the meta device:
              the model's FLOPs, no recomputation) / step time / the card's dense bf16 peak by name.
   memory     One bf16 training step (Lightning Trainer) of each base model at 8 x 224 px, batch 32, VTC +
              VTM + MLM, checkpointing: ``torch.cuda.max_memory_allocated`` against the computed total in
              BENCHMARKS.md (``total_GiB`` of the generated ``model_memory`` table), within ``MEMORY_TOLERANCE``.
5. One JSON (``--out``) and a short table; exit status 1 on any failure, a skip, or a stage cut by the
   time budget (what was not run is listed as such).

``--dry-run`` (CPU, part of ``make test`` through tests/test_gpu_check.py) does everything that needs no
GPU, in-process: parses every ``vl fit`` command above with vl's LightningCLI parser (no fitting),
collects the CUDA-only tests, builds every model it would measure on the meta device and counts its
FLOPs, and reads the memory table of BENCHMARKS.md. So the check cannot rot between GPU loans.

    scripts/gpu_check.sh --dry-run                     # CPU, seconds
    scripts/gpu_check.sh --quick --out /tmp/gpu.json   # one GPU, about 4 minutes
    scripts/gpu_check.sh                               # one GPU, about 8 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]  # vl and peers.py from a checkout

BASE_CONFIGS = ("allinone_base", "clip_base", "videomae_base", "violet_base")
BASE_MODELS = ("allinone_base", "clip_base", "violet_base")  # the registered base models (memory stage)
STRATEGIES = ("deepspeed_stage_2", "deepspeed_stage_3", "fsdp")
QUICK_PAIRS = (("allinone_base", "deepspeed_stage_2"), ("clip_base", "deepspeed_stage_3"),
               ("videomae_base", "deepspeed_stage_2"), ("violet_base", "fsdp"))  # --quick: every config and strategy once
FIT_STEPS, RESUME_STEPS = 2, 3  # the first run stops at step 2, the resumed one continues to step 3
FRAMES, IMAGE, BATCH = 8, 224, 8  # throughput: 8 frames of 224 px, 8 clips per step
WORKERS = 6  # fits and the test run side by side on the one GPU: 12 fit + resume pairs take two waves
MEMORY_BATCH = 32  # as the computed memory table (scripts/bench/model.py --section memory)
MEMORY_TOLERANCE = 0.25  # measured peak within +-25% of the computed total (which leaves out workspaces)
# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from NVIDIA's data sheets; the first name contained in
# torch.cuda.get_device_name() wins, so the more specific names come first ("GH200" holds "H200").
PEAK_BF16_FLOPS = (("GH200", 989.4e12), ("H200 NVL", 835e12), ("H200", 989.4e12), ("H100 NVL", 835e12),
                   ("H100 PCIe", 756.5e12), ("H100", 989.4e12), ("B200", 2250e12), ("A100", 312e12),
                   ("L40S", 362.05e12), ("L4", 121e12))
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@dataclass
class Check:
    """One line of the report: a named check, whether it passed, how long it took, and what it found."""

    stage: str
    name: str
    ok: bool
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Report:
    """The checks so far; rewrites the JSON after each one, so a crash or a kill leaves what was done."""

    def __init__(self, out: Path, mode: str, budget_s: float) -> None:
        self.out, self.checks, self.start = out, [], time.monotonic()
        self.lock = threading.Lock()  # the fits and tests report from worker threads
        self.meta: dict[str, Any] = {"mode": mode, "budget_s": budget_s, "command": sys.argv}

    def add(self, check: Check) -> Check:
        with self.lock:
            self.checks.append(check)
            mark = "ok  " if check.ok else "FAIL"
            print(f"[{time.monotonic() - self.start:6.1f}s] {mark} {check.stage}: {check.name} {check.detail[:300]}",
                  flush=True)
            self.write()
        return check

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        body = {**self.meta, "wall_s": round(time.monotonic() - self.start, 1), "ok": self.ok,
                "checks": [asdict(c) for c in self.checks]}
        self.out.write_text(json.dumps(body, indent=2, default=str))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def timed(report: Report, stage: str, name: str, fn: Callable[[], tuple[bool, str, dict]]) -> Check:
    """Run one check; an exception is a failure whose message is the detail (the run goes on)."""
    t0 = time.monotonic()
    try:
        ok, detail, data = fn()
    except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the other checks
        ok, detail, data = False, f"{type(err).__name__}: {err}"[-1500:], {}
    return report.add(Check(stage, name, ok, round(time.monotonic() - t0, 1), detail, data))


# ---------------------------------------------------------------- 1. setup


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the GPU paths need (None: not installed)."""
    out: dict[str, str | None] = {}
    for dist in ("torch", "torchvision", "lightning", "deepspeed", "transformers", "timm", "open_clip_torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def check_setup(gpu: bool) -> tuple[bool, str, dict]:
    """Interpreter, versions and the GPU; nothing is installed. Fails without DeepSpeed or (on a GPU run) CUDA."""
    import torch

    found = versions()
    data = {"python": sys.executable, "repo_venv": Path(sys.prefix).resolve() == (ROOT / ".venv").resolve(),
            "versions": found, "cuda_available": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    missing = [name for name, v in found.items() if v is None]
    if missing:
        return False, f"not installed: {', '.join(missing)} (run `make setup` where there is network)", data
    if gpu and not torch.cuda.is_available():
        return False, "torch sees no CUDA device", data
    return True, f"torch {found['torch']}, lightning {found['lightning']}, deepspeed {found['deepspeed']}, " \
                 f"{data['device'] or 'no GPU'}", data


# ---------------------------------------------------------------- 2. CUDA-only tests


class _CudaOnly:
    """pytest plugin: records the node ids of tests marked ``gpu`` or skipped "needs CUDA" without a GPU."""

    def __init__(self) -> None:
        self.nodeids: list[str] = []

    def pytest_collection_modifyitems(self, items: list) -> None:
        for item in items:
            reasons = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")]
            if item.get_closest_marker("gpu") or any(r.startswith("needs CUDA") for r in reasons):
                self.nodeids.append(item.nodeid)


def collect_cuda_tests() -> list[str]:
    """Node ids of the CUDA-only tests, by ``pytest --collect-only`` in this process. Only test files that
    mention CUDA or the ``gpu`` marker are collected (a CUDA-only test names one or the other), which keeps
    the collection to seconds instead of importing the whole suite."""
    import pytest

    files = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py"))
             if re.search(r"cuda|mark\.gpu", p.read_text(), re.IGNORECASE)]
    plugin, log = _CudaOnly(), io.StringIO()
    with contextlib.redirect_stdout(log):  # node ids are relative to --rootdir, whatever the working directory
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", f"--rootdir={ROOT}", *files],
                         plugins=[plugin])
    if rc != 0:
        raise RuntimeError(f"pytest --collect-only exited {int(rc)}:\n{log.getvalue()[-1500:]}")
    if not plugin.nodeids:
        raise RuntimeError(f"no CUDA-only test found in {files}")
    return plugin.nodeids


def collect_check(nodeids: list[str]) -> tuple[bool, str, dict]:
    """The collection as a check; the node ids are put in ``nodeids`` for the run."""
    nodeids[:] = collect_cuda_tests()
    return True, f"{len(nodeids)} CUDA-only tests", {"tests": list(nodeids)}


def run_cuda_tests(nodeids: list[str], workdir: Path, timeout: float) -> tuple[bool, str, dict]:
    """Run the CUDA-only tests with a JUnit XML report; fails on any failure, error, skip or missing test."""
    xml = workdir / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", *nodeids, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           f"--timeout={int(timeout)}"]
    rc, log = run_command(cmd, ROOT, timeout)
    results: dict[str, str] = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in {"skipped", "failure", "error"}), "passed")
            message = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
            results[f"{case.get('classname')}::{case.get('name')}"] = f"{outcome} {message}".strip()
    bad = {k: v for k, v in results.items() if not v.startswith("passed")}
    ok = rc == 0 and not bad and len(results) == len(nodeids)
    detail = f"{len(results) - len(bad)}/{len(nodeids)} passed" + (f"; {bad}" if bad else "")
    return ok, detail if ok or bad else f"{detail}; pytest exited {rc}: {log[-1500:]}", {"results": results}


# ---------------------------------------------------------------- 3. vl fit under each sharded strategy


def fit_argv(config: str, strategy: str, data: Path, weights: Path, max_steps: int, resume: bool) -> list[str]:
    """The ``vl fit`` arguments of one run: the shipped config and trainer file as they are, one device, tiny
    shards and batches, no validation; violet_base's user weights replaced by the stand-ins in ``weights``."""
    argv = ["fit", "-c", str(ROOT / "configs" / "pretrain" / f"{config}.yaml"),
            "--trainer", str(ROOT / "configs" / "trainer" / f"{strategy}.yaml"),
            "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.max_steps", str(max_steps),
            "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false",
            "--data.init_args.root", str(data), "--data.init_args.train_shards", "null",
            "--data.init_args.val_shards", "null", "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "2", "--data.init_args.num_workers", "1",
            "--data.init_args.batches_per_epoch", "4"]
    if config == "violet_base":
        bert = str(weights / "bert-base-uncased")
        argv += ["--model.init_args.text", f"{{name: bert, pretrained: {bert}}}", "--model.init_args.tokenizer", bert,
                 "--data.init_args.tokenizer", bert,
                 "--model.init_args.objectives.mvm_config.vq.path", str(weights / "dalle_encoder.pkl"),
                 "--model.init_args.video.pretrained", str(weights / "swin3d_b.pth")]
    if config == "allinone_base":
        argv += ["--model.init_args.video.pretrained", str(weights / "vit_base_patch16_224.safetensors")]
    if config == "videomae_base":
        argv += ["--model.init_args.video.pretrained", str(weights / "videomae-base")]
    return argv + (["--ckpt_path", "last"] if resume else [])


def fit_plan(quick: bool) -> list[tuple[str, str]]:
    """(config, strategy) pairs to fit: every config under every strategy, or each config and each strategy
    once with ``--quick``."""
    return list(QUICK_PAIRS) if quick else [(c, s) for c in BASE_CONFIGS for s in STRATEGIES]


def write_stand_in_weights(weights: Path) -> None:
    """Random-weight stand-ins, in the formats the base configs expect, for the user's weights they name: a
    BERT-base directory in Hugging Face format (with the packaged uncased WordPiece tokenizer), a DALL-E dVAE
    encoder state dict (``vl.models.dalle`` loads either that or OpenAI's pickle), torchvision's Video
    Swin-B state dict (violet_base), timm's ViT-B/16 with its 21k-class head (allinone_base) and a
    ``save_pretrained`` folder of Hugging Face's VideoMAE-B (videomae_base)."""
    import timm
    import torch
    import torchvision
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, VideoMAEConfig, VideoMAEModel

    from vl.models.dalle import DalleEncoder
    from vl.models.hub import load_tokenizer

    bert = weights / "bert-base-uncased"
    BertModel(BertConfig()).save_pretrained(bert)
    load_tokenizer("minilm").save_pretrained(bert)
    torch.save(DalleEncoder().state_dict(), weights / "dalle_encoder.pkl")
    torch.save(torchvision.models.video.swin3d_b().state_dict(), weights / "swin3d_b.pth")
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=21843)
    save_file(vit.state_dict(), str(weights / "vit_base_patch16_224.safetensors"))
    VideoMAEModel(VideoMAEConfig(use_mean_pooling=True)).save_pretrained(weights / "videomae-base")


def run_command(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout the group is killed. Returns (status, stdout+stderr)."""
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))  # WORKERS share the cores
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, f"{out}\n[gpu_check: killed after {timeout:.0f} s, the time budget]"


def fit_and_resume(config: str, strategy: str, data: Path, weights: Path, work: Path,
                   left: Callable[[], float]) -> tuple[bool, str, dict]:
    """``vl fit`` to step FIT_STEPS, then a resume from its last.ckpt to RESUME_STEPS, in a run folder of
    its own (the configs' relative ``runs/`` paths land there); the folder is deleted after (GBs each)."""
    run_dir = work / f"{config}-{strategy}"
    run_dir.mkdir(parents=True)
    vl = [sys.executable, "-m", "vl.cli"]
    try:
        rc, log = run_command(vl + fit_argv(config, strategy, data, weights, FIT_STEPS, False), run_dir, left())
        last = run_dir / "runs" / config / "checkpoints" / "last.ckpt"
        if rc != 0 or not last.exists():
            return False, f"fit exited {rc}, last.ckpt {'written' if last.exists() else 'missing'}: {log[-1500:]}", {}
        rc, log = run_command(vl + fit_argv(config, strategy, data, weights, RESUME_STEPS, True), run_dir, left())
        restored = "Restoring states from the checkpoint" in log
        reached = f"at step {RESUME_STEPS}" in log  # SaveLastOnTrainEnd: "saved .../last.ckpt at step N"
        if rc != 0 or not (restored and reached):
            return False, f"resume exited {rc}, restored={restored}, reached step {RESUME_STEPS}={reached}: " \
                          f"{log[-1500:]}", {}
        return True, f"fit to step {FIT_STEPS}, resumed to {RESUME_STEPS}", {}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- 4. throughput, MFU and memory


def encoder_builders() -> dict[str, tuple[Callable, str, Callable | None, str | None]]:
    """name -> (build ours, how to call it, build the peer or None, how to call it), at base dims, 8 x 224 px.
    The names of the first three are ``peers.PAIRS``; swin3d has no peer in peers.py."""
    import peers

    from vl.models import create_video_encoder

    d = peers.SIZES["base"]
    return {
        peers.PAIRS[0]: (lambda: peers.ours_vit_st(d, "joint", FRAMES, IMAGE), "ours",
                         lambda: peers.peer_videomae(d, FRAMES, IMAGE), "hf"),
        peers.PAIRS[1]: (lambda: peers.ours_vit_st(d, "divided", FRAMES, IMAGE), "ours",
                         lambda: peers.peer_timesformer(d, FRAMES, IMAGE), "hf"),
        peers.PAIRS[2]: (lambda: peers.ours_clip_st(d, FRAMES, IMAGE), "ours",
                         lambda: peers.peer_open_clip(d, FRAMES, IMAGE), "open_clip"),
        "swin3d_base": (lambda: create_video_encoder("swin3d_base", num_frames=FRAMES, img_size=IMAGE), "ours",
                        None, None),
    }


def step_flops(build: Callable, kind: str, batch: int = BATCH) -> int:
    """FLOPs of one training step's forward and backward (``FlopCounterMode``), counted on the meta device:
    shapes only, so it takes a second on a CPU, and it counts the model's FLOPs, not a kernel's recomputation."""
    import peers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        video = torch.randn(batch, FRAMES, 3, IMAGE, IMAGE)
    with FlopCounterMode(display=False) as counter:
        peers.forward_fn(kind)(model, video).backward()
    return counter.get_total_flops()


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s, by its name; None for a card not in PEAK_BF16_FLOPS."""
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_name), None)


def measure_encoder(name: str, rounds: int, steps: int) -> tuple[bool, str, dict]:
    """samples/s, peak memory and MFU of ours and the peer (peers.py's compare: alternating rounds, medians)."""
    import statistics

    import peers
    import torch

    build, kind, build_peer, peer_kind = encoder_builders()[name]
    peak = peak_bf16_flops(torch.cuda.get_device_name(0))
    args = argparse.Namespace(frames=FRAMES, image=IMAGE, batch=BATCH, steps=steps, rounds=rounds, device="cuda",
                              bf16=True)
    if build_peer is not None:
        row = peers.compare(name, peers.SIZES["base"], args)
    else:  # no peer: time ours alone with peers.py's step and memory helpers
        model = build().cuda().train()
        video = torch.randn(BATCH, FRAMES, 3, IMAGE, IMAGE, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            times = peers.time_steps(model, peers.forward_fn(kind), video, rounds * steps)
            row = {"pair": name, "samples_per_s_ours": BATCH / statistics.median(times),
                   "peak_cuda_MiB_ours": peers.peak_cuda_mib(model, peers.forward_fn(kind), video)}
        del model, video
    for side, b, k in (("ours", build, kind), ("peer", build_peer, peer_kind)):
        if b is not None:
            flops = step_flops(b, k)
            row[f"tflop_per_step_{side}"] = flops / 1e12
            row[f"mfu_{side}"] = flops * row[f"samples_per_s_{side}"] / BATCH / peak if peak else None
    torch.cuda.empty_cache()
    ratio = f", ours/peer {row['ratio_ours_over_peer']:.2f}" if "ratio_ours_over_peer" in row else ""
    mfu = f", MFU {row['mfu_ours']:.1%}" if row.get("mfu_ours") is not None else ", MFU n/a (card not in table)"
    return True, f"{row['samples_per_s_ours']:.1f} samples/s{ratio}{mfu}", row


def computed_memory_gib() -> dict[str, float]:
    """The computed totals (GiB, checkpointed) of each base model: the ``total_GiB`` column of the
    ``### model_memory`` table that ``make bench`` writes into BENCHMARKS.md's generated section."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text.split("### model_memory", 1)[-1].split("\n#", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    found: dict[str, float] = {}
    if rows and "model" in rows[0] and "total_GiB" in rows[0]:
        name, total = rows[0].index("model"), rows[0].index("total_GiB")
        found = {row[name]: float(row[total]) for row in rows[1:] if len(row) > max(name, total)}
    missing = [c for c in BASE_MODELS if c not in found]
    if missing:
        raise ValueError(f"BENCHMARKS.md's model_memory table (make bench) has no total_GiB for {missing}")
    return found


def memory_module(model: str, device: str | None = None):
    """The PretrainModule whose training step BENCHMARKS.md's memory table computes (8 frames, VTC + VTM +
    MLM, activation checkpointing), built on ``device`` (``"meta"``: shapes only)."""
    import torch

    from vl.lit.pretrain import Objectives, PretrainModule

    with torch.device(device) if device else contextlib.nullcontext():
        return PretrainModule(model=model, tokenizer="minilm", video={"num_frames": FRAMES},
                              objectives=Objectives(vtc=1.0, vtm=1.0, mlm=1.0), grad_checkpointing=True)


def measure_memory(model: str, computed_gib: float) -> tuple[bool, str, dict]:
    """Peak allocated CUDA memory of two bf16 training steps (Lightning Trainer) against the computed total."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from datapipes.batch import Batch

    module = memory_module(model)
    g = torch.Generator().manual_seed(0)
    batch = Batch(video=torch.randn(MEMORY_BATCH, FRAMES, 3, IMAGE, IMAGE, generator=g),
                  text_ids=torch.randint(1000, 20000, (MEMORY_BATCH, 32), generator=g),
                  text_mask=torch.ones(MEMORY_BATCH, 32, dtype=torch.long), keys=[str(i) for i in range(MEMORY_BATCH)])
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    measured = torch.cuda.max_memory_allocated() / 2 ** 30
    del module, trainer
    torch.cuda.empty_cache()
    ratio = measured / computed_gib
    ok = abs(ratio - 1) <= MEMORY_TOLERANCE
    return ok, f"measured {measured:.1f} GiB vs computed {computed_gib:.1f} GiB (x{ratio:.2f})", \
        {"model": model, "measured_GiB": round(measured, 2), "computed_GiB": computed_gib, "ratio": round(ratio, 3)}


# ---------------------------------------------------------------- the two modes


def dry_run(report: Report) -> None:
    """Everything the GPU run does that needs no GPU: parse its commands, collect its tests, build its models."""
    timed(report, "setup", "interpreter and packages", lambda: check_setup(gpu=False))
    timed(report, "cuda_tests", "collect", lambda: collect_check([]))
    for config, strategy in fit_plan(quick=False):
        timed(report, "fit", f"{config} x {strategy}", lambda c=config, s=strategy: parse_fit(c, s))
    for name, (build, kind, build_peer, peer_kind) in encoder_builders().items():
        def count(b=build, k=kind, bp=build_peer, pk=peer_kind) -> tuple[bool, str, dict]:
            ours = step_flops(b, k) / 1e12
            peer = step_flops(bp, pk) / 1e12 if bp else None
            ok = ours > 0 and (peer is None or peer > 0)
            return ok, f"{ours:.2f} TFLOP/step" + (f" (peer {peer:.2f})" if peer else ""), \
                {"tflop_per_step_ours": ours, "tflop_per_step_peer": peer}
        timed(report, "throughput", f"{name}: meta build + FLOPs", count)

    def computed() -> tuple[bool, str, dict]:
        totals = computed_memory_gib()
        return True, ", ".join(f"{m} {gib} GiB" for m, gib in totals.items()), totals

    timed(report, "memory", "BENCHMARKS.md computed totals", computed)
    for model in BASE_MODELS:
        def build(m=model) -> tuple[bool, str, dict]:
            params = sum(p.numel() for p in memory_module(m, "meta").parameters())
            return params > 0, f"{params / 1e6:.1f}M parameters on meta", {"params": params}
        timed(report, "memory", f"{model}: meta build", build)


@functools.lru_cache(maxsize=1)
def fit_parser():
    """The parser `vl fit` uses (vl's LightningCLI with its subcommands), built once: building it takes a
    second or two. Built by a subclass that stops after parsing (on demo.yaml): nothing is instantiated."""
    from vl.lit.cli import VLLightningCLI

    class ParseOnly(VLLightningCLI):
        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    with warnings.catch_warnings():  # Lightning warns when args are given while sys.argv holds others
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return ParseOnly(args=["fit", "-c", str(ROOT / "configs" / "pretrain" / "demo.yaml")]).parser


def parse_fit(config: str, strategy: str) -> tuple[bool, str, dict]:
    """Parse the fit and resume commands of one run with `vl fit`'s own parser, without fitting; checks that
    the sharded strategy, one device, bf16-mixed and the resume survive the config's own trainer section."""
    tmp = Path(tempfile.gettempdir())
    argvs = [fit_argv(config, strategy, tmp / "data", tmp / "weights", FIT_STEPS, resume) for resume in (False, True)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # vl's parser prints one line naming the bad key, then exits
            parsed = [fit_parser().parse_args(argv).fit for argv in argvs]
    except SystemExit:
        return False, f"`vl fit` would refuse the command: {err.getvalue().strip()}", {"argv": argvs[1]}
    t = parsed[1].trainer
    ok = (t.strategy, str(t.devices), t.precision, parsed[1].ckpt_path) == (strategy, "1", "bf16-mixed", "last")
    return ok, f"strategy {t.strategy}, {t.devices} device, {t.precision}", {"argv": argvs[1]}


def gpu_run(report: Report, args: argparse.Namespace, deadline: float) -> None:
    """Items 1-4 on the GPU; measurements first (a quiet GPU), then the tests and fits side by side."""
    left = lambda: deadline - time.monotonic()  # noqa: E731
    os.environ.update(ENV)  # offline, as the children run
    setup = timed(report, "setup", "interpreter and packages", lambda: check_setup(gpu=True))
    if not setup.ok:
        return
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        def prepare() -> tuple[bool, str, dict]:
            from datapipes.cli import main as data_main

            rc = data_main(["synth", "--out", str(work / "data"), "--train", "32", "--val", "8", "--test", "8",
                            "--frames", "16", "--size", "64", "--quiet"])
            (work / "weights").mkdir()
            write_stand_in_weights(work / "weights")
            return rc == 0, f"tiny shards and stand-in weights in {work}", {}

        if not timed(report, "setup", "tiny data (vl data synth) + stand-in weights", prepare).ok:
            return
        measure_until = time.monotonic() + args.measure_share * left()
        steps, rounds = (2, 1) if args.quick else (3, 2)
        for name in encoder_builders():
            if time.monotonic() > measure_until:
                report.add(Check("throughput", name, False, detail="not run: out of time"))
                continue
            timed(report, "throughput", name, lambda n=name: measure_encoder(n, rounds, steps))
        for model in BASE_MODELS:
            if time.monotonic() > measure_until:
                report.add(Check("memory", model, False, detail="not run: out of time"))
                continue
            timed(report, "memory", model, lambda m=model: measure_memory(m, computed_memory_gib()[m]))
        correctness(report, args.quick, work, left)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def correctness(report: Report, quick: bool, work: Path, left: Callable[[], float]) -> None:
    """The CUDA-only tests and every fit + resume, concurrently (WORKERS processes share the GPU and the CPU
    cores), each cut off at the deadline. A job that never started is reported as not run."""
    reserve = 10.0  # seconds kept for the report
    nodeids: list[str] = []
    timed(report, "cuda_tests", "collect", lambda: collect_check(nodeids))  # before the threads: pytest prints

    def job(stage: str, name: str, fn: Callable[[Callable[[], float]], tuple[bool, str, dict]]) -> Callable:
        def run() -> None:
            if left() < reserve + 20:
                report.add(Check(stage, name, False, detail="not run: out of time"))
                return
            timed(report, stage, name, lambda: fn(lambda: left() - reserve))
        return run

    jobs = [job("cuda_tests", "run", lambda lf: run_cuda_tests(nodeids, work, lf()))] if nodeids else []
    jobs += [job("fit", f"{c} x {s}", lambda lf, c=c, s=s: fit_and_resume(c, s, work / "data", work / "weights",
                                                                          work / "runs", lf))
             for c, s in fit_plan(quick)]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for future in [pool.submit(j) for j in jobs]:
            future.result()


def print_table(report: Report) -> None:
    """The short table: one line per check, then the throughput and memory figures."""
    print(f"\n{'stage':<11} {'check':<44} {'':4} {'s':>6}  detail")
    for c in report.checks:
        print(f"{c.stage:<11} {c.name[:44]:<44} {'ok' if c.ok else 'FAIL':4} {c.seconds:>6.1f}  {c.detail[:90]}")
    rows = [c.data for c in report.checks if c.stage == "throughput" and "samples_per_s_ours" in c.data]
    if rows:
        print(f"\n{'encoder (base, 8x224, batch 8, bf16)':<36} {'ours/s':>7} {'peer/s':>7} {'ratio':>6} "
              f"{'MFU ours':>8} {'MFU peer':>8} {'peak MiB ours/peer':>19}")
        for r in rows:
            pct = lambda v: f"{v:.1%}" if isinstance(v, float) else "n/a"  # noqa: E731
            print(f"{r['pair'][:36]:<36} {r['samples_per_s_ours']:>7.1f} {r.get('samples_per_s_peer', 0):>7.1f} "
                  f"{r.get('ratio_ours_over_peer', 0):>6.2f} {pct(r.get('mfu_ours')):>8} {pct(r.get('mfu_peer')):>8} "
                  f"{r['peak_cuda_MiB_ours']:>9.0f}/{r.get('peak_cuda_MiB_peer', 0):<9.0f}")
    print(f"\n{'PASSED' if report.ok else 'FAILED'}: {sum(c.ok for c in report.checks)}/{len(report.checks)} checks "
          f"in {time.monotonic() - report.start:.0f} s; JSON: {report.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU: parse, collect and build on meta; run nothing")
    p.add_argument("--quick", action="store_true", help="about 4 minutes: one fit per config and strategy")
    p.add_argument("--budget", type=float, default=None, help="seconds (default: 480, or 240 with --quick)")
    p.add_argument("--measure-share", type=float, default=0.4,
                   help="share of the budget for throughput and memory; the rest runs tests and fits")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: bench_results/gpu_check[_dry].json)")
    args = p.parse_args(argv)
    budget = args.budget or (240.0 if args.quick else 480.0)
    out = args.out or ROOT / "bench_results" / ("gpu_check_dry.json" if args.dry_run else "gpu_check.json")
    report = Report(out, "dry-run" if args.dry_run else "quick" if args.quick else "full", budget)
    if args.dry_run:
        dry_run(report)
    else:
        gpu_run(report, args, time.monotonic() + budget)
    report.write()
    print_table(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
