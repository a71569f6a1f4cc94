"""Text of a sample: caption choice, question-answer fields (DESIGN §2) and tokenisation.

Captions come from ``captions`` in ``KEY.json`` when present, else from ``caption`` and the numbered
``caption_N`` fields (video2dataset's MSR-VTT recipe), else from ``KEY.txt``. Training draws one at
random; evaluation keeps every one as its own text row. QA samples carry ``qa`` items, either
open-ended ``{"question", "answer"}`` or multiple-choice ``{"question", "choices", "answer_idx"}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from datapipes.decode import SkipSample

TextField = Literal["caption", "qa", "mc"]
TEXT_FIELDS: tuple[str, ...] = ("caption", "qa", "mc")
CAPTION_N = re.compile(r"caption_(\d+)")  # numbered caption columns: caption_0, caption_1, ...


class HFTokenizer(Protocol):
    """What the pipeline needs from a tokenizer: the Hugging Face ``__call__`` (fast tokenizers pickle)."""

    def __call__(self, text: Any, text_pair: Any = None, **kwargs: Any) -> Any: ...


def decode_text(data: Optional[bytes]) -> Optional[str]:
    """UTF-8 text of ``KEY.txt`` stripped of whitespace; None when absent.

    Raises ``SkipSample("bad_text_encoding")`` for bytes that are not UTF-8.
    """
    if data is None:
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise SkipSample("bad_text_encoding", str(e)) from e


def caption_list(meta: dict, txt: Optional[str]) -> list[str]:
    """All non-empty captions of a sample, in order: ``meta["captions"]``; else ``meta["caption"]`` followed
    by ``caption_0``, ``caption_1``, ... (video2dataset's MSR-VTT recipe saves its 20 captions as those
    columns); else ``txt``."""
    raw = meta.get("captions")
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raw = [meta["caption"]] if isinstance(meta.get("caption"), str) else []
        raw += [meta[k] for k in sorted((k for k in meta if CAPTION_N.fullmatch(k)), key=lambda k: int(k[8:]))]
    if not any(isinstance(c, str) and c.strip() for c in raw):
        raw = [txt]
    return [c.strip() for c in raw if isinstance(c, str) and c.strip()]


def choose_caption(captions: list[str], rng: np.random.Generator) -> str:
    """One caption drawn uniformly at random (training)."""
    return captions[int(rng.integers(len(captions)))]


@dataclass
class QAItem:
    """One question of a sample: open-ended (``answer``) or multiple-choice (``choices``, ``answer_idx``)."""

    question: str
    answer: Optional[str] = None
    choices: Optional[list[str]] = None
    answer_idx: Optional[int] = None
    question_type: Optional[str] = None


def qa_items(meta: dict, field: TextField) -> list[QAItem]:
    """The questions of ``meta["qa"]`` of one kind: open-ended for ``qa``, multiple-choice for ``mc``.

    Items of the other kind are ignored; malformed items raise ``SkipSample("bad_qa")``.
    """
    raw = meta.get("qa") or []
    if not isinstance(raw, list):
        raise SkipSample("bad_qa", f"qa must be a list, got {type(raw).__name__}")
    items = []
    for q in raw:
        if not isinstance(q, dict) or not isinstance(q.get("question"), str):
            raise SkipSample("bad_qa", f"qa item without a question: {q!r:.100}")
        qtype = q.get("question_type", q.get("type"))
        qtype = None if qtype is None else str(qtype)
        if "choices" in q and field == "mc":
            choices, idx = q["choices"], q.get("answer_idx", -1)
            if not isinstance(choices, list) or not choices or not isinstance(idx, int):
                raise SkipSample("bad_qa", f"multiple-choice item needs choices and answer_idx: {q!r:.100}")
            items.append(QAItem(q["question"], None, [str(c) for c in choices], idx, qtype))
        elif "choices" not in q and field == "qa":
            if "answer" not in q:
                raise SkipSample("bad_qa", f"open-ended item without an answer: {q!r:.100}")
            items.append(QAItem(q["question"], str(q["answer"]), None, None, qtype))
    return items


class Tokenize:
    """Tokenise text with a Hugging Face tokenizer, padded to ``max_len`` so batches have a fixed shape."""

    def __init__(self, tokenizer: HFTokenizer, max_len: int = 32) -> None:
        if max_len < 2:
            raise ValueError(f"max_text_len must be at least 2, got {max_len}")
        self.tokenizer = tokenizer
        self.max_len = max_len

    def __call__(self, texts: list[str], pairs: Optional[list[str]] = None) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, both (N, max_len) long; ``pairs`` makes (text, pair) inputs."""
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism
        out = self.tokenizer(
            texts,
            pairs,
            padding="max_length",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        return out["input_ids"].long(), out["attention_mask"].long()

    def choices(self, questions: list[str], choices: list[list[str]]) -> tuple[Tensor, Tensor]:
        """(question, choice) pairs -> ids and mask (B, K, L); rows past a sample's choices are all zero."""
        k = max(len(c) for c in choices)
        flat_q = [q for q, cs in zip(questions, choices) for _ in cs]
        flat_c = [c for cs in choices for c in cs]
        ids, mask = self(flat_q, flat_c)  # (sum K_i, L)
        out_ids = torch.zeros(len(questions), k, self.max_len, dtype=torch.long)
        out_mask = torch.zeros_like(out_ids)
        row = 0
        for i, cs in enumerate(choices):
            out_ids[i, : len(cs)] = ids[row : row + len(cs)]
            out_mask[i, : len(cs)] = mask[row : row + len(cs)]
            row += len(cs)
        return out_ids, out_mask  # (B, K, L)
