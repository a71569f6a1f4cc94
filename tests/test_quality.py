"""Quality: the tiny model learns on synthetic clips, measured on held-out clips. Prints the figures it gets."""

import lightning.pytorch as pl
import pytest
import torch

from datapipes.synth import SynthConfig, write_synth
from vl.lit import PretrainModule, VideoTextDataModule
from vl.lit.optim import OptimConfig

pytestmark = pytest.mark.slow


def synth(tmp_path_factory, name: str, task: str, train: int, val: int) -> dict:
    out = tmp_path_factory.mktemp(name)
    info = write_synth(str(out), {"train": train, "val": val}, SynthConfig(frames=8, size=32, fps=8, task=task, seed=1),
                       maxcount=200, workers=2, progress=False)
    return {k: v["path"] for k, v in info["splits"].items()}


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory) -> dict:
    return synth(tmp_path_factory, "quality_all", "all", train=800, val=100)


def train_and_evaluate(shards: dict, temporal: str, steps: int, seed: int = 0) -> dict[str, float]:
    """Pretrain vl_tiny with VTC for `steps` steps; text-to-video metrics on the held-out split."""
    pl.seed_everything(seed, workers=True)
    module = PretrainModule(
        model="vl_tiny", video=dict(num_frames=8, img_size=32, temporal=temporal),
        optim=OptimConfig(lr=1e-3, warmup_steps=20),
    )
    data = VideoTextDataModule(
        train_shards=shards["train"], val_shards=shards["val"], max_text_len=16, num_frames=8, frame_size=32,
        crop_scale=(0.8, 1.0), batch_size=32, eval_batch_size=50, num_workers=1, batches_per_epoch=steps,
        persistent_workers=False, seed=seed,
    )
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         gradient_clip_val=1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding worker + one compute thread on 2 cores (see vl.lit.CPUThreads)
    try:
        trainer.fit(module, data)
        metrics = trainer.validate(module, data, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)
    return {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/t2v")}


def test_tiny_model_beats_chance_5x(mixed_shards):
    m = train_and_evaluate(mixed_shards, temporal="divided", steps=150)
    print(f"\nheld-out t2v R@1 {m['t2v_R@1']:.2f}% (chance {m['t2v_chance_R@1']:.2f}%), "
          f"R@5 {m['t2v_R@5']:.2f}% (chance {m['t2v_chance_R@5']:.2f}%)")
    assert m["t2v_R@1"] >= 5 * m["t2v_chance_R@1"]
    assert m["t2v_R@5"] >= 3 * m["t2v_chance_R@5"]
