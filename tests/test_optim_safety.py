"""Parameter groups, the warmup + cosine schedule, and the non-finite loss guard."""

import math

import pytest
import torch
from torch import nn

from vl.lit.optim import (FROM_SCRATCH_ADAM, PRETRAINED_START_ADAM, OptimConfig, build_optimizer, param_groups,
                          warmup_cosine)
from vl.lit.safety import NonFiniteGuard, NonFiniteLossError, nonfinite_indices


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.text = nn.Linear(4, 4)  # plays a pretrained part


def test_param_groups_decay_and_pretrained_lr():
    model = Toy()
    cfg = OptimConfig(lr=1.0, pretrained_lr_scale=0.1, weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(model, cfg, {"embed"}, {"text.weight", "text.bias"})}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.proj.weight) in ids["new_decay"]
    assert id(model.embed.weight) in ids["new_no_decay"]  # named in no_weight_decay
    assert {id(model.norm.weight), id(model.proj.bias)} <= ids["new_no_decay"]
    assert id(model.text.weight) in ids["pretrained_decay"] and id(model.text.bias) in ids["pretrained_no_decay"]
    assert groups["pretrained_decay"]["lr"] == pytest.approx(0.1)
    assert groups["new_no_decay"]["weight_decay"] == 0.0 and groups["new_decay"]["weight_decay"] == 0.05
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_warmup_cosine_shape():
    f = warmup_cosine(10, 110, 0.01)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_build_optimizer_steps():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=0.5, warmup_steps=2), total_steps=10)
    sched = opt["lr_scheduler"]["scheduler"]
    assert opt["optimizer"].param_groups[0]["lr"] == pytest.approx(0.25)  # warmup step 0 -> lr/2
    opt["optimizer"].step(); sched.step()
    assert max(g["lr"] for g in opt["optimizer"].param_groups) == pytest.approx(0.5)


def test_adam_betas_and_eps_default_by_kind_of_run():
    """Unset betas / eps take the module's defaults: PyTorch's for pretraining (mostly from scratch), BERT/CLIP's
    for the fine-tuning tasks; a config's own values win; a wrong length is refused when the config is read."""
    from vl.lit import PretrainModule
    from vl.tasks import CaptioningModule, MultipleChoiceModule, QAModule, RetrievalModule

    model = nn.Linear(2, 2)
    for defaults, want in ((None, ((0.9, 0.98), 1e-6)), (FROM_SCRATCH_ADAM, ((0.9, 0.999), 1e-8))):
        opt = build_optimizer(model, OptimConfig(), total_steps=10, adam_defaults=defaults)["optimizer"]
        assert (opt.defaults["betas"], opt.defaults["eps"]) == want
    opt = build_optimizer(model, OptimConfig(betas=(0.8, 0.9), eps=1e-7), 10, adam_defaults=FROM_SCRATCH_ADAM)
    assert (opt["optimizer"].defaults["betas"], opt["optimizer"].defaults["eps"]) == ((0.8, 0.9), 1e-7)
    assert PretrainModule.adam_defaults == FROM_SCRATCH_ADAM
    for task in (RetrievalModule, CaptioningModule, QAModule, MultipleChoiceModule):
        assert task.adam_defaults == PRETRAINED_START_ADAM
    with pytest.raises(ValueError, match="optim.betas must be two numbers"):
        OptimConfig(betas=(0.9,))


def test_nonfinite_indices_names_each_bad_tensor_of_any_dtype():
    """The fused-norm shortcut misses nothing: NaN and infinity are found in any dtype; finite tensors whose
    norms overflow (3e38 twice) are looked at one by one and pass; empty and integer tensors are fine."""
    finite = [torch.ones(3), torch.ones(2, dtype=torch.bfloat16), torch.full((2,), 3e38), torch.zeros(0),
              torch.arange(3)]
    assert nonfinite_indices(finite) == []
    bad = [torch.tensor([1.0, math.nan]), torch.tensor([1.0, math.inf], dtype=torch.float16),
           torch.tensor([-math.inf], dtype=torch.bfloat16)]
    assert nonfinite_indices(finite[:2] + bad + finite[2:]) == [2, 3, 4]


def test_guard_skips_then_stops():
    guard = NonFiniteGuard(max_consecutive=3)
    ok = torch.tensor(1.0)
    bad = torch.tensor(float("nan"))
    assert guard.check(ok, {"vtc_loss": ok})
    assert not guard.check(bad, {"vtc_loss": bad, "mlm_loss": ok})
    assert not guard.check(bad, {"vtc_loss": bad})
    assert guard.check(ok, {"vtc_loss": ok})  # a good step resets the streak
    assert guard.total == 2 and guard.consecutive == 0
    guard.check(bad, {"vtc_loss": bad})
    guard.check(torch.tensor(float("inf")), {"vtc_loss": bad})
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*vtc_loss"):
        guard.check(bad, {"vtc_loss": bad})
    state = guard.state_dict()
    other = NonFiniteGuard(3)
    other.load_state_dict(state)
    assert other.total == guard.total == 5


# ---------------------------------------------------------------- no poisoned state reaches the weights or a checkpoint

NAN = float("nan")


def tiny_batches(n: int) -> list:
    from datapipes.batch import Batch

    g = torch.Generator().manual_seed(0)
    return [Batch(video=torch.randn(4, 4, 3, 32, 32, generator=g), text_ids=torch.randint(1000, 3000, (4, 8), generator=g),
                  text_mask=torch.ones(4, 8, dtype=torch.long), keys=[f"{i}" for i in range(4)]) for _ in range(n)]


def tiny_fit(module, root, steps: int, ckpt_path=None, **trainer_kw):
    """Fit `module` for `steps` optimiser steps on fixed batches, saving a checkpoint (and last.ckpt) after
    every step into root/ckpts as step=N.ckpt; returns the trainer."""
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    saver = ModelCheckpoint(dirpath=str(root / "ckpts"), filename="{step}", every_n_train_steps=1, save_top_k=-1,
                            save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[saver],
                         default_root_dir=str(root), **trainer_kw)
    trainer.fit(module, train_dataloaders=DataLoader(tiny_batches(steps), batch_size=None), ckpt_path=ckpt_path,
                weights_only=False)  # our own checkpoint: it holds the OptimConfig dataclass
    return trainer


def all_finite(path) -> bool:
    ckpt = torch.load(path, weights_only=False)
    from vl.lit.safety import nonfinite_tensors

    return not nonfinite_tensors(ckpt["state_dict"]) and not nonfinite_tensors(ckpt["optimizer_states"])


def test_nan_gradient_from_a_finite_loss_never_reaches_the_weights(tmp_path):
    """A finite loss whose backward overflows (here: a hook turns logit_scale's gradient to NaN at steps 1
    and 2) skips those optimiser steps; the weights and every checkpoint stay finite."""
    from vl.lit import PretrainModule

    torch.manual_seed(0)
    module = PretrainModule(model="vl_tiny", optim=OptimConfig(lr=1e-3, warmup_steps=1), max_consecutive_nonfinite=3)
    module.model.logit_scale.register_hook(lambda g: g * NAN if module.trainer.global_step in (1, 2) else g)
    with pytest.warns(UserWarning, match="non-finite gradient at step 1 .*logit_scale"):
        trainer = tiny_fit(module, tmp_path, steps=5)
    assert trainer.global_step == 5 and module.guard.total == 2 and module.guard.consecutive_grad == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    saved = sorted((tmp_path / "ckpts").glob("*.ckpt"))
    assert len(saved) == 6 and all(all_finite(p) for p in saved)


def test_guard_stops_naming_the_last_checkpoint_with_a_finite_loss(tmp_path):
    """The loss turns NaN from step 3 on: the run stops after 2 skipped steps and names step=2.ckpt, whose
    weights gave a finite loss (step=3.ckpt and last.ckpt hold the weights that gave the NaN)."""
    from vl.lit import PretrainModule

    torch.manual_seed(0)
    module = PretrainModule(model="vl_tiny", optim=OptimConfig(lr=1e-3, warmup_steps=1), max_consecutive_nonfinite=2)
    compute = module.compute_losses

    def diverging(batch):
        out = compute(batch)
        return {k: v * NAN for k, v in out.items()} if module.trainer.global_step >= 3 else out

    module.compute_losses = diverging
    with pytest.warns(UserWarning, match="non-finite loss"), pytest.raises(NonFiniteLossError) as err:
        tiny_fit(module, tmp_path, steps=8)
    message = str(err.value)
    assert "\n" not in message
    assert f"Last checkpoint saved with a finite loss: {tmp_path / 'ckpts' / 'step=2.ckpt'} (step 2, loss" in message
    assert message.endswith(f"--ckpt_path {tmp_path / 'ckpts' / 'step=2.ckpt'}")


def test_a_checkpoint_of_nan_weights_is_refused(tmp_path):
    """Saving a state whose weights hold NaN raises and writes nothing: the checkpoints on disk stay finite."""
    from vl.lit import PretrainModule
    from vl.lit.safety import NonFiniteCheckpointError

    torch.manual_seed(0)
    module = PretrainModule(model="vl_tiny", optim=OptimConfig(lr=1e-3, warmup_steps=1))
    trainer = tiny_fit(module, tmp_path, steps=1)
    with torch.no_grad():
        module.model.text_proj.weight[0, 0] = NAN
    target = tmp_path / "poisoned.ckpt"
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to save a checkpoint at step 1: 1 tensors hold NaN "
                                                       r"or infinity \(model\.text_proj\.weight\)"):
        trainer.save_checkpoint(target)
    assert not target.exists() and all_finite(tmp_path / "ckpts" / "last.ckpt")


def test_resume_with_a_lower_lr_uses_it(tmp_path):
    """The guard's advice (lower optim.lr, then resume) works: the resumed optimiser runs at the new rate,
    not the one stored in the checkpoint, at the same point of the schedule."""
    from vl.lit import PretrainModule

    torch.manual_seed(0)
    fast = PretrainModule(model="vl_tiny", optim=OptimConfig(lr=1e-2, warmup_steps=4))
    tiny_fit(fast, tmp_path / "a", steps=2)
    slow = PretrainModule(model="vl_tiny", optim=OptimConfig(lr=1e-5, warmup_steps=4))
    trainer = tiny_fit(slow, tmp_path / "b", steps=3, ckpt_path=str(tmp_path / "a" / "ckpts" / "step=2.ckpt"))
    opt, sched = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
    assert sched.base_lrs == [pytest.approx(1e-5)] * len(opt.param_groups)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 * 4 / 4)  # warmup step 3 of 4 -> full rate
    assert all(torch.isfinite(p).all() for p in slow.parameters())
