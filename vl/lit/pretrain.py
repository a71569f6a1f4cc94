"""PretrainModule: wires a VideoLanguageModel and its pretraining objectives (``vl.lit.module.VLModule`` does
the rest). No architecture here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor

from datapipes.batch import Batch
from vl.evaluation.frame_order import caption_temporal_flags, frame_order_embeddings, reorder_frames, reversed_order
from vl.lit.evaluation import RetrievalAccumulator, retrieval_summary
from vl.lit.module import BackboneConfig, VLModule, from_plain
from vl.lit.optim import FROM_SCRATCH_ADAM, OptimConfig
from vl.models.hub import load_tokenizer
from vl.models.sparse import TokenSparsity
from vl.objectives import MLMLoss, VTCLoss, VTMLoss, caption_keys, time_reversal_loss, vtm_positives
from vl.objectives.mvm import MVMConfig, MVMLoss, build_mvm


def reversed_drop(drop: Tensor, grid: tuple[int, int, int], frame_mask: Optional[Tensor],
                  num_frames: int) -> Optional[Tensor]:
    """The drop mask (B, N) of a clip played backwards (``reorder_frames(video, frame_mask, reversed_order)``)
    that keeps the same content as ``drop`` (B, N) keeps of the clip: each cell's flag moves with its frame,
    so the reversed clip differs from the clip in frame order only. (Reusing ``drop`` as it is would keep, in
    the reversed clip, the cells where a motion-guided selection found the object in the other frames: mostly
    background, a difference the reversal loss could learn instead of order.) grid: the encoder's (T', H',
    W'). None when the grid's time steps are tubelets of clips with padded frames, whose content does not
    reverse cell by cell."""
    B, (T, H, W) = drop.shape[0], grid
    cells = drop.view(B, T, H * W)
    if T == num_frames:  # one grid time step per frame: reorder the cells as the frames
        return reorder_frames(cells, frame_mask, reversed_order).flatten(1)
    if frame_mask is None:  # whole tubelets in reverse order, each holding its frames reversed
        return cells[:, reversed_order(T).to(drop.device)].flatten(1)
    return None


@dataclass
class Objectives:
    """Weights of the pretraining objectives; one with weight 0 is not computed at all."""

    vtc: float = 1.0  # video-text contrastive (open_clip's ClipLoss)
    # Multi-positive VTC: texts in the batch that are one of a clip's captions (duplicates, paraphrases) count
    # as its positives instead of negatives. With no caption twice in a batch it is open_clip's ClipLoss
    # exactly; where captions recur (few distinct ones, web duplicates) ClipLoss would push clips apart for
    # describing the same thing. false: open_clip's ClipLoss always; so is a batch that carries no caption
    # strings (``Batch.texts`` None: nothing says which captions recur).
    vtc_multi_positive: bool = True
    # Reversed-clip negatives: each caption must score its clip above the same frames played backwards (a
    # two-way softmax at VTC's temperature; one more video encoding per step). For captions that say what
    # happens in time; 0 = off.
    reversal: float = 0.0
    vtm: float = 0.0  # video-text matching with hard negatives from VTC similarities
    # Share of VTM negatives drawn by VTC similarity (ALBEF: 1.0); the rest uniformly (ViLT/VIOLET: 0.0).
    vtm_hard_fraction: float = 1.0
    mlm: float = 0.0  # masked language modelling on the fused text tokens
    mlm_prob: float = 0.15  # share of text tokens masked for MLM (80% [MASK], 10% random, 10% kept)
    whole_word: bool = False  # mask every WordPiece of a chosen word together
    mvm: float = 0.0  # masked visual modelling (target, masking and head in `mvm_config`)
    mvm_config: MVMConfig = field(default_factory=MVMConfig)
    # Encode each training clip on a subset of its tokens, once for VTC, VTM and MLM (keep_ratio 1.0: dense;
    # random | tube | motion; dense_final_steps: a final dense phase, steps or a share of the run). MVM keeps
    # its own masked pass; evaluation always encodes the whole clip.
    token_sparsity: TokenSparsity = field(default_factory=TokenSparsity)


class PretrainModule(VLModule):
    """Video-language pretraining with VTC, VTM, MLM and MVM.

    The model is built by `vl.create_model(model, video=..., text=..., fusion=...)`; each dict overrides
    the preset's options for that part (``BackboneConfig``, whose fields are all keyword arguments here, with
    the speed switches: `grad_checkpointing`, `compile`, `attention`; `optim.fused` and the trainer's
    `precision: bf16-mixed` and `accumulate_grad_batches` beside them). Validation reports text-to-video
    retrieval (R@1/5/10 next to chance) on the validation shards and, unless `reversal_eval` is false,
    whether the model uses the order of the frames: each clip is embedded again from the same decoded frames
    reversed and shuffled, and `reversal_acc` / `shuffle_acc` are the percent of captions that score the
    true order higher (chance 50%; `vl.evaluation.frame_order.time_order_metrics`). It costs two more video-encoder
    passes per evaluation batch.

    Args (besides ``BackboneConfig``'s, given by keyword):
        tokenizer: the data's tokenizer (MLM's vocabulary and special tokens).
        objectives: the weights of the objectives and their settings.
        optim: AdamW + warmup/cosine settings.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.
        reversal_eval: also score every caption against its clip reversed and shuffled in time.
    """

    adam_defaults = FROM_SCRATCH_ADAM  # PyTorch's AdamW betas / eps unless optim sets them (OptimConfig.betas)

    def __init__(
        self,
        model: str = "vl_tiny",
        tokenizer: str = "minilm",
        objectives: Objectives = Objectives(),
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        reversal_eval: bool = True,
        **backbone: Any,
    ) -> None:
        objectives = from_plain(Objectives, objectives)
        super().__init__(BackboneConfig(model=model, **backbone), heads=None, optim=optim,
                         max_consecutive_nonfinite=max_consecutive_nonfinite,
                         options={"tokenizer": tokenizer, "objectives": objectives},
                         evaluation={"reversal_eval": reversal_eval})
        self.objectives = objectives
        self.vtc = VTCLoss()
        self.vtm = VTMLoss(objectives.vtm_hard_fraction) if objectives.vtm > 0 else None
        self.mlm = self._build_mlm(tokenizer, objectives) if objectives.mlm > 0 else None
        self.mvm: Optional[MVMLoss] = build_mvm(objectives.mvm_config, self.model) if objectives.mvm > 0 else None
        if objectives.token_sparsity.keep_ratio < 1.0:  # fail at start, not at the first step
            self.model.video_encoder.check_token_layout()  # Video Swin cannot drop tokens: says why
            scored = {"attended", "text_guided"} & {m.strategy for m in objectives.mvm_config.masking}
            if self.mvm is not None and scored:
                raise ValueError(f"objectives.token_sparsity: MVM masking {sorted(scored)} scores the tokens of the "
                                 f"dense pass, which a sparse step does not have; use random/tube/motion masking")
        self.val_retrieval = RetrievalAccumulator()
        self.test_retrieval = RetrievalAccumulator()

    @staticmethod
    def _build_mlm(tokenizer: str, objectives: Objectives) -> MLMLoss:
        return MLMLoss.from_tokenizer(
            load_tokenizer(tokenizer), prob=objectives.mlm_prob, whole_word=objectives.whole_word
        )

    # ---- losses ---------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        return {"vtc": self.objectives.vtc, "reversal": self.objectives.reversal, "vtm": self.objectives.vtm,
                "mlm": self.objectives.mlm, "mvm": self.objectives.mvm}

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Every objective with a non-zero weight on one batch: `{"<name>_loss": ..., metrics...}`."""
        sparsity = self.objectives.token_sparsity
        total = self.total_steps() if sparsity.dense_final_steps else None

        def select(video: Tensor) -> Optional[Tensor]:  # this step's drop mask (B, N_grid), None when dense
            return sparsity.drop_mask(video, batch.frame_mask, self.model.video_encoder, self.global_step, total)

        drop = select(batch.video)
        # tokens (B, N or N_kept, Dv), pooled (B, Dv): one encoding for VTC, VTM and MLM
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask, drop=drop)
        text = self.model.encode_text(batch.text_ids, batch.text_mask)  # tokens (B, L, Dt)
        v_emb = self.model.embed_video(video["pooled"])  # (B, E)
        t_emb = self.model.embed_text(text["pooled"])  # (B, E)
        video_mask = video.get("token_mask")  # (B, N) True for tokens of real frames; None: no padding known
        out: dict[str, Tensor] = {}
        if self.objectives.vtc > 0:
            # a batch without caption strings (built by hand) gives no duplicates to find: ClipLoss
            multi = self.objectives.vtc_multi_positive and batch.texts is not None
            keys = self.match_keys(batch) if multi else None
            out.update(self.vtc(v_emb, t_emb, self.model.logit_scale, keys))
        if self.objectives.reversal > 0:  # the same frames backwards (padding stays at the end), same tokens kept
            frames = reorder_frames(batch.video, batch.frame_mask, reversed_order)
            back_drop = None
            if drop is not None:  # the kept cells follow their frames; tubelets of padded clips: select anew
                back_drop = reversed_drop(drop, self.model.video_encoder.grid, batch.frame_mask, batch.video.shape[1])
                back_drop = select(frames) if back_drop is None else back_drop
            backwards = self.model.encode_video(frames, frame_mask=batch.frame_mask, drop=back_drop)
            out.update(time_reversal_loss(v_emb, self.model.embed_video(backwards["pooled"]), t_emb,
                                          self.model.logit_scale))
        if self.vtm is not None:
            sim = VTCLoss.similarity(v_emb, t_emb, self.model.logit_scale).detach()  # (B, B) for hard negatives
            positives = vtm_positives(batch.text_ids, batch.references, batch.texts)  # (B, B)
            out.update(self.vtm(self.model, video["tokens"], text["tokens"], batch.text_mask, sim, positives,
                                video_mask=video_mask))
        if self.mlm is not None:
            out.update(self.mlm(self.model, video["tokens"], batch.text_ids, batch.text_mask, video_mask=video_mask))
        if self.mvm is not None:  # masks (scored by the unmasked pass), re-encodes the masked clip, predicts targets
            out.update(self.mvm(self.model, batch.video, video["tokens"], text["tokens"], batch.text_mask, t_emb,
                                keys=batch.keys, frame_mask=batch.frame_mask))
        return out

    def total_steps(self) -> int:
        """The run's optimiser steps (the trainer's estimate), for a dense final phase given as a share."""
        return int(self.trainer.estimated_stepping_batches)

    def match_keys(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Caption keys for multi-positive VTC: each text row's and each clip's reference captions'."""
        if len(batch.texts) != batch.batch_size:
            raise ValueError("objectives.vtc_multi_positive needs one caption per clip in each batch (the "
                             "pretraining data's text_field: caption); set it to false for open_clip's ClipLoss")
        return caption_keys(batch.texts, batch.references or [[c] for c in batch.texts], self.device)

    def sometimes_unused(self) -> list[Tensor]:
        """MVM's decoder and head on a step whose masked tokens all fell on padded frames (nothing predicted)."""
        if self.mvm is None or self.mvm.predicted:
            return []
        return [p for p in self.mvm.parameters() if p.requires_grad]

    def no_weight_decay(self) -> set[str]:
        """The model's, and the MVM decoder's and head's (they train with the model)."""
        mvm = set() if self.mvm is None else {f"mvm.{n}" for n in self.mvm.no_weight_decay()}
        return super().no_weight_decay() | mvm

    # ---- evaluation: text-to-video retrieval ----------------------------------------------------

    def accumulator(self, split: str) -> RetrievalAccumulator:
        """The embeddings collected over ``split`` (``val`` or ``test``)."""
        return self.test_retrieval if split == "test" else self.val_retrieval

    def eval_step(self, batch: Batch, split: str) -> None:
        self._eval_step(batch, self.accumulator(split))

    def _eval_step(self, batch: Batch, acc: RetrievalAccumulator) -> None:
        """Add the batch's clip and caption embeddings (and, with ``reversal_eval``, its clips' in other frame
        orders) to ``acc``."""
        def embed_video(video: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, E)
            return self.model.embed_video(self.model.encode_video(video, frame_mask=batch.frame_mask)["pooled"])

        index = batch.video_index()  # (Nt,)
        v_emb = embed_video(batch.video)
        t_emb = self.model.embed_text(self.model.encode_text(batch.text_ids, batch.text_mask)["pooled"])
        order = None
        if self.reversal_eval:  # the same decoded frames, reversed and shuffled
            temporal = caption_temporal_flags(batch.meta, batch.texts or [""] * len(index), index.cpu())
            order = frame_order_embeddings(embed_video, batch.video, batch.frame_mask, temporal)
        acc.add(v_emb, t_emb, index, batch.keys, batch.texts, order=order)

    def finish_eval(self, split: str) -> None:
        """Retrieval metrics (raises NonFiniteError for NaN/inf embeddings: a NaN model gets no score, never
        R@1 100%); on test, with each caption's top 5 clips as predictions."""
        acc = self.accumulator(split)
        try:
            metrics, num_videos, num_texts, rankings = acc.compute(topk=5 if split == "test" else 0, split=split)
        finally:
            acc.reset()
        if metrics:
            self.report(split, metrics, rankings, retrieval_summary(split, metrics, num_videos, num_texts))
