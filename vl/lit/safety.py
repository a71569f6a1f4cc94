"""Training safety: a non-finite loss skips its step and is counted; too many in a row stop the run."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Raised after `max_consecutive` optimiser steps in a row had a NaN or infinite loss."""


class NonFiniteGuard:
    """Decides whether a step's loss may be back-propagated, identically on every rank.

    `check` returns False for a NaN/inf loss (the caller returns None from `training_step`, which makes
    Lightning skip backward and the optimiser step). Under DDP the decision is all-reduced, so either
    every rank skips or none does and no rank waits forever in an all-reduce.
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def check(self, loss: Tensor, parts: dict[str, Tensor], trainer: Optional[object] = None) -> bool:
        finite = bool(torch.isfinite(loss).all())
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(trainer, "world_size", 1) > 1:
            finite = strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        bad = sorted(k for k, v in parts.items() if k.endswith("_loss") and not bool(torch.isfinite(v).all()))
        step = getattr(trainer, "global_step", "?")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss (last at step {step}; "
                f"non-finite terms: {', '.join(bad) or 'on another rank'}). Stopping so the run is not "
                "silently wasted: lower optim.lr, set trainer.gradient_clip_val, or use bf16 instead of "
                "fp16, then resume with --ckpt_path last."
            )
        rank_zero_warn(
            f"non-finite loss at step {step} ({', '.join(bad) or 'on another rank'}): step skipped "
            f"({self.consecutive}/{self.max_consecutive} in a row, {self.total} in total)"
        )
        return False

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
