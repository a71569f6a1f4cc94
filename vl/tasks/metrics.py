"""Task metrics as pure functions: captioning scores (pycocoevalcap) and QA accuracy.

Captioning: `caption_metrics(predictions, references)` gives BLEU-1..4, METEOR, ROUGE-L and CIDEr from
pycocoevalcap, in percent as papers report them. Captions are tokenized with the Stanford PTB tokenizer
pycocoevalcap ships (a Java program), and METEOR is a Java program too. Where `java` is missing,
captions are tokenized by `simple_tokenize` (lowercase, punctuation dropped: scores stay close to, but
not exactly, the official ones) and METEOR is reported as `None` with a warning. SPICE is not used: it
downloads Stanford CoreNLP on first use. CIDEr's document frequencies come from the references being
scored, so score a whole evaluation set at once, never one video at a time.

Open-ended QA: `AnswerVocab` holds the top-K training answers; `qa_accuracy` scores predicted answer
ids, counting every question whose answer is outside the vocabulary as wrong (never dropped), overall
and per question type, next to the majority-answer baseline. `multiple_choice_accuracy` scores
multiple-choice QA the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

OOV = -1  # AnswerVocab.encode of an answer outside the vocabulary
_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*|'[^\W_]+")  # words, hyphenated words, clitics ('s, 're)


# ---------------------------------------------------------------- captioning


def java_available() -> bool:
    """Whether a `java` executable is on PATH (PTB tokenizer and METEOR need one)."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """Lowercase and drop punctuation, splitting clitics as PTB does: "A man's dog!" -> "a man 's dog"."""
    return " ".join(_TOKEN.findall(text.lower()))


def _ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]] | None:
    """pycocoevalcap's PTB tokenization, or None (with a warning) when the Java tokenizer fails."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    try:
        out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    except OSError as err:  # e.g. its temporary file cannot be written next to the jar
        warnings.warn(f"PTB tokenizer failed ({err}); using the simple tokenizer", RuntimeWarning, stacklevel=3)
        return None
    if any(len(out.get(k, [])) != len(v) for k, v in captions.items()):
        warnings.warn("PTB tokenizer returned too few lines; using the simple tokenizer", RuntimeWarning, stacklevel=3)
        return None
    return out


def tokenize_captions(captions: Mapping[Hashable, list[str]], use_java: bool) -> dict[Hashable, list[str]]:
    """Tokenized captions per key: PTB (Java) when `use_java` and it works, else `simple_tokenize`."""
    if use_java:
        out = _ptb_tokenize(captions)
        if out is not None:
            return out
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def _meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> float | None:
    """Corpus METEOR from pycocoevalcap's Java scorer, or None (with a warning) if it fails."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = None
    try:
        scorer = Meteor()
        score, _ = scorer.compute_score(gts, res)
        return float(score)
    except (OSError, ValueError) as err:  # no JVM, JVM died (EOF -> float('') fails), broken pipe
        warnings.warn(f"METEOR unavailable: the Java scorer failed ({err!r})", RuntimeWarning, stacklevel=3)
        return None
    finally:
        if scorer is not None:
            if scorer.lock.locked():  # compute_score failed holding it; __del__ would wait forever
                scorer.lock.release()
            del scorer  # Meteor.__del__ stops its Java process


def _check_caption_inputs(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> None:
    """Same keys on both sides, one string prediction and at least one string reference per key."""
    if not predictions:
        raise ValueError("caption_metrics: no predictions")
    missing, extra = set(references) - set(predictions), set(predictions) - set(references)
    if missing or extra:
        raise ValueError(
            f"caption_metrics: keys differ: {len(missing)} without prediction (e.g. {sorted(map(str, missing))[:3]}), "
            f"{len(extra)} without references (e.g. {sorted(map(str, extra))[:3]})"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"caption_metrics: references[{key!r}] must be a non-empty list of strings")
        if not isinstance(predictions[key], str):
            raise ValueError(f"caption_metrics: predictions[{key!r}] must be a string")


def caption_metrics(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (percent) of one predicted caption per key against its references.

    `METEOR` is None where Java is missing or its scorer fails (a RuntimeWarning says why); the other
    scores are always computed.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_caption_inputs(predictions, references)
    java = java_available()
    if not java:
        warnings.warn(
            "java not found: captions are tokenized without the PTB tokenizer and METEOR is not computed "
            "(install a Java runtime, e.g. openjdk, for the official scores)",
            RuntimeWarning,
            stacklevel=2,
        )
    keys = list(references)
    gts = tokenize_captions({k: list(references[k]) for k in keys}, java)
    res = tokenize_captions({k: [predictions[k]] for k in keys}, java)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, float | None] = {f"BLEU-{n + 1}": 100.0 * float(b) for n, b in enumerate(bleu)}
    meteor = _meteor(gts, res) if java else None
    scores["METEOR"] = None if meteor is None else 100.0 * meteor
    scores["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    return scores


# ---------------------------------------------------------------- open-ended QA


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
