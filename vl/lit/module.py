"""``VLModule``, the base of every LightningModule of vl (pretraining and each fine-tuning task), and
``BackboneConfig``, the one typed description of the model it trains and of how that model runs.

The base owns everything the modules share, so that a subclass only says what its task computes:

- the backbone: built from a preset with part overrides, or taken from a ``vl fit`` checkpoint
  (``init_from``) with exactly the heads the task uses; the parameters the task never trains are frozen;
- the speed switches (activation checkpointing, ``torch.compile``, the attention kernels), for every task;
- the training step: the weighted sum of every ``*_loss`` entry, the non-finite guard, logging;
- the optimiser, the checkpoint hooks (model config, preprocessing, guard counters) and the evaluation
  report (logged metrics, a printed summary, on test the metrics JSON and predictions JSONL);
- ``predict_step``: rows that ``vl.lit.predict.PredictionWriter`` writes.

The template a subclass fills in (each an abstract method, except the hooks with a default):
``compute_losses(batch)`` -> ``{"<name>_loss": ..., metrics}``; ``eval_step(batch, split)`` collects what a
split needs per batch (into ``self.eval_outputs`` or the subclass's own state); ``finish_eval(split)`` turns
the whole (gathered) split into metrics, predictions and a summary (``report``); optional:
``loss_weights()``, ``unused_parameters(model)``, ``sometimes_unused()``, ``no_weight_decay()``, ``predict(batch)``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from datapipes.batch import Batch
from vl.evaluation.retrieval import NonFiniteError, nonfinite_message
from vl.lit.checkpoint import load_checkpoint, preprocess_from_datamodule, recorded_model_config
from vl.lit.evaluation import gather_objects, write_eval_outputs
from vl.lit.optim import PRETRAINED_START_ADAM, OptimConfig, build_optimizer
from vl.lit.safety import NonFiniteGuard, retarget_learning_rates
from vl.models import VideoLanguageModel, create_model

VTC_PARAMETERS = ("video_proj.", "text_proj.", "logit_scale")  # prefixes of the VTC projections and temperature
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def sdpa_backends(attention: str) -> Optional[list[SDPBackend]]:
    """``attention`` (auto | flash | efficient | cudnn | math) -> the SDPA kernels to allow (None: all)."""
    if attention == "auto":
        return None
    if attention not in SDPA_BACKENDS:
        raise ValueError(f"attention must be one of auto, {', '.join(SDPA_BACKENDS)}; got {attention!r}")
    return [SDPA_BACKENDS[attention]]


@dataclass
class BackboneConfig:
    """The VideoLanguageModel a module trains and how it runs. Every module takes these as keyword
    arguments (``model=``, ``video=``, ... in YAML under ``model.init_args``)."""

    model: str = "vl_tiny"  # preset name (vl.list_models()); ignored with init_from
    video: Optional[dict[str, Any]] = None  # overrides of the preset's video encoder, e.g. {temporal: joint}
    text: Optional[dict[str, Any]] = None  # overrides of the preset's text encoder
    fusion: Optional[dict[str, Any]] = None  # overrides of the preset's fusion
    embed_dim: Optional[int] = None  # width of the shared VTC embedding space (None: the preset's)
    # A `vl fit` checkpoint (pretraining or fine-tuning) whose model to start from; its architecture is the
    # checkpoint's, so no part overrides go with it. Left out of the saved hyper-parameters: the checkpoint
    # of the new run holds the model, and `vl test --ckpt_path` must not try to read this file again.
    init_from: Optional[str] = None
    grad_checkpointing: bool = False  # recompute activations in backward (per block) to save memory
    compile: bool = False  # torch.compile the video and text encoders in place (parameter names unchanged)
    # Kernels of every scaled-dot-product attention: auto (PyTorch picks flash, then memory-efficient, then
    # math, as each applies) or one forced: flash | efficient | cudnn | math (an error names an op it cannot run).
    attention: str = "auto"

    def __post_init__(self) -> None:
        sdpa_backends(self.attention)  # a bad name fails at construction, not at the first step

    def overrides(self) -> dict[str, Any]:
        """The non-empty part overrides, as ``create_model`` takes them."""
        out: dict[str, Any] = {k: v for k, v in dict(video=self.video, text=self.text, fusion=self.fusion).items() if v}
        if self.embed_dim is not None:
            out["embed_dim"] = self.embed_dim
        return out

    def build(self, heads: Optional[tuple[str, ...]]) -> VideoLanguageModel:
        """The preset with the overrides (trained from scratch), or the model of ``init_from``; with exactly
        ``heads`` (``vtm``, ``mlm``), or the preset's / checkpoint's own heads when None."""
        if self.init_from is None:
            return create_model(self.model, **self.overrides(), **({} if heads is None else {"heads": list(heads)}))
        if self.overrides():
            raise ValueError(
                f"init_from={self.init_from!r} takes the architecture from the checkpoint; drop the overrides "
                f"{sorted(self.overrides())} (set the data's num_frames/frame_size to the checkpoint's instead)")
        model = load_checkpoint(self.init_from).model.train()
        return model if heads is None else with_heads(model, heads)

    def hparams(self) -> dict[str, Any]:
        """The fields saved as a checkpoint's hyper-parameters (all but ``init_from``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "init_from"}


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


def from_plain(cls: type, value: Any) -> Any:
    """``value`` as a ``cls`` dataclass: checkpoints hold hyper-parameters as plain dicts and lists, which
    become the (nested) dataclasses again here; an instance of ``cls`` is returned unchanged. An unknown key
    is a TypeError naming it, as the dataclass raises."""
    if not isinstance(value, Mapping):
        return value
    hints = typing.get_type_hints(cls)
    return cls(**{k: _from_plain_field(hints.get(k, Any), v) for k, v in value.items()})


def _from_plain_field(hint: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        return type(value)(_from_plain_field(args[0], v) for v in value)
    if origin is typing.Union:  # Optional[SomeConfig]
        return next((from_plain(a, value) for a in args if dataclasses.is_dataclass(a)), value)
    return value


class VLModule(pl.LightningModule, abc.ABC):
    """Base of every vl LightningModule: backbone, speed switches, training step, optimiser, checkpoints,
    evaluation report and prediction (see the module docstring for the template).

    Args:
        backbone: the model and how it runs (``BackboneConfig``).
        heads: the model heads the task uses (``vtm``, ``mlm``); None keeps the preset's or checkpoint's.
        frozen: name prefixes of backbone parameters the task never trains (frozen, so that every trainable
            parameter gets a gradient and DDP needs no unused-parameter search).
        optim: AdamW + warmup/cosine settings (a dict when restored from a checkpoint).
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.
        options: the subclass's own hyper-parameters, saved in checkpoints (primitive values or dataclasses).
        evaluation: options that change only how a model is evaluated (e.g. the beam size). They become plain
            attributes (``self.beam_size``) and stay out of the hyper-parameters: ``vl test --ckpt_path``
            restores a checkpoint's hyper-parameters over its command line, and these must come from it.
    """

    # AdamW (betas, eps) where ``optim`` leaves them unset: BERT/CLIP's, for tasks fine-tuned from a
    # pretrained checkpoint (pretraining overrides it: ``OptimConfig.betas``)
    adam_defaults = PRETRAINED_START_ADAM

    def __init__(self, backbone: BackboneConfig, *, heads: Optional[tuple[str, ...]], frozen: tuple[str, ...] = (),
                 optim: OptimConfig | Mapping[str, Any] = OptimConfig(), max_consecutive_nonfinite: int = 5,
                 options: Mapping[str, Any] = {}, evaluation: Mapping[str, Any] = {}) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.frozen = tuple(frozen)
        self.optim: OptimConfig = from_plain(OptimConfig, optim)
        self.sdpa_backends = sdpa_backends(backbone.attention)
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.eval_outputs: list[dict] = []  # per-item outputs of eval_step, gathered by take_outputs
        self.compiled = False
        for name, value in evaluation.items():
            setattr(self, name, value)
        hparams = {**backbone.hparams(), **options, "optim": dataclasses.asdict(self.optim),
                   "max_consecutive_nonfinite": max_consecutive_nonfinite}
        # Plain types only, so checkpoints load under torch's weights_only=True (LightningCLI reads them so).
        # The class and its instantiator are recorded as LightningCLI records them: `vl test --ckpt_path` then
        # restores these as the class's keyword arguments, and `load_from_checkpoint` rebuilds the subclass.
        self.save_hyperparameters({
            **{k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in hparams.items()},
            "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        })
        self.set_backbone(backbone.build(heads))

    # ---- backbone ---------------------------------------------------------------------------------

    def unused_parameters(self, model: VideoLanguageModel) -> set[str]:
        """Names of the backbone's parameters this task never trains (frozen); subclasses may extend it."""
        return {n for n, _ in model.named_parameters() if n.startswith(self.frozen)} if self.frozen else set()

    def set_backbone(self, model: VideoLanguageModel) -> None:
        """Install ``model`` as ``self.model``: unused parameters frozen, activation checkpointing as configured."""
        unused = self.unused_parameters(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name not in unused)
        if self.backbone_config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model

    def configure_model(self) -> None:
        """``compile: true`` compiles the video and text encoders in place (parameter names unchanged)."""
        if self.backbone_config.compile and not self.compiled:
            self.model.video_encoder.compile()
            self.model.text_encoder.compile()
            self.compiled = True

    def attention_kernels(self) -> contextlib.AbstractContextManager:
        """The context that restricts scaled-dot-product attention to the configured kernels."""
        return contextlib.nullcontext() if self.sdpa_backends is None else sdpa_kernel(self.sdpa_backends)

    # ---- training ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Every loss of the task on one batch: ``{"<name>_loss": ..., metrics...}``."""

    def loss_weights(self) -> dict[str, float]:
        """Weight of each ``<name>_loss`` in the total (1.0 when not listed)."""
        return {}

    def total_loss(self, out: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the ``*_loss`` entries of ``out``."""
        weights = self.loss_weights()
        return sum(weights.get(k[: -len("_loss")], 1.0) * v for k, v in out.items() if k.endswith("_loss"))

    def sometimes_unused(self) -> list[Tensor]:
        """Trainable parameters that the step just computed left without a gradient (an objective with nothing
        to compute on its batch, e.g. MVM when no masked token falls on a real frame); none by default. Asked
        after ``compute_losses``, so a step that uses every parameter adds nothing."""
        return []

    def training_step(self, batch: Batch, batch_idx: int) -> Optional[Tensor]:
        with self.attention_kernels():
            out = self.compute_losses(batch)
        loss = self.total_loss(out)
        # DDP (find_unused_parameters off, the fast default) reduces a gradient for every trainable parameter on
        # every step and fails on a step that leaves one without: the ``sometimes_unused`` parameters join the
        # loss with weight 0, which changes neither the loss nor any gradient.
        anchored = self.sometimes_unused()
        if anchored:
            loss = loss + 0.0 * sum(p.sum() for p in anchored)
        if not self.guard.check(loss, out, self.trainer):
            self.log("train/nonfinite_steps", float(self.guard.total), batch_size=batch.batch_size)
            return None  # skip this optimiser step (all ranks agree, see NonFiniteGuard)
        logs = {f"train/{k}": v.detach() for k, v in out.items()}
        logs["train/loss"] = loss.detach()
        if self.model.logit_scale.requires_grad:  # the learned VTC temperature, where the task trains it
            logs["train/logit_scale"] = self.model.logit_scale.detach().exp()
        self.log_dict(logs, batch_size=batch.batch_size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch.batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradients are not finite (``NonFiniteGuard.check_gradients``): every gradient is
        dropped, so a NaN from backward never reaches the weights."""
        if not self.guard.check_gradients(optimizer, self.trainer, self):
            self.log("train/nonfinite_steps", float(self.guard.total))

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of the parameters trained without weight decay."""
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def configure_optimizers(self) -> dict:
        return build_optimizer(
            self, self.optim, total_steps=int(self.trainer.estimated_stepping_batches),
            no_weight_decay=self.no_weight_decay(),
            pretrained={f"model.{n}" for n in self.model.pretrained_parameter_names()},
            adam_defaults=self.adam_defaults,
        )

    # ---- evaluation -------------------------------------------------------------------------------

    @abc.abstractmethod
    def eval_step(self, batch: Batch, split: str) -> None:
        """Collect what the evaluation of ``split`` needs from one batch."""

    @abc.abstractmethod
    def finish_eval(self, split: str) -> None:
        """Turn everything ``eval_step`` collected over ``split`` into metrics and a ``report``."""

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        with self.attention_kernels():
            self.eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self.attention_kernels():
            self.eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        with self.guard.advising(self.trainer):  # a NonFiniteError during fit names the checkpoint to go back to
            self.finish_eval("val")

    def on_test_epoch_end(self) -> None:
        with self.guard.advising(self.trainer):
            self.finish_eval("test")

    def take_outputs(self) -> list[dict]:
        """The per-item outputs ``eval_step`` appended to ``self.eval_outputs``, gathered from every rank (in
        rank order), and cleared for the next epoch."""
        outputs, self.eval_outputs = gather_objects(self.eval_outputs), []
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

    # ---- prediction -------------------------------------------------------------------------------

    def predict(self, batch: Batch) -> dict[str, Any]:
        """What ``vl predict`` writes for one batch (``vl.lit.predict``): by default the embeddings of its
        clips and of its texts; a task returns ``{"rows": [...]}`` instead (its answers, choices, captions)."""
        from vl.lit.predict import embeddings

        return embeddings(self.model, batch)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        with self.attention_kernels():
            return self.predict(batch)

    def configure_callbacks(self) -> list[pl.Callback]:
        """In ``vl predict``, a writer of what ``predict`` returns (``vl.lit.predict.PredictionWriter``), unless
        the trainer already has one."""
        from vl.lit.predict import PredictionWriter

        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.PREDICTING:
            return []
        if any(isinstance(cb, PredictionWriter) for cb in trainer.callbacks):
            return []
        return [PredictionWriter()]

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
        config = recorded_model_config(checkpoint)
        if config is not None and config != self.model.config:
            self.set_backbone(create_model(**config))
        if "vl_nonfinite" in checkpoint:
            self.guard.load_state_dict(checkpoint["vl_nonfinite"])
