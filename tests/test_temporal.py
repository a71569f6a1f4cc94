"""Temporal modelling pays: on clips whose captions differ only in the direction of motion, a video encoder
that models time (``vit_st`` with ``temporal: divided``) retrieves the right caption far more often than
the per-frame baseline (``temporal: none``), after the same contrastive pretraining.

Data: ``vl data synth --task motion`` (8 frames of 32 px): one shape of random colour and kind moves right,
left, up or down over a random background; every caption says only which way ("an object moves to the
right", "... upwards", with paraphrases). A clip and its reversal in time carry opposite captions, so a
model that cannot order its frames scores at most 50% on the four directions (it can still tell
horizontal from vertical), and ``none``, which sees the frames as an unordered set, is such a model.

Pretraining: ``vl_tiny`` as it comes, vl's from-scratch recipe (README, "Learning time"), on 16x16-pixel
patches: ``vit_st`` on single frames (a 2x2 grid per frame; tubelet 1, so no token spans two frames) with
sin-cos-initialised position tables, multi-positive VTC (with four directions a batch of 32 holds each caption
~8 times: open_clip's loss would push clips with the same caption apart), a from-scratch text encoder pooled
by the mean of its tokens (the CLS token of a randomly initialised BERT is nearly the same for every caption,
so neither tower could start learning), and AdamW with PyTorch's betas and eps (0.999, 1e-8): at the start
every clip's embedding is alike, the gradients are tiny, and with BERT/CLIP's (0.98, 1e-6) training still sat
at the collapsed start (loss log 32) after 400 steps, where PyTorch's had left it at step ~250. No random
crops: with them direction emerged later (63.5% after 600 steps, with 8x8 patches). Everything but
``temporal`` is the same in both runs.

Metric: video-to-text R@1 over the four direction captions on held-out clips (chance 25%).
Figures are printed; run with ``-s`` to see them (also in BENCHMARKS.md).
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from datapipes.text import Tokenize
from datapipes.synth import DIRECTIONS, SynthConfig, captions_for, write_synth
from vl.lit import PretrainModule, VideoTextDataModule
from vl.lit.optim import OptimConfig
from vl.lit.pretrain import Objectives

pytestmark = pytest.mark.slow

FRAMES, SIZE, STEPS, BATCH = 8, 32, 600, 32
VIDEO = dict(num_frames=FRAMES, img_size=SIZE, patch_size=16)  # vit_st_tiny: 1-frame tubelets, sin-cos tables


@pytest.fixture(scope="module")
def motion_shards(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("motion")
    info = write_synth(str(out), {"train": 800, "val": 200}, SynthConfig(frames=FRAMES, size=SIZE, task="motion", seed=1),
                       maxcount=200, workers=2, progress=False)
    return {k: v["path"] for k, v in info["splits"].items()}


def pretrain_and_score(shards: dict, temporal: str) -> dict[str, float]:
    """Pretrain for STEPS steps; video-to-text R@1 over the four direction captions on the held-out clips."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pl.seed_everything(0, workers=True)
    # vl's from-scratch defaults: mean-pooled bert_tiny, multi-positive VTC, PyTorch's AdamW betas / eps
    module = PretrainModule(model="vl_tiny", video=dict(VIDEO, temporal=temporal), objectives=Objectives(vtc=1.0),
                            optim=OptimConfig(lr=1e-3, warmup_steps=20))
    data = VideoTextDataModule(
        train_shards=shards["train"], val_shards=shards["val"], max_text_len=16, num_frames=FRAMES, frame_size=SIZE,
        train_sampling="uniform", crop_scale=(1.0, 1.0), hflip=0.0, batch_size=BATCH, eval_batch_size=50,
        num_workers=1, batches_per_epoch=STEPS, persistent_workers=False, seed=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding worker + one compute thread on 2 cores; reproducible sums
    try:
        trainer.fit(module, data)
        return direction_recall(module, data)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def direction_recall(module: PretrainModule, data: VideoTextDataModule) -> dict[str, float]:
    model = module.model.eval()
    labels = list(DIRECTIONS)
    captions = [captions_for(label, [("red", "square")], name_objects=False)[0] for label in labels]
    ids, mask = Tokenize(data.tokenizer, max_len=16)(captions)
    text = model.embed_text(model.encode_text(ids, mask)["pooled"])  # (4, E)
    hits = axis = total = 0
    for batch in data.val_dataloader():
        video = model.embed_video(model.encode_video(batch.video)["pooled"])  # (B, E)
        predicted = [labels[i] for i in (video @ text.t()).argmax(dim=1).tolist()]
        truth = [meta["label"] for meta in batch.meta]
        hits += sum(p == t for p, t in zip(predicted, truth))
        horizontal = ("left_to_right", "right_to_left")
        axis += sum((p in horizontal) == (t in horizontal) for p, t in zip(predicted, truth))
        total += len(truth)
    return {"R@1": 100.0 * hits / total, "axis": 100.0 * axis / total, "clips": total}


def test_temporal_modelling_beats_the_per_frame_baseline(motion_shards):
    divided = pretrain_and_score(motion_shards, "divided")
    none = pretrain_and_score(motion_shards, "none")
    print(f"\ndirection of motion, {divided['clips']} held-out clips, video-to-text R@1 over the 4 direction "
          f"captions after {STEPS} steps (chance 25%, ceiling without frame order 50%): "
          f"temporal=divided {divided['R@1']:.1f}% vs temporal=none {none['R@1']:.1f}% "
          f"(right axis, horizontal or vertical: {divided['axis']:.1f}% vs {none['axis']:.1f}%)")
    assert divided["R@1"] >= 60.0  # well past the 50% that frame-order-blind models can reach
    assert divided["R@1"] >= none["R@1"] + 20.0
