"""AdamW with parameter groups and a warmup + cosine schedule, shared by pretraining and fine-tuning."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Optimiser and schedule settings (AdamW, linear warmup, cosine decay)."""

    lr: float = 1e-4  # peak learning rate of parts trained from scratch
    pretrained_lr_scale: float = 0.1  # pretrained parts (e.g. a loaded text encoder) get lr * this
    weight_decay: float = 0.05  # not applied to norms, biases, embeddings, logit scale
    # AdamW's betas and eps; None (unset): the training module's ``adam_defaults``. Pretraining takes
    # PyTorch's (0.9, 0.999) / 1e-8 (``FROM_SCRATCH_ADAM``): from scratch every embedding starts alike and the
    # first gradients are tiny, and BERT/CLIP's 0.98 / 1e-6 damp those steps until nothing moves (README,
    # "Learning time"); the pretraining configs that start from BERT/CLIP/VideoMAE weights set 0.98 / 1e-6.
    # The fine-tuning tasks and the VQ tokenizer take BERT/CLIP's (``PRETRAINED_START_ADAM``), which their
    # quality fixtures were measured with (PyTorch's scored lower there: BENCHMARKS.md, "Fine-tuning quality").
    betas: Optional[tuple[float, float]] = None
    eps: Optional[float] = None
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.01  # cosine decays to lr * this at the last step
    fused: bool = False  # torch's fused AdamW kernel (CUDA and CPU)

    def __post_init__(self) -> None:
        """Reject impossible settings when the config is read, naming the key as a config writes it."""
        checks = {
            "lr": self.lr > 0, "pretrained_lr_scale": self.pretrained_lr_scale >= 0,
            "weight_decay": self.weight_decay >= 0, "eps": self.eps is None or self.eps > 0,
            "warmup_steps": self.warmup_steps >= 0, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "betas": self.betas is None or (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
        }
        bounds = {"lr": "> 0", "eps": "> 0", "min_lr_ratio": "in [0, 1]", "betas": "two numbers, each in [0, 1)"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"model.init_args.optim.{name} must be {bounds.get(name, '>= 0')}, "
                                 f"got {getattr(self, name)!r}")


# AdamW (betas, eps) of a run that starts from scratch (PyTorch's) and from pretrained weights (BERT's and
# CLIP's); see ``OptimConfig.betas``
FROM_SCRATCH_ADAM: tuple[tuple[float, float], float] = ((0.9, 0.999), 1e-8)
PRETRAINED_START_ADAM: tuple[tuple[float, float], float] = ((0.9, 0.98), 1e-6)


def adam_settings(cfg: OptimConfig, defaults: tuple[tuple[float, float], float]) -> tuple[tuple[float, float], float]:
    """The (betas, eps) AdamW gets: the config's, each unset one from ``defaults``."""
    betas = defaults[0] if cfg.betas is None else (float(cfg.betas[0]), float(cfg.betas[1]))
    return betas, defaults[1] if cfg.eps is None else float(cfg.eps)


def _no_decay(name: str, param: nn.Parameter, explicit: set[str]) -> bool:
    """Norm weights, biases, embeddings and scalars take no weight decay."""
    if param.ndim <= 1 or name in explicit:
        return True
    return any(part in explicit for part in _prefixes(name))


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def param_groups(
    model: nn.Module,
    cfg: OptimConfig,
    no_weight_decay: set[str] = frozenset(),
    pretrained: set[str] = frozenset(),
) -> list[dict]:
    """Split trainable parameters into (decay | no decay) x (new | pretrained) groups.

    Returns torch optimiser groups, each with its own `lr` and `weight_decay`; empty groups dropped.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (_no_decay(name, param, set(no_weight_decay)), name in pretrained)
        groups.setdefault(key, []).append(param)
    out = []
    for (no_decay, is_pretrained), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "lr": cfg.lr * (cfg.pretrained_lr_scale if is_pretrained else 1.0),
                "name": f"{'pretrained' if is_pretrained else 'new'}_{'no_decay' if no_decay else 'decay'}",
            }
        )
    return out


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """A LambdaLR factor: linear 0 -> 1 over warmup, then cosine 1 -> min_ratio at total_steps, held there.

    Not transformers' ``get_cosine_with_min_lr_schedule_with_warmup``, whose factor is 0 at step 0 (the
    first optimiser step does nothing: the whole warmup when ``warmup_steps`` is 1) and whose cosine rises
    again past ``num_training_steps`` (a run that outlives its estimated length, or resumes with a larger
    ``max_steps``, would climb back to the peak rate instead of staying at the floor)."""
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int, no_weight_decay=frozenset(), pretrained=frozenset(),
    adam_defaults: Optional[tuple[tuple[float, float], float]] = None,
) -> dict:
    """The `configure_optimizers` return value: AdamW + per-step LambdaLR. ``adam_defaults``: the (betas, eps)
    of an ``OptimConfig`` that leaves them unset (default ``PRETRAINED_START_ADAM``)."""
    groups = param_groups(model, cfg, set(no_weight_decay), set(pretrained))
    betas, eps = adam_settings(cfg, adam_defaults or PRETRAINED_START_ADAM)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=eps, fused=cfg.fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
