"""Task metrics (vl/evaluation/captioning.py, vl/evaluation/qa.py): captioning scores through pycocoevalcap,
QA accuracy by hand."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from vl.evaluation import captioning as metrics
from vl.evaluation.captioning import caption_metrics
from vl.evaluation.qa import OOV, AnswerVocab, multiple_choice_accuracy, qa_accuracy

REFERENCES = {
    "video0": ["a man is driving a red car down the road", "a person drives a car"],
    "video1": ["a woman is slicing tomatoes in a kitchen", "someone cuts vegetables"],
    "video2": ["two dogs are playing in the snow", "dogs run around outside"],
    "video3": ["a boy plays the guitar on stage", "a kid performs a song"],
}
IDENTICAL = {k: v[0] for k, v in REFERENCES.items()}
UNRELATED = {
    "video0": "purple elephants juggle seventeen teacups",
    "video1": "the stock exchange closed early yesterday",
    "video2": "quantum chromodynamics describes quarks",
    "video3": "an orchestra tunes violins backstage quietly",
}
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")


@pytest.fixture(scope="module")
def java_scores():
    """Identical captions scored once with Java (METEOR's JVM takes seconds to start)."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    return caption_metrics(IDENTICAL, REFERENCES)


def no_java_scores(monkeypatch, predictions):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = caption_metrics(predictions, REFERENCES)
    return scores, [str(w.message) for w in caught]


@needs_java
def test_identical_captions_score_top_marks_with_java(java_scores):
    assert java_scores["BLEU-4"] == pytest.approx(100.0, abs=1e-3)
    assert java_scores["ROUGE-L"] == pytest.approx(100.0, abs=1e-3)
    assert java_scores["METEOR"] == pytest.approx(100.0, abs=1e-3)
    assert java_scores["CIDEr"] > 100.0  # CIDEr is unbounded; exact matches of rare n-grams score high


def test_scores_order_identical_mixed_unrelated(monkeypatch):
    mixed_predictions = {k: (IDENTICAL if i % 2 else UNRELATED)[k] for i, k in enumerate(REFERENCES)}
    identical, _ = no_java_scores(monkeypatch, IDENTICAL)
    mixed, _ = no_java_scores(monkeypatch, mixed_predictions)
    unrelated, _ = no_java_scores(monkeypatch, UNRELATED)
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert unrelated[name] < mixed[name] < identical[name], name


def test_unrelated_captions_score_near_zero_without_java(monkeypatch):
    scores, _ = no_java_scores(monkeypatch, UNRELATED)
    assert scores["BLEU-4"] < 1e-3 and scores["CIDEr"] < 1.0
    assert scores["ROUGE-L"] < 20.0  # only stray words like "a" / "the" can match


def test_without_java_meteor_is_none_and_the_rest_still_run(monkeypatch):
    scores, messages = no_java_scores(monkeypatch, IDENTICAL)
    assert scores["METEOR"] is None
    assert any("java not found" in m and "METEOR" in m for m in messages)
    assert scores["BLEU-4"] == pytest.approx(100.0, abs=1e-3) and scores["CIDEr"] > 100.0
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}


def test_failing_java_scorers_degrade_to_fallbacks(monkeypatch):
    """A JVM that dies mid-run: METEOR becomes None (no hang), PTB falls back to the simple tokenizer."""
    import threading

    from pycocoevalcap.meteor import meteor
    from pycocoevalcap.tokenizer import ptbtokenizer

    class DyingMeteor:
        def __init__(self):
            self.lock = threading.Lock()

        def compute_score(self, gts, res):
            self.lock.acquire()
            return float(b""), []  # what an EOF from a dead JVM gives

    monkeypatch.setattr(metrics, "java_available", lambda: True)
    monkeypatch.setattr(meteor, "Meteor", DyingMeteor)
    monkeypatch.setattr(ptbtokenizer.PTBTokenizer, "tokenize", lambda self, captions: {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = caption_metrics(IDENTICAL, REFERENCES)
    messages = " ".join(str(w.message) for w in caught)
    assert scores["METEOR"] is None and "METEOR unavailable" in messages
    assert "simple tokenizer" in messages and scores["BLEU-4"] == pytest.approx(100.0, abs=1e-3)


def test_simple_tokenizer_matches_ptb_conventions():
    assert metrics.simple_tokenize("A man's T-shirt, really!") == "a man 's t-shirt really"


@needs_java
def test_ptb_tokenizer_lowercases_and_strips_punctuation():
    out = metrics.tokenize_captions({"a": ["A man's dog, running!"], "b": ["", "Hello."]}, use_java=True)
    assert out == {"a": ["a man 's dog running"], "b": ["", "hello"]}


def test_caption_inputs_are_checked():
    with pytest.raises(ValueError, match="keys differ"):
        caption_metrics({"video0": "x"}, REFERENCES)
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics({"video0": "x"}, {"video0": "a bare string"})


# ---------------------------------------------------------------- QA

TRAIN_ANSWERS = ["man", "man", "man", "dog", "dog", "car", "Man ", "ball"]


def test_vocab_orders_by_frequency_and_caps_at_top_k(tmp_path):
    vocab = AnswerVocab.from_answers(TRAIN_ANSWERS, top_k=3)
    assert vocab.answers == ["man", "dog", "car"]  # "Man " normalises to "man"; ties keep first-seen order
    assert vocab.encode("DOG") == 1 and vocab.encode("ball") == OOV and "ball" not in vocab
    assert vocab.decode(2) == "car"
    vocab.save(tmp_path / "answers.json")
    assert AnswerVocab.load(tmp_path / "answers.json").answers == vocab.answers
    assert AnswerVocab.from_answers(TRAIN_ANSWERS, top_k=None, min_count=2).answers == ["man", "dog"]


def test_oov_answers_count_as_wrong_never_dropped():
    vocab = AnswerVocab.from_answers(TRAIN_ANSWERS, top_k=3)
    answers = ["man", "dog", "ball", "zebra"]  # the last two are outside the vocabulary
    preds = [vocab.encode("man"), vocab.encode("dog"), 0, 1]
    out = qa_accuracy(preds, answers, vocab)
    assert out["accuracy"] == pytest.approx(50.0)  # 2 of 4, not 2 of 2
    assert out["num_questions"] == 4
    assert out["oov_rate"] == pytest.approx(50.0)
    assert out["majority_accuracy"] == pytest.approx(25.0)  # always "man"


def test_per_type_accuracy_and_tensor_predictions():
    vocab = AnswerVocab.from_answers(TRAIN_ANSWERS, top_k=3)
    answers = ["man", "dog", "car", "man", "ball"]
    types = ["who", "what", "what", "who", "what"]
    preds = torch.tensor([0, 1, 0, 1, 2])  # right, right, wrong, wrong, wrong (ball is OOV)
    out = qa_accuracy(preds, answers, vocab, question_types=types)
    assert out["accuracy"] == pytest.approx(40.0)
    assert out["accuracy/who"] == pytest.approx(50.0) and out["num_questions/who"] == 2
    assert out["accuracy/what"] == pytest.approx(100.0 / 3)
    with pytest.raises(ValueError, match="question types"):
        qa_accuracy(preds, answers, vocab, question_types=types[:2])


def test_multiple_choice_accuracy():
    out = multiple_choice_accuracy([0, 2, 4, 1], torch.tensor([0, 2, 3, 3]), question_types=["a", "a", "b", "b"])
    assert out["accuracy"] == pytest.approx(50.0)
    assert out["accuracy/a"] == pytest.approx(100.0) and out["accuracy/b"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="predictions"):
        multiple_choice_accuracy([0], [0, 1])
