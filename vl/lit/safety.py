"""Training safety: a step whose loss or gradients are not finite is skipped and counted, too many in a row
stop the run, and a checkpoint is never written from a non-finite state."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import time
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from vl.evaluation.retrieval import NonFiniteError


class NonFiniteLossError(RuntimeError):
    """Raised after `max_consecutive` optimiser steps in a row had a NaN or infinite loss (or gradient)."""


class NonFiniteCheckpointError(NonFiniteLossError):
    """Raised instead of writing a checkpoint whose weights, buffers or optimiser state hold NaN or infinity."""


def _named_tensors(tree: Any, prefix: str) -> Iterable[tuple[str, Tensor]]:
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite_indices(tensors: list[Tensor]) -> list[int]:
    """Positions of the ``tensors`` that hold a NaN or infinity; one device synchronisation per device,
    whatever their number. First one fused norm per device (a NaN or infinity anywhere makes the sum of the
    norms non-finite; ~10x cheaper than a flag per tensor, which every training step would pay); only when
    that sum is not finite (or overflowed) is each tensor looked at."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    bad: list[int] = []
    for idx in by_device.values():
        group = [tensors[i].detach() for i in idx]
        if all(t.is_floating_point() for t in group) and bool(torch.stack(torch._foreach_norm(group)).sum().isfinite()):
            continue
        flags = torch.stack([torch.isfinite(t).all() for t in group]).tolist()
        bad += [i for i, ok in zip(idx, flags) if not ok]
    return sorted(bad)


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``tree`` (a tensor, or dicts and lists of them) that hold
    a NaN or infinity."""
    items = [(n, t) for n, t in _named_tensors(tree, prefix) if t.is_floating_point() or t.is_complex()]
    return [items[i][0] for i in nonfinite_indices([t for _, t in items])]


def _checkpoint_step(path: str) -> Optional[int]:
    """The ``global_step`` recorded in a Lightning checkpoint (tensors memory-mapped, not read); None if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    except Exception:  # a half-written or foreign file is simply not a candidate
        return None


def _names(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class NonFiniteGuard:
    """Keeps NaN and infinity out of the weights and out of the checkpoints, identically on every rank.

    Three checks, each all-reduced under DDP (either every rank skips, or raises, or none does, so no rank
    waits forever in a collective):

    - ``check(loss, parts, trainer)`` before backward: False for a NaN/inf loss; the caller returns None
      from ``training_step``, which makes Lightning skip backward and the optimiser step.
    - ``check_gradients(optimizer, trainer, module)`` from ``on_before_optimizer_step``: a finite loss can still
      give a NaN/inf gradient (an overflow in backward); such a step is skipped by dropping every gradient
      (AdamW leaves a parameter without a gradient untouched), so the NaN never reaches the weights. Under
      fp16 the GradScaler already skips such steps and lowers its scale, so this check stands aside.
    - ``check_checkpoint(checkpoint, trainer)`` from ``on_save_checkpoint``: raises
      ``NonFiniteCheckpointError`` instead of writing weights, buffers or optimiser state that hold NaN/inf,
      so the checkpoints already on disk stay the last finite ones.

    ``max_consecutive`` skipped steps in a row (by loss, or by gradients) raise ``NonFiniteLossError``.

    Finite is not healthy: with a huge learning rate and no gradient clipping the weights grow (to ~1e6 at
    lr 1e6) while the loss stays finite, until it overflows; the checkpoints written on the way are finite
    but diverged, and resuming from the newest fails again at once. So the guard records, for every
    checkpoint this run writes, the loss of the forward pass at its step (on exactly its weights). The stop
    message names the newest checkpoint whose loss was finite, with its step and that loss (a loss far above
    the run's usual values says it had already diverged), and the modules apply a changed ``optim.lr`` on
    resume (``retarget_learning_rates``), so "lower the learning rate, then resume from it" works.
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0  # steps in a row skipped for a non-finite loss
        self.consecutive_grad = 0  # steps in a row skipped for a non-finite gradient
        self.total = 0  # steps skipped in all, either way
        self._started = time.time() - 1.0  # checkpoint files older than this belong to earlier runs
        self._saved: dict[int, Optional[float]] = {}  # step of each checkpoint saved -> loss there (None: unseen)

    @staticmethod
    def _agree(finite: bool, trainer: Optional[object]) -> bool:
        """``finite`` on every rank (all-reduced under DDP)."""
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(trainer, "world_size", 1) > 1:
            return bool(strategy.reduce_boolean_decision(finite, all=True))
        return finite

    def check(self, loss: Tensor, parts: dict[str, Tensor], trainer: Optional[object] = None) -> bool:
        """True when ``loss`` is finite on every rank; else counts the skip (``parts``: the step's
        ``{"<name>_loss": ...}`` terms, named in the warning) and raises after ``max_consecutive`` in a row."""
        finite = self._agree(bool(torch.isfinite(loss).all()), trainer)
        step = getattr(trainer, "global_step", "?")
        if step in self._saved:  # a checkpoint holds these weights: remember their loss (NaN once any was)
            seen = self._saved[step]
            value = float(loss.detach().float().mean()) if finite else math.nan
            if seen is None or math.isnan(value):
                self._saved[step] = value
            elif not math.isnan(seen):
                self._saved[step] = max(seen, value)
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        bad = sorted(k for k, v in parts.items() if k.endswith("_loss") and not bool(torch.isfinite(v).all()))
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss (last at step {step}; "
                f"non-finite terms: {', '.join(bad) or 'on another rank'}). Stopping so the run is not "
                f"silently wasted. {self.resume_advice(trainer)}"
            )
        rank_zero_warn(
            f"non-finite loss at step {step} ({', '.join(bad) or 'on another rank'}): step skipped "
            f"({self.consecutive}/{self.max_consecutive} in a row, {self.total} in total)"
        )
        return False

    def check_gradients(self, optimizer: torch.optim.Optimizer, trainer: Optional[object] = None,
                        module: Optional[torch.nn.Module] = None) -> bool:
        """False (and every gradient of ``optimizer`` dropped, so its step changes nothing) when a gradient
        holds a NaN or infinity; the warning names the parameters of ``module`` concerned. True when there is
        nothing to check (a step whose loss was skipped) or under a GradScaler (fp16), which skips by itself."""
        if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
            return True
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return True
        bad = nonfinite_indices([p.grad for p in params])
        if self._agree(not bad, trainer):
            self.consecutive_grad = 0
            return True
        names = {id(p): n for n, p in module.named_parameters()} if module is not None else {}
        bad_names = [names.get(id(params[i]), f"parameter {i}") for i in bad]
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None
        self.consecutive_grad += 1
        self.total += 1
        step = getattr(trainer, "global_step", "?")
        what = f"{_names(bad_names)} of {len(params)} parameters" if bad_names else "on another rank"
        if self.consecutive_grad >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive_grad} consecutive steps had a non-finite gradient from a finite loss (last at "
                f"step {step}: {what}). Stopping so the run is not silently wasted. {self.resume_advice(trainer)}"
            )
        rank_zero_warn(
            f"non-finite gradient at step {step} ({what}): optimiser step skipped, weights unchanged "
            f"({self.consecutive_grad}/{self.max_consecutive} in a row, {self.total} skipped in total)"
        )
        return False

    def check_checkpoint(self, checkpoint: dict, trainer: Optional[object] = None) -> None:
        """Raise ``NonFiniteCheckpointError`` when the weights, buffers or optimiser state about to be written
        hold a NaN or infinity (nothing is written then); else remember the step, to learn its loss."""
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        bad += nonfinite_tensors(checkpoint.get("optimizer_states", []), "optimizer_states")
        step = int(getattr(trainer, "global_step", checkpoint.get("global_step", 0)) or 0)
        if not self._agree(not bad, trainer):
            what = f"{len(bad)} tensors hold NaN or infinity ({_names(bad)})" if bad else \
                "a tensor on another rank holds NaN or infinity"
            raise NonFiniteCheckpointError(
                f"refusing to save a checkpoint at step {step}: {what}. {self.resume_advice(trainer)}")
        self._saved.setdefault(step, None)

    def last_finite_checkpoint(self, trainer: Optional[object]) -> Optional[tuple[str, int, float]]:
        """(path, step, loss) of the newest checkpoint this run wrote whose step's forward pass gave a finite
        loss, among the ``*.ckpt`` files of the trainer's checkpoint folders; None if there is none."""
        finite = {s: v for s, v in self._saved.items() if v is not None and math.isfinite(v)}
        if not finite:
            return None
        folders = {getattr(cb, "dirpath", None) for cb in getattr(trainer, "checkpoint_callbacks", None) or []}
        best: Optional[tuple[int, bool, str]] = None
        for folder in sorted(f for f in folders if f and os.path.isdir(f)):
            for path in glob.glob(os.path.join(folder, "*.ckpt")):
                if os.path.getmtime(path) < self._started:
                    continue
                step = _checkpoint_step(path)
                if step in finite:
                    key = (step, os.path.basename(path) == "last.ckpt", path)
                    best = key if best is None or key > best else best
        return None if best is None else (best[2], best[0], finite[best[0]])

    @contextlib.contextmanager
    def advising(self, trainer: Optional[object]):
        """Re-raise a ``vl.evaluation.retrieval.NonFiniteError`` of an evaluation run inside ``fit`` (validation) with
        ``resume_advice`` appended: the weights being validated have diverged, so name where to go back to."""
        try:
            yield
        except NonFiniteError as err:
            if getattr(getattr(trainer, "state", None), "fn", None) != "fit":
                raise
            raise NonFiniteError(f"{err}. {self.resume_advice(trainer)}") from err

    def resume_advice(self, trainer: Optional[object]) -> str:
        """Which checkpoint to resume from, and what to change first."""
        change = "lower optim.lr, set trainer.gradient_clip_val, or use bf16 instead of fp16"
        found = self.last_finite_checkpoint(trainer)
        if found is None:
            return (f"No checkpoint of this run was saved at a step with a finite loss: {change}, and start "
                    "again.")
        path, step, loss = found
        resume = "last" if os.path.basename(path) == "last.ckpt" else path
        return (f"Last checkpoint saved with a finite loss: {path} (step {step}, loss {loss:.4g}; a loss far "
                f"above the run's usual values means it had already diverged): {change}, then resume with "
                f"--ckpt_path {resume}")

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "consecutive_grad": self.consecutive_grad, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.consecutive_grad = int(state.get("consecutive_grad", 0))
        self.total = int(state.get("total", 0))


def retarget_learning_rates(checkpoint: dict, lr: float, pretrained_lr_scale: float) -> None:
    """Make a resumed run use the learning rates configured now, not those stored in ``checkpoint``.

    Lightning restores the optimiser's param groups and the LR scheduler's ``base_lrs`` from the checkpoint,
    so a run resumed with a lowered ``optim.lr`` (what ``NonFiniteGuard`` advises after a divergence) would
    silently keep the old one and diverge again. Called from ``on_load_checkpoint`` (before those states are
    restored), this rewrites, per param group, the scheduler's base rate to the configured peak rate (``lr``,
    times ``pretrained_lr_scale`` for the ``pretrained_*`` groups of ``vl.lit.optim.param_groups``) and
    scales the group's current rate by the same ratio, keeping the schedule's position. An unchanged
    configuration changes nothing, bit for bit.
    """
    for opt_state, sched in zip(checkpoint.get("optimizer_states") or [], checkpoint.get("lr_schedulers") or []):
        groups, base = opt_state.get("param_groups", []), sched.get("base_lrs")
        if not isinstance(base, list) or len(base) != len(groups):
            continue
        new = [float(lr * (pretrained_lr_scale if str(g.get("name", "")).startswith("pretrained") else 1.0))
               for g in groups]
        if new == base:
            continue
        for g, old, peak in zip(groups, base, new):
            g["lr"] = g["lr"] * (peak / old) if old else peak
            g["initial_lr"] = peak
        sched["base_lrs"] = new
        if "_last_lr" in sched:
            sched["_last_lr"] = [g["lr"] for g in groups]
        rank_zero_info(f"learning rates changed since the checkpoint: peak {base} -> {new} (per param group)")
