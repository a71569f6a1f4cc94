"""Open-ended video QA (MSRVTT-QA, MSVD-QA, TGIF-FrameQA): a classifier over the top-K training answers.

The question is fused with the video and ``AnswerHead`` classifies the fused CLS token into the answer
vocabulary (``vl.evaluation.qa.AnswerVocab``): the ``num_answers`` most frequent training answers, read
from a JSON list (``AnswerVocab.save``) or an annotation JSONL (``scripts/prepare`` output) given as
``answer_vocab``, or else counted over the training shards' ``qa`` items at the start of ``fit``. The
vocabulary is saved in every checkpoint. Training questions whose answer is outside it are ignored by
the loss; test questions whose answer is outside it count as wrong (``qa_accuracy``). Accuracy is
reported overall and per question type where the benchmark has types, next to the majority baseline.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datapipes.batch import Batch
from datapipes.decode import SkipSample
from datapipes.shards import expand_shards
from datapipes.text import qa_items
from vl.evaluation.qa import OOV, AnswerVocab, qa_accuracy
from vl.evaluation.retrieval import require_finite
from vl.lit.module import VTC_PARAMETERS, BackboneConfig, VLModule, require_finite_outputs
from vl.lit.optim import OptimConfig


class AnswerHead(nn.Module):
    """The VQA classifier of ALBEF/VIOLET: (B, D) fused CLS -> Linear, GELU, LayerNorm, Linear -> (B, K) logits."""

    def __init__(self, dim: int, num_answers: int, hidden: Optional[int] = None, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_answers))

    def forward(self, cls: Tensor) -> Tensor:
        return self.net(cls)


# ---------------------------------------------------------------- answer vocabulary


def shard_answers(spec: str | list[str]) -> Iterable[str]:
    """Every open-ended answer in the ``KEY.json`` of the shards ``spec`` names (local tar files; videos
    are skipped over, not read). Malformed ``qa`` fields are skipped, as the data pipeline skips them."""
    for url in expand_shards(spec):
        path = url.removeprefix("file://")
        if "://" in path or path.startswith("pipe:"):
            raise ValueError(f"counting answers needs local shards, got {url!r}: give model.init_args.answer_vocab "
                             f"(a JSON list of answers or the training annotation JSONL)")
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".json"):
                    continue
                try:
                    meta = json.loads(tar.extractfile(member).read())
                    yield from (q.answer for q in qa_items(meta, "qa") if q.answer is not None)
                except (json.JSONDecodeError, UnicodeDecodeError, SkipSample, AttributeError):
                    continue


def jsonl_answers(path: str | Path) -> Iterable[str]:
    """Every open-ended answer of an annotation JSONL (records with ``qa`` lists, as ``scripts/prepare`` writes)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                yield from (str(q["answer"]) for q in record.get("qa") or [] if "answer" in q and "choices" not in q)


def load_vocab(source: str, num_answers: int, min_count: int) -> AnswerVocab:
    """The answer vocabulary from a JSON list (kept in order, cut to ``num_answers``) or an annotation JSONL
    (its ``num_answers`` most frequent answers seen ``min_count`` times)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"answer_vocab {source!r} is not a file")
    if path.suffix == ".jsonl":
        return AnswerVocab.from_answers(jsonl_answers(path), top_k=num_answers, min_count=min_count)
    answers = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(answers, list):
        raise ValueError(f"answer_vocab {source!r}: expected a JSON list of answers")
    return AnswerVocab(answers[:num_answers])


class QAModule(VLModule):
    """Open-ended QA: fused (video, question) -> answer class.

    Args (besides ``BackboneConfig``'s, given by keyword: ``model``, ``video``, ..., ``init_from``):
        answer_vocab: JSON list of answers or training annotation JSONL; None: counted over the training
            shards when ``fit`` starts. A checkpoint's saved vocabulary replaces it on load.
        num_answers: K, the size of the vocabulary (most frequent answers first).
        min_answer_count: answers seen fewer times in training are left out.
        head_hidden: width of the classifier's hidden layer (default: twice the fusion width).
        head_dropout: dropout before the classifier's last layer.
        predictions_top: answers (with probabilities) written per question to the predictions file (an
            evaluation option).
        optim: AdamW + warmup/cosine settings.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.
    """

    def __init__(
        self,
        answer_vocab: Optional[str] = None,
        num_answers: int = 1000,
        min_answer_count: int = 1,
        head_hidden: Optional[int] = None,
        head_dropout: float = 0.1,
        predictions_top: int = 3,
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        **backbone: Any,
    ) -> None:
        super().__init__(
            BackboneConfig(**backbone), heads=(), frozen=VTC_PARAMETERS, optim=optim,
            max_consecutive_nonfinite=max_consecutive_nonfinite,
            options=dict(answer_vocab=answer_vocab, num_answers=num_answers, min_answer_count=min_answer_count,
                         head_hidden=head_hidden, head_dropout=head_dropout),
            evaluation=dict(predictions_top=predictions_top),
        )
        self.vocab: Optional[AnswerVocab] = None
        self.head: Optional[AnswerHead] = None
        if answer_vocab is not None:
            self.set_vocab(load_vocab(answer_vocab, num_answers, min_answer_count))

    # ---- vocabulary -------------------------------------------------------------------------------

    def set_vocab(self, vocab: AnswerVocab) -> None:
        """Use ``vocab``; a new classifier is built when its size differs from the current one."""
        if len(vocab) == 0:
            raise ValueError("the answer vocabulary is empty: the training data has no open-ended answers")
        self.vocab = vocab
        if self.head is None or self.head.net[-1].out_features != len(vocab):
            h = self.hparams
            self.head = AnswerHead(self.model.fusion.dim, len(vocab), h.head_hidden, h.head_dropout).to(self.device)

    def setup(self, stage: str) -> None:
        """At the start of ``fit`` without a vocabulary: count the answers of the training shards."""
        if stage != "fit" or self.vocab is not None:
            return
        shards = self.trainer.datamodule.shards("train")
        vocab = AnswerVocab.from_answers(shard_answers(shards), top_k=self.hparams.num_answers,
                                         min_count=self.hparams.min_answer_count)
        self.set_vocab(vocab)
        self.print(f"QA answer vocabulary: {len(vocab)} answers from the training shards "
                   f"(most frequent: {', '.join(vocab.answers[:5])})")

    def _require_vocab(self) -> AnswerVocab:
        if self.vocab is None or self.head is None:
            raise RuntimeError("QA needs an answer vocabulary: fine-tune first (fit builds it), pass --ckpt_path of a "
                               "fine-tuned QA checkpoint, or set model.init_args.answer_vocab")
        return self.vocab

    # ---- model ------------------------------------------------------------------------------------

    def answer_logits(self, batch: Batch) -> Tensor:
        """(B, K) answer logits of the batch's (video, question) pairs; a short clip's padded frames
        (``batch.frame_mask`` False) are left out of the video encoding and of the fusion's attention."""
        self._require_vocab()
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)  # tokens (B, N, Dv)
        question = self.model.encode_text(batch.text_ids, batch.text_mask)["tokens"]  # (B, L, Dt)
        fused = self.model.fuse(video["tokens"], question, batch.text_mask, video.get("token_mask"))["pooled"]  # (B, D)
        return self.head(fused)

    def targets(self, batch: Batch) -> Tensor:
        """(B,) answer class of each question, ``OOV`` (-1) outside the vocabulary."""
        vocab = self._require_vocab()
        if batch.answer is None:
            raise ValueError("QA batches need answers: set data.init_args.text_field to qa")
        return torch.tensor([vocab.encode(a) for a in batch.answer], dtype=torch.long, device=self.device)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy over the answer classes; questions with an out-of-vocabulary answer are ignored."""
        logits = self.answer_logits(batch)
        target = self.targets(batch)
        known = target != OOV
        if not bool(known.any()):
            zero = logits.sum() * 0.0  # keeps every parameter in the graph
            return {"qa_loss": zero, "qa_acc": zero.detach()}
        loss = F.cross_entropy(logits, target, ignore_index=OOV)
        acc = (logits.detach().argmax(dim=1) == target)[known].float().mean()
        return {"qa_loss": loss, "qa_acc": acc}

    # ---- evaluation -------------------------------------------------------------------------------

    def eval_step(self, batch: Batch, split: str) -> None:
        if batch.answer is None:
            raise ValueError("QA batches need answers: set data.init_args.text_field to qa")
        logits = self.answer_logits(batch).float()  # (B, K)
        finite = torch.isfinite(logits).all(dim=1).tolist()  # (B,) checked in finish_eval, after the gather
        probs = logits.softmax(dim=1)  # (B, K)
        top_p, top_i = probs.topk(min(self.predictions_top, probs.shape[1]), dim=1)
        types = batch.question_type or [None] * batch.batch_size
        for i in range(batch.batch_size):
            self.eval_outputs.append({
                "key": batch.keys[i], "question": (batch.texts or [""] * batch.batch_size)[i],
                "answer": batch.answer[i], "question_type": types[i], "pred_id": int(top_i[i, 0]),
                "top": [[self.vocab.decode(int(j)), round(float(p), 4)] for p, j in zip(top_p[i], top_i[i])],
                "finite": finite[i],
            })

    def predict(self, batch: Batch) -> dict[str, list[dict]]:
        """``vl predict``: the answer of each (video, question) with the top answers and their probabilities."""
        vocab = self._require_vocab()
        logits = self.answer_logits(batch).float()  # (B, K)
        require_finite(logits, "answer logits")
        top_p, top_i = logits.softmax(dim=1).topk(min(self.predictions_top, logits.shape[1]), dim=1)  # (B, k)
        questions = batch.texts or [""] * batch.batch_size
        return {"rows": [{"key": batch.keys[i], "question": questions[i], "prediction": vocab.decode(int(top_i[i, 0])),
                          "top": [[vocab.decode(int(j)), round(float(p), 4)] for p, j in zip(top_p[i], top_i[i])]}
                         for i in range(batch.batch_size)]}

    def finish_eval(self, split: str) -> None:
        outputs = self.take_outputs()
        if not outputs:
            return
        require_finite_outputs(split, outputs, "answer logits")
        vocab = self._require_vocab()
        types = [o["question_type"] for o in outputs]
        metrics = qa_accuracy([o["pred_id"] for o in outputs], [o["answer"] for o in outputs], vocab,
                              types if any(t is not None for t in types) else None)
        rows = [{"key": o["key"], "question": o["question"], "answer": o["answer"],
                 "prediction": vocab.decode(o["pred_id"]), "correct": vocab.encode(o["answer"]) == o["pred_id"],
                 "in_vocab": o["answer"] in vocab, "question_type": o["question_type"], "top": o["top"]}
                for o in outputs]
        self.report(split, metrics, rows, qa_summary(split, metrics, len(vocab)))

    # ---- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vl_answer_vocab"] = None if self.vocab is None else list(self.vocab.answers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("vl_answer_vocab"):
            self.set_vocab(AnswerVocab(checkpoint["vl_answer_vocab"]))


def qa_summary(split: str, metrics: dict[str, float], vocab_size: int) -> str:
    """Lines a person reads: accuracy next to the majority baseline, OOV share, per-type accuracy."""
    n = int(metrics["num_questions"])
    lines = [f"{split}: open-ended QA over {n} questions, {vocab_size} answer classes",
             f"  accuracy {metrics['accuracy']:6.2f}%   majority-answer baseline {metrics['majority_accuracy']:6.2f}%"
             f"   out-of-vocabulary answers {metrics['oov_rate']:.2f}% (counted wrong)"]
    for key, value in sorted(metrics.items()):
        if key.startswith("accuracy/"):
            qtype = key.split("/", 1)[1]
            lines.append(f"  {qtype:<12} {value:6.2f}%   ({int(metrics[f'num_questions/{qtype}'])} questions)")
    return "\n".join(lines)

