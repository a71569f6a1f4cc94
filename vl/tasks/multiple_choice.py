"""Multiple-choice video QA (TGIF-Action, TGIF-Transition, MSRVTT-MC, LSMDC-MC).

Each (video, question + choice) pair is fused and scored by the VTM head (match log-odds); a softmax
over a question's choices gives its answer distribution, trained with cross-entropy on the right
choice. The VTM head is the pretraining one, so a pretrained checkpoint answers zero-shot:
``vl test -c configs/finetune/<benchmark>_mc.yaml --model.init_args.init_from PRETRAINED.ckpt``
without fitting (no ``--ckpt_path``); after ``vl fit`` the same command with ``--ckpt_path`` tests the
fine-tuned model. Accuracy overall and per question type (``vl.evaluation.qa``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from datapipes.batch import Batch
from vl.evaluation.qa import multiple_choice_accuracy
from vl.evaluation.retrieval import require_finite
from vl.lit.module import VTC_PARAMETERS, BackboneConfig, VLModule, require_finite_outputs
from vl.lit.optim import OptimConfig
from vl.models import VideoLanguageModel
from vl.objectives import MATCH_SCORES, match_score

NO_ANSWER = -1  # Batch.answer_idx of a question without a known right choice (ignored by the loss)


def choice_scores(model: VideoLanguageModel, video_tokens: Tensor, choice_ids: Tensor, choice_mask: Tensor,
                  video_pooled: Optional[Tensor] = None, video_mask: Optional[Tensor] = None,
                  score: str = "vtm+vtc") -> Tensor:
    """The match score of every (video, question + choice): video_tokens (B, N, Dv), choice_ids and
    choice_mask (B, K, L) -> scores (B, K), ``-inf`` where a question has fewer than K choices. Without
    ``video_pooled`` the score is the VTM head's match log-odds; with ``video_pooled`` (B, Dv) it is
    ``vl.objectives.match_score`` named by ``score`` (one of ``MATCH_SCORES``) of those log-odds and the
    cosine of the video and the question + choice, from the same text encoding. ``video_mask`` (B, N) True
    for tokens of real frames (``encode_video(...)["token_mask"]``; None: all): the fusion ignores padded
    frames."""
    valid = choice_mask.bool().any(dim=-1)  # (B, K)
    b, k = valid.nonzero(as_tuple=True)  # (M,) each: only real choices go through the model
    text = model.encode_text(choice_ids[b, k], choice_mask[b, k])  # tokens (M, L, Dt), pooled (M, Dt)
    vmask = None if video_mask is None else video_mask[b]  # (M, N)
    match = model.vtm_log_odds(video_tokens[b], text["tokens"], choice_mask[b, k], vmask)  # (M,)
    if video_pooled is not None:
        cosine = (model.embed_video(video_pooled)[b] * model.embed_text(text["pooled"])).sum(dim=-1).float()  # (M,)
        match = match_score(match, cosine, model.get_logit_scale().float(), score)
    scores = torch.full(valid.shape, float("-inf"), device=match.device, dtype=match.dtype)
    scores[b, k] = match
    return scores


def choice_texts(meta: dict, question: str) -> Optional[list[str]]:
    """The choices of the multiple-choice item of ``meta["qa"]`` asking ``question`` (None if not found)."""
    for item in meta.get("qa") or []:
        if isinstance(item, dict) and item.get("question") == question and "choices" in item:
            return [str(c) for c in item["choices"]]
    return None


class MultipleChoiceModule(VLModule):
    """Multiple-choice QA by VTM scoring of each choice, softmax over the choices.

    Args: ``BackboneConfig``'s by keyword (start from a pretrained checkpoint with ``init_from`` for zero-shot
    testing or fine-tuning), ``optim``, ``max_consecutive_nonfinite``, and ``score``, one of
    ``vl.objectives.MATCH_SCORES`` (the scores ``match_score`` computes, as retrieval re-ranking takes them):
    ``vtm`` (the VTM head's match log-odds), ``vtm+vtc`` (plus the dual encoder's logit, scale x cosine, of
    the video and the question + choice) or ``vtm+cos`` (plus the bare cosine, BLIP's). The VTM head
    binds words to what the video shows through the fusion layers; it starts from the pretraining VTM head,
    so a checkpoint whose VTM never left its prior (trained on hard negatives only, see ``vl.objectives.vtm``)
    starts at chance, and ``vtm+vtc`` lets the dual encoder, which already ranks captions (MSRVTT-MC is often
    scored by it alone), carry such a model. The VTC projections stay frozen either way.
    """

    def __init__(
        self,
        score: str = "vtm",
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        **backbone: Any,
    ) -> None:
        if score not in MATCH_SCORES:
            raise ValueError(f"multiple choice: score must be one of {MATCH_SCORES}, got {score!r}")
        super().__init__(BackboneConfig(**backbone), heads=("vtm",), frozen=VTC_PARAMETERS, optim=optim,
                         max_consecutive_nonfinite=max_consecutive_nonfinite, options=dict(score=score))

    def scores(self, batch: Batch) -> Tensor:
        """(B, K) choice scores of the batch."""
        if batch.choice_ids is None or batch.choice_mask is None:
            raise ValueError("multiple-choice batches need choices: set data.init_args.text_field to mc")
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)  # tokens (B, N, Dv), pooled (B, Dv)
        pooled = None if self.hparams.score == "vtm" else video["pooled"]  # "vtm" needs no cosine
        return choice_scores(self.model, video["tokens"], batch.choice_ids, batch.choice_mask, pooled,
                             video.get("token_mask"), self.hparams.score)  # (B, K)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of the softmax over each question's choices against its right choice."""
        scores = self.scores(batch)
        target = batch.answer_idx
        known = target != NO_ANSWER
        if not bool(known.any()):
            zero = scores[scores.isfinite()].sum() * 0.0
            return {"mc_loss": zero, "mc_acc": zero.detach()}
        loss = F.cross_entropy(scores[known], target[known])
        acc = (scores.detach().argmax(dim=1) == target)[known].float().mean()
        return {"mc_loss": loss, "mc_acc": acc}

    # ---- evaluation -------------------------------------------------------------------------------

    def eval_step(self, batch: Batch, split: str) -> None:
        scores = self.scores(batch)  # (B, K), -inf where a question has fewer than K choices
        real_choices = batch.choice_mask.bool().any(dim=-1)  # (B, K)
        finite = (torch.isfinite(scores) | ~real_choices).all(dim=1).tolist()  # (B,) checked after the gather
        probs = scores.softmax(dim=1)  # (B, K)
        questions = batch.texts or [""] * batch.batch_size
        types = batch.question_type or [None] * batch.batch_size
        metas = batch.meta or [{}] * batch.batch_size
        for i in range(batch.batch_size):
            real = batch.choice_mask[i].bool().any(dim=-1)  # (K,)
            self.eval_outputs.append({
                "key": batch.keys[i], "question": questions[i], "choices": choice_texts(metas[i], questions[i]),
                "answer_idx": int(batch.answer_idx[i]), "prediction": int(probs[i].argmax()),
                "probs": [round(float(p), 4) for p in probs[i][real]], "question_type": types[i],
                "finite": finite[i],
            })

    def predict(self, batch: Batch) -> dict[str, list[dict]]:
        """``vl predict``: the chosen choice of each question (its index and text) and every choice's probability."""
        scores = self.scores(batch)  # (B, K), -inf where a question has fewer than K choices
        real = batch.choice_mask.bool().any(dim=-1)  # (B, K)
        require_finite(scores[real], "choice scores")
        probs = scores.float().softmax(dim=1)  # (B, K)
        questions = batch.texts or [""] * batch.batch_size
        metas = batch.meta or [{}] * batch.batch_size
        rows = []
        for i in range(batch.batch_size):
            choices, best = choice_texts(metas[i], questions[i]), int(probs[i].argmax())
            rows.append({"key": batch.keys[i], "question": questions[i], "choices": choices, "prediction": best,
                         "answer": choices[best] if choices and best < len(choices) else None,
                         "probs": [round(float(p), 4) for p in probs[i][real[i]]]})
        return {"rows": rows}

    def finish_eval(self, split: str) -> None:
        outputs = self.take_outputs()
        if not outputs:
            return
        require_finite_outputs(split, outputs, "choice scores")
        types = [o["question_type"] for o in outputs]
        metrics = multiple_choice_accuracy([o["prediction"] for o in outputs], [o["answer_idx"] for o in outputs],
                                           types if any(t is not None for t in types) else None)
        counts = [len(o["probs"]) for o in outputs]
        metrics["chance_accuracy"] = 100.0 * sum(1.0 / c for c in counts) / len(counts)
        rows = [{**o, "correct": o["prediction"] == o["answer_idx"]} for o in outputs]
        lines = [f"{split}: multiple-choice QA over {len(outputs)} questions",
                 f"  accuracy {metrics['accuracy']:6.2f}%   chance {metrics['chance_accuracy']:6.2f}%"]
        lines += [f"  {k.split('/', 1)[1]:<12} {v:6.2f}%" for k, v in sorted(metrics.items()) if k.startswith("accuracy/")]
        self.report(split, metrics, rows, "\n".join(lines))
