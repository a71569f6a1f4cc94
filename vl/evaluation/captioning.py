"""Captioning scores as pure functions: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap.

`caption_metrics(predictions, references)` gives the scores in percent, as papers report them. Captions are
tokenized with the Stanford PTB tokenizer pycocoevalcap ships (a Java program), and METEOR is a Java program
too. Where `java` is missing, captions are tokenized by `simple_tokenize` (lowercase, punctuation dropped:
scores stay close to, but not exactly, the official ones) and METEOR is reported as `None` with a warning.
SPICE is not used: it downloads Stanford CoreNLP on first use. CIDEr's document frequencies come from the
references being scored, so score a whole evaluation set at once, never one video at a time.
"""

from __future__ import annotations

import re
import shutil
import warnings
from typing import Hashable, Mapping, Sequence

_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*|'[^\W_]+")  # words, hyphenated words, clitics ('s, 're)


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
