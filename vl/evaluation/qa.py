"""Question-answering accuracy as pure functions.

Open-ended QA: `AnswerVocab` holds the top-K training answers; `qa_accuracy` scores predicted answer ids,
counting every question whose answer is outside the vocabulary as wrong (never dropped), overall and per
question type, next to the majority-answer baseline. `multiple_choice_accuracy` scores multiple-choice QA
the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

OOV = -1  # AnswerVocab.encode of an answer outside the vocabulary

def normalize_answer(answer: str) -> str:
    """Lowercase, whitespace collapsed: how answers are compared."""
    return " ".join(str(answer).lower().split())


class AnswerVocab:
    """The answer classes of open-ended QA, most frequent training answer first (index 0)."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = [normalize_answer(a) for a in answers]
        if len(set(self.answers)) != len(self.answers) or "" in self.answers:
            raise ValueError("AnswerVocab: answers must be distinct and non-empty after normalization")
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def from_answers(cls, answers: Iterable[str], top_k: int | None = 1000, min_count: int = 1) -> "AnswerVocab":
        """The `top_k` most frequent answers seen at least `min_count` times (ties: first seen first)."""
        counts = Counter(a for a in map(normalize_answer, answers) if a)
        ranked = [a for a, n in counts.most_common() if n >= min_count]
        return cls(ranked if top_k is None else ranked[:top_k])

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self._index

    def encode(self, answer: str) -> int:
        """Class index of an answer; `OOV` (-1) when it is outside the vocabulary."""
        return self._index.get(normalize_answer(answer), OOV)

    def decode(self, index: int) -> str:
        """The answer of a class index (IndexError outside 0..len-1)."""
        if not 0 <= index < len(self.answers):
            raise IndexError(f"answer index {index} outside 0..{len(self.answers) - 1}")
        return self.answers[index]

    def save(self, path: str | Path) -> None:
        """Write the answers, in index order, as a JSON list."""
        Path(path).write_text(json.dumps(self.answers, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "AnswerVocab":
        """Read a vocabulary written by `save`."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))


def _as_ints(values: Any) -> list[int]:
    """A list of ints from a sequence, a numpy array or a torch tensor."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [int(v) for v in values]


def _grouped_accuracy(correct: Sequence[bool], question_types: Sequence[Any] | None) -> dict[str, float]:
    """Accuracy (percent) overall and per question type, with the question counts."""
    n = len(correct)
    if n == 0:
        raise ValueError("accuracy of zero questions is undefined")
    out = {"accuracy": 100.0 * sum(correct) / n, "num_questions": float(n)}
    if question_types is None:
        return out
    if len(question_types) != n:
        raise ValueError(f"{len(question_types)} question types for {n} questions")
    by_type: dict[str, list[bool]] = {}
    for ok, qtype in zip(correct, question_types):
        by_type.setdefault(str(qtype), []).append(ok)
    for qtype, oks in sorted(by_type.items()):
        out[f"accuracy/{qtype}"] = 100.0 * sum(oks) / len(oks)
        out[f"num_questions/{qtype}"] = float(len(oks))
    return out


def qa_accuracy(
    pred_ids: Sequence[int] | Any,
    answers: Sequence[str],
    vocab: AnswerVocab,
    question_types: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Open-ended QA accuracy (percent) of predicted answer ids against the ground-truth answer strings.

    A question whose answer is outside `vocab` counts as wrong; `oov_rate` says how many there were
    (100 - oov_rate is the best reachable accuracy). `majority_accuracy` is the accuracy of always
    answering the most frequent training answer (vocab index 0). Per-type keys: `accuracy/<type>`.
    """
    preds = _as_ints(pred_ids)
    if len(preds) != len(answers):
        raise ValueError(f"{len(preds)} predictions for {len(answers)} answers")
    gold = [vocab.encode(a) for a in answers]
    out = _grouped_accuracy([g != OOV and p == g for p, g in zip(preds, gold)], question_types)
    n = len(gold)
    out["oov_rate"] = 100.0 * sum(g == OOV for g in gold) / n
    out["majority_accuracy"] = 100.0 * sum(g == 0 for g in gold) / n if len(vocab) else 0.0
    return out


def multiple_choice_accuracy(
    pred_idx: Sequence[int] | Any, answer_idx: Sequence[int] | Any, question_types: Sequence[Any] | None = None
) -> dict[str, float]:
    """Multiple-choice accuracy (percent) of chosen indices, overall and per question type."""
    preds, gold = _as_ints(pred_idx), _as_ints(answer_idx)
    if len(preds) != len(gold):
        raise ValueError(f"{len(preds)} predictions for {len(gold)} answers")
    return _grouped_accuracy([p == g for p, g in zip(preds, gold)], question_types)
