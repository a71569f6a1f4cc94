"""Each speed switch (a config field) trains the tiny model a few steps on CPU with a loss close to the
run without it. Switches that need CUDA skip, saying why."""

import shutil

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from datapipes.batch import Batch
from vl.lit import Objectives, PretrainModule
from vl.lit.optim import OptimConfig

STEPS = 6


def fixed_batches(n: int = 2, batch: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [
        Batch(video=torch.randn(batch, 4, 3, 32, 32, generator=g),
              text_ids=torch.randint(1000, 3000, (batch, 12), generator=g),
              text_mask=torch.ones(batch, 12, dtype=torch.long), keys=[f"{i}" for i in range(batch)])
        for _ in range(n)
    ]


def split(batches: list[Batch]) -> list[Batch]:
    """Each batch as two halves, for gradient accumulation over the same samples."""
    out = []
    for b in batches:
        h = b.batch_size // 2
        for sl in (slice(0, h), slice(h, None)):
            out.append(Batch(video=b.video[sl], text_ids=b.text_ids[sl], text_mask=b.text_mask[sl], keys=b.keys[sl]))
    return out


def final_loss(batches: list[Batch], precision: str = "32-true", accumulate: int = 1, **module_kw) -> float:
    """Train vl_tiny (VTC + VTM + MLM) for STEPS optimiser steps; the mean loss of the last step's batches."""
    pl.seed_everything(0)
    module_kw.setdefault("optim", OptimConfig(lr=1e-3, warmup_steps=1))
    module = PretrainModule(model="vl_tiny", objectives=Objectives(vtc=1.0, vtm=1.0, mlm=1.0), **module_kw)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    loader = DataLoader(batches * STEPS, batch_size=None, shuffle=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=STEPS, precision=precision, accumulate_grad_batches=accumulate,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == STEPS
    return sum(losses[-accumulate:])  # Lightning reports each micro-batch loss divided by `accumulate`


@pytest.fixture(scope="module")
def baseline() -> float:
    loss = final_loss(fixed_batches())
    print(f"\nbaseline loss after {STEPS} steps: {loss:.4f}")
    return loss


def check_close(name: str, loss: float, baseline: float, rel: float) -> None:
    print(f"\n{name}: loss {loss:.4f} vs baseline {baseline:.4f} ({100 * (loss / baseline - 1):+.1f}%)")
    assert abs(loss - baseline) <= rel * abs(baseline)


def test_activation_checkpointing(baseline):
    check_close("grad_checkpointing", final_loss(fixed_batches(), grad_checkpointing=True), baseline, 0.02)


def test_fused_adamw(baseline):
    optim = OptimConfig(lr=1e-3, warmup_steps=1, fused=True)
    check_close("fused AdamW", final_loss(fixed_batches(), optim=optim), baseline, 0.02)


def test_bf16_mixed_precision(baseline):
    check_close("bf16-mixed", final_loss(fixed_batches(), precision="bf16-mixed"), baseline, 0.10)


def test_math_attention_kernel(baseline):
    # The reference kernel in place of the fused one PyTorch picks by default: the same loss up to rounding.
    check_close("attention=math", final_loss(fixed_batches(), attention="math"), baseline, 0.02)


def test_unknown_attention_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="attention must be one of auto, flash"):
        PretrainModule(model="vl_tiny", attention="flashy")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the memory-efficient kernel is a GPU kernel")
def test_memory_efficient_attention_kernel_cuda(baseline):
    # Memory-efficient rather than flash: the fusion and text attention carry padding masks, which the
    # flash kernel does not take.
    batches = fixed_batches()
    module = PretrainModule(model="vl_tiny", attention="efficient")
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=2, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches * 2, batch_size=None))
    assert trainer.global_step == 2


def test_gradient_accumulation(baseline):
    # Two half batches per step: VTC sees half as many in-batch negatives, so only close, not equal.
    check_close("accumulate_grad_batches=2", final_loss(split(fixed_batches()), accumulate=2), baseline, 0.25)


@pytest.mark.slow
@pytest.mark.skip(reason="torch.compile of the VTC+VTM+MLM step is unstable on CPU: Inductor's kernel aborts the "
                         "process ('index out of bounds: 0 <= tmp7 < 2' in a generated kernel) or the loss turns NaN, "
                         "depending on process state; a fix is open work, and an abort would take the test worker down")
def test_torch_compile(baseline):
    """Compiled in a fresh interpreter, so that an abort inside a generated kernel fails this test instead of
    killing the pytest worker that runs it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.path[:0] = ['tests', '.']; import test_speed_switches as t; "
            "print(repr(t.final_loss(t.fixed_batches(), compile=True)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    check_close("torch.compile", float(out.stdout.strip().splitlines()[-1]), baseline, 0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: fp16 mixed precision with a grad scaler")
def test_fp16_mixed_precision_cuda(baseline):
    batches = fixed_batches()
    module = PretrainModule(model="vl_tiny")
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=2, precision="16-mixed", logger=False,
                         enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches * 2, batch_size=None))
    assert trainer.global_step == 2
