"""PretrainModule: wires a VideoLanguageModel, its objectives and the optimiser. No architecture here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from datapipes.batch import Batch
from vl.lit.checkpoint import preprocess_from_datamodule
from vl.lit.evaluation import (RetrievalAccumulator, caption_temporal_flags, frame_order_embeddings, retrieval_summary,
                                write_eval_outputs)
from vl.lit.optim import OptimConfig, build_optimizer
from vl.lit.safety import NonFiniteGuard, retarget_learning_rates
from vl.models import create_model
from vl.models.hub import load_tokenizer
from vl.objectives import MLMLoss, VTCLoss, VTMLoss, caption_keys, vtm_positives
from vl.objectives.mvm import MVMConfig, MVMLoss, build_mvm


@dataclass
class Objectives:
    """Weights of the pretraining objectives; one with weight 0 is not computed at all."""

    vtc: float = 1.0  # video-text contrastive (open_clip's ClipLoss)
    # Multi-positive VTC: texts in the batch that are one of a clip's captions (duplicates, paraphrases) count
    # as its positives instead of negatives (for data with few distinct captions); false: open_clip's ClipLoss.
    vtc_multi_positive: bool = False
    vtm: float = 0.0  # video-text matching with hard negatives from VTC similarities
    # Share of VTM negatives drawn by VTC similarity (ALBEF: 1.0); the rest uniformly (ViLT/VIOLET: 0.0).
    vtm_hard_fraction: float = 1.0
    mlm: float = 0.0  # masked language modelling on the fused text tokens
    mlm_prob: float = 0.15  # share of text tokens masked for MLM (80% [MASK], 10% random, 10% kept)
    whole_word: bool = False  # mask every WordPiece of a chosen word together
    mvm: float = 0.0  # masked visual modelling (target, masking and head in `mvm_config`)
    mvm_config: MVMConfig = field(default_factory=MVMConfig)


SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def sdpa_backends(attention: str) -> Optional[list[SDPBackend]]:
    """``attention`` (auto | flash | efficient | cudnn | math) -> the SDPA kernels to allow (None: all)."""
    if attention == "auto":
        return None
    if attention not in SDPA_BACKENDS:
        raise ValueError(f"attention must be one of auto, {', '.join(SDPA_BACKENDS)}; got {attention!r}")
    return [SDPA_BACKENDS[attention]]


class PretrainModule(pl.LightningModule):
    """Video-language pretraining with VTC, VTM and MLM.

    The model is built by `vl.create_model(model, video=..., text=..., fusion=...)`; each dict overrides
    the preset's options for that part. Validation reports text-to-video retrieval (R@1/5/10 next to
    chance) on the validation shards and, unless `reversal_eval` is false, whether the model uses the order
    of the frames: each clip is embedded again from the same decoded frames reversed and shuffled, and
    `reversal_acc` / `shuffle_acc` are the percent of captions that score the true order higher (chance 50%;
    `vl.lit.evaluation.time_order_metrics`). It costs two more video-encoder passes per evaluation batch.

    Speed switches (each a config field): `grad_checkpointing` (activation checkpointing per block),
    `compile` (torch.compile of the encoders), `optim.fused` (fused AdamW); with the trainer's
    `precision: bf16-mixed` and `accumulate_grad_batches`. Every attention (video encoders, fusion, the
    Hugging Face text encoders, which load with `attn_implementation="sdpa"`) runs through
    `F.scaled_dot_product_attention`; `attention` picks its kernels: `auto` lets PyTorch choose (flash,
    then memory-efficient, then math, as each applies), `flash` / `efficient` / `cudnn` / `math` force one
    (an error names the op when the forced kernel cannot run it, e.g. flash with a padding mask).
    """

    def __init__(
        self,
        model: str = "vl_tiny",
        video: Optional[dict[str, Any]] = None,
        text: Optional[dict[str, Any]] = None,
        fusion: Optional[dict[str, Any]] = None,
        embed_dim: Optional[int] = None,
        tokenizer: str = "minilm",
        objectives: Objectives = Objectives(),
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        grad_checkpointing: bool = False,
        compile: bool = False,
        attention: str = "auto",
        reversal_eval: bool = True,
    ) -> None:
        super().__init__()
        # reversal_eval only changes how the model is evaluated: left out of the checkpoint's hyper-parameters,
        # which `vl test --ckpt_path` would restore over the command line
        self.save_hyperparameters(ignore=["reversal_eval"])
        self.reversal_eval = reversal_eval
        self.sdpa_backends = sdpa_backends(attention)
        overrides = {k: v for k, v in dict(video=video, text=text, fusion=fusion).items() if v}
        if embed_dim is not None:
            overrides["embed_dim"] = embed_dim
        self.model = create_model(model, **overrides)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.objectives = objectives
        self.optim = optim
        self.vtc = VTCLoss()
        self.vtm = VTMLoss(objectives.vtm_hard_fraction) if objectives.vtm > 0 else None
        self.mlm = self._build_mlm(tokenizer, objectives) if objectives.mlm > 0 else None
        self.mvm: Optional[MVMLoss] = build_mvm(objectives.mvm_config, self.model) if objectives.mvm > 0 else None
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.val_retrieval = RetrievalAccumulator()
        self.test_retrieval = RetrievalAccumulator()

    def configure_model(self) -> None:
        """`compile: true` compiles the video and text encoders in place (parameter names unchanged)."""
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.video_encoder.compile()
            self.model.text_encoder.compile()
            self._compiled = True

    @staticmethod
    def _build_mlm(tokenizer: str, objectives: Objectives) -> MLMLoss:
        return MLMLoss.from_tokenizer(
            load_tokenizer(tokenizer), prob=objectives.mlm_prob, whole_word=objectives.whole_word
        )

    # ---- losses ---------------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        return {"vtc": self.objectives.vtc, "vtm": self.objectives.vtm, "mlm": self.objectives.mlm,
                "mvm": self.objectives.mvm}

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Every objective with a non-zero weight on one batch: `{"<name>_loss": ..., metrics...}`."""
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)  # tokens (B, N, Dv), pooled (B, Dv)
        text = self.model.encode_text(batch.text_ids, batch.text_mask)  # tokens (B, L, Dt)
        v_emb = self.model.embed_video(video["pooled"])  # (B, E)
        t_emb = self.model.embed_text(text["pooled"])  # (B, E)
        video_mask = video.get("token_mask")  # (B, N) True for tokens of real frames; None: no padding known
        out: dict[str, Tensor] = {}
        if self.objectives.vtc > 0:
            keys = self.match_keys(batch) if self.objectives.vtc_multi_positive else None
            out.update(self.vtc(v_emb, t_emb, self.model.logit_scale, keys))
        if self.vtm is not None:
            sim = VTCLoss.similarity(v_emb, t_emb, self.model.logit_scale).detach()  # (B, B) for hard negatives
            positives = vtm_positives(batch.text_ids, batch.references, batch.captions)  # (B, B)
            out.update(self.vtm(self.model, video["tokens"], text["tokens"], batch.text_mask, sim, positives,
                                video_mask=video_mask))
        if self.mlm is not None:
            out.update(self.mlm(self.model, video["tokens"], batch.text_ids, batch.text_mask, video_mask=video_mask))
        if self.mvm is not None:  # masks (scored by the unmasked pass), re-encodes the masked clip, predicts targets
            out.update(self.mvm(self.model, batch.video, video["tokens"], text["tokens"], batch.text_mask, t_emb,
                                keys=batch.keys, frame_mask=batch.frame_mask))
        return out

    def match_keys(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Caption keys for multi-positive VTC: each text row's and each clip's reference captions'."""
        if batch.captions is None or len(batch.captions) != batch.batch_size:
            raise ValueError("objectives.vtc_multi_positive needs one caption per clip in each batch (the "
                             "pretraining data's text_field: caption)")
        return caption_keys(batch.captions, batch.references or [[c] for c in batch.captions], self.device)

    def total_loss(self, out: dict[str, Tensor]) -> Tensor:
        weights = self.weights()
        return sum(weights[k[: -len("_loss")]] * v for k, v in out.items() if k.endswith("_loss"))

    # ---- Lightning hooks ------------------------------------------------------------------------

    def attention_kernels(self) -> contextlib.AbstractContextManager:
        """The context that restricts scaled-dot-product attention to the configured kernels."""
        return contextlib.nullcontext() if self.sdpa_backends is None else sdpa_kernel(self.sdpa_backends)

    def training_step(self, batch: Batch, batch_idx: int) -> Optional[Tensor]:
        with self.attention_kernels():
            out = self.compute_losses(batch)
        loss = self.total_loss(out)
        if not self.guard.check(loss, out, self.trainer):
            self.log("train/nonfinite_steps", float(self.guard.total), batch_size=batch.batch_size)
            return None  # skip this optimiser step (all ranks agree, see NonFiniteGuard)
        logs = {f"train/{k}": v.detach() for k, v in out.items()}
        logs["train/loss"] = loss.detach()
        logs["train/logit_scale"] = self.model.logit_scale.detach().exp()
        self.log_dict(logs, prog_bar=False, batch_size=batch.batch_size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch.batch_size)
        return loss

    def _eval_step(self, batch: Batch, acc: RetrievalAccumulator) -> None:
        def embed_video(video: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, E)
            return self.model.embed_video(self.model.encode_video(video, frame_mask=batch.frame_mask)["pooled"])

        index = batch.video_index()  # (Nt,)
        with self.attention_kernels():
            v_emb = embed_video(batch.video)
            t_emb = self.model.embed_text(self.model.encode_text(batch.text_ids, batch.text_mask)["pooled"])
            order = None
            if self.reversal_eval:  # the same decoded frames, reversed and shuffled
                temporal = caption_temporal_flags(batch.meta, batch.captions or [""] * len(index), index.cpu())
                order = frame_order_embeddings(embed_video, batch.video, batch.frame_mask, temporal)
        acc.add(v_emb, t_emb, index, batch.keys, batch.captions, order=order)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_retrieval)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_retrieval)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val", self.val_retrieval)

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test", self.test_retrieval)

    def _log_retrieval(self, split: str, acc: RetrievalAccumulator) -> None:
        try:  # raises NonFiniteError for NaN/inf embeddings: a NaN model gets no score, never R@1 100%
            with self.guard.advising(self.trainer):
                metrics, num_videos, num_texts, rankings = acc.compute(topk=5 if split == "test" else 0, split=split)
        finally:
            acc.reset()
        if not metrics:
            return
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, rank_zero_only=True)
        if not self.trainer.sanity_checking:
            rank_zero_info(retrieval_summary(split, metrics, num_videos, num_texts))
        if split == "test":
            write_eval_outputs(self.trainer, split, metrics, rankings)

    def configure_optimizers(self) -> dict:
        module, no_decay = self.model, set(self.model.no_weight_decay())
        pretrained = set(self.model.pretrained_parameter_names())
        if self.mvm is not None:  # the MVM decoder and head train with the model (frozen targets have no grad)
            module = torch.nn.ModuleDict({"model": self.model, "mvm": self.mvm})
            no_decay = {f"model.{n}" for n in no_decay} | {f"mvm.{n}" for n in self.mvm.no_weight_decay()}
            pretrained = {f"model.{n}" for n in pretrained}
        return build_optimizer(
            module,
            self.optim,
            total_steps=int(self.trainer.estimated_stepping_batches),
            no_weight_decay=no_decay,
            pretrained=pretrained,
        )

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradients are not finite (``NonFiniteGuard.check_gradients``): every gradient is
        dropped, so a NaN from backward never reaches the weights."""
        if not self.guard.check_gradients(optimizer, self.trainer, self):
            self.log("train/nonfinite_steps", float(self.guard.total))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuses (``NonFiniteCheckpointError``) to write NaN/inf weights or optimiser state; records the
        model config, preprocessing and the guard's counters."""
        self.guard.check_checkpoint(checkpoint, self.trainer)
        checkpoint["vl_model_config"] = self.model.config
        checkpoint["vl_preprocess"] = preprocess_from_datamodule(getattr(self.trainer, "datamodule", None))
        checkpoint["vl_nonfinite"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restores the guard's counters; a resumed run takes the configured learning rate
        (``retarget_learning_rates``)."""
        retarget_learning_rates(checkpoint, self.optim.lr, self.optim.pretrained_lr_scale)
        if "vl_nonfinite" in checkpoint:
            self.guard.load_state_dict(checkpoint["vl_nonfinite"])
