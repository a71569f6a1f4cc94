"""Fine-tuning plumbing shared by the task modules of ``vl.tasks``.

``FinetuneModule`` builds the backbone (a preset, or the model of a pretrained ``vl fit`` checkpoint given
as ``init_from``) with exactly the heads its task uses, freezes the parts the task never runs (so every
trainable parameter gets a gradient and DDP needs no unused-parameter search), and owns what every task
shares: the training step with its non-finite guard, the optimiser, checkpoint hooks that record the
model config (``vl.lit.checkpoint.load_checkpoint`` reads it) and the evaluation report (logged metrics,
a printed summary, and on test the metrics JSON and predictions JSONL of ``write_eval_outputs``).

A task subclass passes the ``heads`` it uses, defines ``compute_losses(batch) -> {"<name>_loss": ..., metrics}`` and
its evaluation hooks. No architecture lives here: heads are ``nn.Module``s in the task files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from datapipes.batch import Batch
from vl.lit.checkpoint import load_checkpoint, preprocess_from_datamodule
from vl.lit.evaluation import gather_objects, write_eval_outputs
from vl.lit.optim import OptimConfig, build_optimizer
from vl.lit.safety import NonFiniteGuard, retarget_learning_rates
from vl.metrics import NonFiniteError, nonfinite_message
from vl.models import VideoLanguageModel, create_model

VTC_PARAMETERS = ("video_proj.", "text_proj.", "logit_scale")  # prefixes of the VTC projections and temperature


def with_heads(model: VideoLanguageModel, heads: tuple[str, ...]) -> VideoLanguageModel:
    """``model`` rebuilt with exactly ``heads`` (``vtm``, ``mlm``), every shared weight copied over.

    Returns ``model`` itself when it already has those heads. New heads start from their initialisation;
    dropped heads are discarded.
    """
    config = model.config
    if sorted(config["heads"]) == sorted(heads):
        return model
    rebuilt = create_model(**{**config, "heads": list(heads)})
    missing, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
    head_prefixes = tuple(f"{h}_head." for h in ("vtm", "mlm"))
    stray = [k for k in (*missing, *unexpected) if not k.startswith(head_prefixes)]
    if stray:
        raise ValueError(f"rebuilding the model with heads {list(heads)} lost weights: {stray[:5]}")
    return rebuilt.train(model.training)


def build_backbone(name: str, overrides: dict[str, Any], init_from: Optional[str],
                   heads: tuple[str, ...]) -> VideoLanguageModel:
    """The preset ``name`` with ``overrides`` (trained from scratch), or the model of the checkpoint
    ``init_from`` (its architecture is the checkpoint's, so no overrides are accepted), with ``heads``."""
    if init_from is None:
        return create_model(name, heads=list(heads), **overrides)
    if overrides:
        raise ValueError(
            f"init_from={init_from!r} takes the architecture from the checkpoint; drop the overrides "
            f"{sorted(overrides)} (set the data's num_frames/frame_size to the checkpoint's instead)")
    return with_heads(load_checkpoint(init_from).model.train(), heads)


def backbone_overrides(video: Optional[dict], text: Optional[dict], fusion: Optional[dict],
                       embed_dim: Optional[int]) -> dict[str, Any]:
    """The non-empty part overrides, as ``create_model`` takes them."""
    out: dict[str, Any] = {k: v for k, v in dict(video=video, text=text, fusion=fusion).items() if v}
    if embed_dim is not None:
        out["embed_dim"] = embed_dim
    return out


def require_finite_outputs(split: str, outputs: list[dict], what: str) -> None:
    """Raise ``NonFiniteError`` when an ``eval_step`` output was flagged ``"finite": False`` (its scores held a
    NaN or infinity, e.g. a model with NaN weights, whose argmax would be an arbitrary answer), counting them;
    removes the flag from every output. Run on the gathered outputs, so every DDP rank raises together."""
    flags = [o.pop("finite", True) for o in outputs]
    bad = flags.count(False)
    if bad:
        raise NonFiniteError(f"{split}: " + nonfinite_message(what, bad, len(flags), "items"))


def loggable(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats (a None metric, e.g. METEOR without Java, is left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class FinetuneModule(pl.LightningModule):
    """Base of the task LightningModules: backbone, training step, optimiser, checkpoints, reports.

    Args:
        model: preset name (``vl.list_models()``), trained from scratch; ignored with ``init_from``.
        video, text, fusion, embed_dim: overrides of the preset's parts (not with ``init_from``).
        init_from: a ``vl fit`` checkpoint (pretraining or another fine-tuning) whose model to start from.
        optim: AdamW + warmup/cosine settings.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.
        grad_checkpointing: recompute activations in backward to save memory.
        heads: the model heads the task uses (``vtm``, ``mlm``); set by the subclass.
        frozen: name prefixes of further backbone parameters the task never trains; set by the subclass.
    """

    uses_vtc: ClassVar[bool] = False  # whether the task uses the VTC projections and temperature
    compute_losses: Callable[[Batch], dict[str, Tensor]]  # defined by each task

    def __init__(self, model: str, video: Optional[dict], text: Optional[dict], fusion: Optional[dict],
                 embed_dim: Optional[int], init_from: Optional[str], optim: OptimConfig,
                 max_consecutive_nonfinite: int, grad_checkpointing: bool, heads: tuple[str, ...],
                 frozen: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._frozen = tuple(frozen)
        overrides = backbone_overrides(video, text, fusion, embed_dim)
        self._set_backbone(build_backbone(model, overrides, init_from, heads))
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)  # a dict from a checkpoint
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)

    def save_task_hyperparameters(self, frame: Any, evaluation: tuple[str, ...] = ()) -> None:
        """``save_hyperparameters`` of the subclass ``__init__`` running in ``frame``.

        ``optim`` is kept as a plain dict, so checkpoints hold only primitive types and load under torch's
        ``weights_only=True``. ``init_from`` and the ``evaluation`` options (those that change only how a
        model is evaluated, e.g. the beam size) are left out: ``vl test --ckpt_path`` restores a checkpoint's
        hyper-parameters over its command line (LightningCLI does), and these must come from the command
        line; the checkpoint itself holds the model. They become plain attributes (``self.beam_size``)."""
        self.save_hyperparameters(ignore=["optim", "init_from", *evaluation], frame=frame)
        for name in evaluation:
            setattr(self, name, frame.f_locals[name])
        self.hparams["optim"] = dataclasses.asdict(self.optim)

    # ---- backbone ---------------------------------------------------------------------------------

    def unused_parameters(self, model: VideoLanguageModel) -> set[str]:
        """Names of the backbone's parameters this task never trains (frozen); subclasses extend it."""
        prefixes = self._frozen + (() if self.uses_vtc else VTC_PARAMETERS)
        return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}

    def _set_backbone(self, model: VideoLanguageModel) -> None:
        """Install ``model`` as ``self.model`` with the parameters this task does not use frozen."""
        unused = self.unused_parameters(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name not in unused)
        self.model = model

    # ---- training ---------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        """Weight of each ``<name>_loss`` in the total (1.0 when not listed)."""
        return {}

    def training_step(self, batch: Batch, batch_idx: int) -> Optional[Tensor]:
        out = self.compute_losses(batch)
        weights = self.loss_weights()
        loss = sum(weights.get(k[: -len("_loss")], 1.0) * v for k, v in out.items() if k.endswith("_loss"))
        if not self.guard.check(loss, out, self.trainer):
            self.log("train/nonfinite_steps", float(self.guard.total), batch_size=batch.batch_size)
            return None  # skip this optimiser step (all ranks agree, see NonFiniteGuard)
        logs = {f"train/{k}": v.detach() for k, v in out.items()}
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, batch_size=batch.batch_size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch.batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradients are not finite (``NonFiniteGuard.check_gradients``): every gradient is
        dropped, so a NaN from backward never reaches the weights."""
        if not self.guard.check_gradients(optimizer, self.trainer, self):
            self.log("train/nonfinite_steps", float(self.guard.total))

    def configure_optimizers(self) -> dict:
        return build_optimizer(
            self, self.optim, total_steps=int(self.trainer.estimated_stepping_batches),
            no_weight_decay={f"model.{n}" for n in self.model.no_weight_decay()},
            pretrained={f"model.{n}" for n in self.model.pretrained_parameter_names()},
        )

    # ---- evaluation -------------------------------------------------------------------------------
    # Each task defines ``eval_step(batch, split)``, which collects what it needs per batch, and
    # ``finish_eval(split)``, which turns the whole (gathered) split into metrics, predictions and a
    # summary (``report``); validation and test share both.

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        with self.guard.advising(self.trainer):  # a NonFiniteError during fit names the checkpoint to go back to
            self.finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self.finish_eval("test")

    def take_outputs(self) -> list[dict]:
        """The per-item outputs ``eval_step`` appended to ``self._outputs``, gathered from every rank (in
        rank order), and cleared for the next epoch."""
        outputs, self._outputs = gather_objects(self._outputs), []
        return outputs

    def report(self, split: str, metrics: dict[str, Any], predictions: list[dict], summary: str) -> None:
        """Log ``metrics`` as ``<split>/<name>``, print ``summary`` and, on test, write the metrics JSON
        and predictions JSONL. Every rank holds the same (gathered) metrics and logs them."""
        self.log_dict({f"{split}/{k}": v for k, v in loggable(metrics).items()}, batch_size=1)
        if self.trainer.sanity_checking:
            return
        rank_zero_info(summary)
        if split == "test":
            write_eval_outputs(self.trainer, split, metrics, predictions)

    # ---- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuses (``NonFiniteCheckpointError``) to write NaN/inf weights or optimiser state; records the
        model config, preprocessing and the guard's counters."""
        self.guard.check_checkpoint(checkpoint, self.trainer)
        checkpoint["vl_model_config"] = self.model.config
        checkpoint["vl_preprocess"] = preprocess_from_datamodule(getattr(self.trainer, "datamodule", None))
        checkpoint["vl_nonfinite"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuild the backbone when the checkpoint's differs from the configured one (e.g. ``vl test``
        without ``init_from``), before Lightning loads the weights into it; restore the guard's counters; a
        resumed run takes the configured learning rate (``retarget_learning_rates``)."""
        retarget_learning_rates(checkpoint, self.optim.lr, self.optim.pretrained_lr_scale)
        config = checkpoint.get("vl_model_config")
        if config is not None and config != self.model.config:
            model = create_model(**config)
            if self.grad_checkpointing:
                model.set_grad_checkpointing(True)
            self._set_backbone(model)
        if "vl_nonfinite" in checkpoint:
            self.guard.load_state_dict(checkpoint["vl_nonfinite"])
