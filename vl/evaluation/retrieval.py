"""Retrieval metrics shared by pretraining validation, the retrieval task and the search index.

Every ranking function refuses non-finite scores (``NonFiniteError``): a comparison with NaN is false, so
a model with NaN weights would otherwise rank every right answer first and score R@1 100%.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """Embeddings or scores hold NaN or infinity (a model with non-finite weights or inputs): nothing to rank."""


def nonfinite_message(what: str, bad: int, total: int, unit: str = "rows") -> str:
    """The one-line message of a ``NonFiniteError``: which values, how many of how many were non-finite."""
    return (f"non-finite {what}: {bad} of {total} {unit} hold NaN or infinity, so nothing can be ranked "
            "(the model's weights or its inputs are not finite; check the checkpoint)")


def require_finite(x: Any, what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` unless every entry of ``x`` (a tensor or array; rows along
    dim 0) is finite. The message counts the rows that hold a NaN or infinity."""
    if isinstance(x, Tensor):
        finite = torch.isfinite(x.detach())
        if bool(finite.all()):
            return
        rows = finite.reshape(finite.shape[0], -1).all(dim=1) if finite.ndim > 1 else finite
        bad, total = int((~rows).sum()), int(rows.numel())
    else:
        finite = np.isfinite(np.asarray(x))
        if bool(finite.all()):
            return
        rows = finite.reshape(finite.shape[0], -1).all(axis=1) if finite.ndim > 1 else finite
        bad, total = int((~rows).sum()), int(rows.size)
    raise NonFiniteError(nonfinite_message(what, bad, total))


def gt_ranks(sim: Tensor, gt: Tensor, what: str = "similarity scores") -> Tensor:
    """1-based rank of the right column for each row.

    sim: (Nq, Nc) scores, higher is better; gt: (Nq,) column index of each query's right answer.
    Ties count against the query (a constant scorer gets the worst rank, never a lucky R@1). Raises
    ``NonFiniteError`` (naming ``what``) when a score is NaN or infinite.
    """
    require_finite(sim, what)
    right = sim.gather(1, gt.view(-1, 1))  # (Nq, 1)
    return (sim >= right).sum(dim=1)  # (Nq,) >= 1, since the right column ties with itself


def best_ranks(sim: Tensor, positives: Tensor, what: str = "similarity scores") -> Tensor:
    """1-based rank of the best-ranked positive for each row, for rows with several right columns.

    sim: (Nq, Nc); positives: (Nq, Nc) bool with at least one True per row. Raises ``NonFiniteError``
    (naming ``what``) when a score is NaN or infinite.
    """
    require_finite(sim, what)
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every query needs at least one positive column")
    best_pos = sim.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # (Nq, 1)
    return (sim.masked_fill(positives, float("-inf")) >= best_pos).sum(dim=1) + 1  # (Nq,)


def rank_metrics(ranks: Tensor, ks: tuple[int, ...] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """R@k (percent), median rank and mean rank from 1-based ranks."""
    ranks = ranks.float()
    out = {f"{prefix}R@{k}": 100.0 * (ranks <= k).float().mean().item() for k in ks}
    out[f"{prefix}MdR"] = ranks.median().item()
    out[f"{prefix}MnR"] = ranks.mean().item()
    return out


def retrieval_metrics(
    sim_t2v: Tensor, text_video_index: Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Text-to-video and video-to-text metrics, several captions per video allowed.

    sim_t2v: (Nt, Nv) text-video scores; text_video_index: (Nt,) the video each text describes.
    Video-to-text counts a video as retrieved at the rank of its best-ranked caption.
    Also returns the chance level of t2v R@k (k / Nv, in percent) as `t2v_chance_R@k`. Raises
    ``NonFiniteError`` when a score is NaN or infinite.
    """
    t2v, v2t = retrieval_ranks(sim_t2v, text_video_index)
    out = rank_metrics(t2v, ks, prefix="t2v_")
    out.update(rank_metrics(v2t, ks, prefix="v2t_"))
    num_videos = sim_t2v.shape[1]
    for k in ks:
        out[f"t2v_chance_R@{k}"] = 100.0 * min(k, num_videos) / num_videos
    return out


def retrieval_ranks(sim_t2v: Tensor, text_video_index: Tensor) -> tuple[Tensor, Tensor]:
    """Per-query 1-based ranks behind ``retrieval_metrics``: text-to-video (Nt,) and video-to-text (one per
    video that has a text, at its best-ranked caption). Raises ``NonFiniteError`` for a non-finite score."""
    sim_t2v = sim_t2v.float()
    require_finite(sim_t2v, "text-to-video similarity scores")
    positives = torch.zeros_like(sim_t2v, dtype=torch.bool).T  # (Nv, Nt)
    positives[text_video_index, torch.arange(len(text_video_index), device=sim_t2v.device)] = True
    has_text = positives.any(dim=1)
    return gt_ranks(sim_t2v, text_video_index), best_ranks(sim_t2v.T[has_text], positives[has_text])


def sign_test_worse(worse: int, better: int) -> float:
    """One-sided exact sign test: the probability that at least ``worse`` of ``worse + better`` changed
    queries get worse if a change were as likely to help as to hurt, P(X >= worse), X ~ Binomial(n, 1/2).
    Below 0.05: the change makes rankings measurably worse. 1.0 when nothing changed."""
    n = worse + better
    return sum(math.comb(n, i) for i in range(worse, n + 1)) / 2 ** n


def rank_changes(before: Tensor, after: Tensor, prefix: str = "") -> dict[str, float]:
    """How a re-ranking moved each query, from 1-based ranks (Nq,) before and after it: queries moved up and
    down, R@1 hits gained and lost, and ``sign_test_worse`` of each (``p_worse``, ``hits_p_worse``): a
    finite test set cannot tell a change of a few queries from noise, and these say what it can tell."""
    if before.shape != after.shape:
        raise ValueError(f"rank_changes: {tuple(before.shape)} ranks before, {tuple(after.shape)} after")
    up, down = int((after < before).sum()), int((after > before).sum())
    gained, lost = int(((after == 1) & (before > 1)).sum()), int(((before == 1) & (after > 1)).sum())
    return {f"{prefix}queries_up": float(up), f"{prefix}queries_down": float(down),
            f"{prefix}p_worse": sign_test_worse(down, up), f"{prefix}hits_gained": float(gained),
            f"{prefix}hits_lost": float(lost), f"{prefix}hits_p_worse": sign_test_worse(lost, gained)}


def order_tie_tolerance(*dtypes: torch.dtype) -> float:
    """The score difference below which a caption's scores against a clip in two frame orders count as a tie,
    for embeddings computed in ``dtypes``: the machine epsilon of the least precise of them, and at least
    1e-6. An order-blind encoder pools a reordered clip to the same embedding up to the rounding of its sums
    taken in another order (about 1e-8 in float32, 1e-3 in bfloat16); such a difference is no preference."""
    return max([1e-6] + [torch.finfo(d).eps for d in dtypes if d.is_floating_point])


def order_outcomes(true_scores: Tensor, altered_scores: Tensor, tie_tol: float = 0.0) -> Tensor:
    """Per caption, whether it prefers its clip in true frame order: 1 where ``true_scores`` beats
    ``altered_scores`` (the same frames reversed or shuffled) by more than ``tie_tol``, 0 where it loses by
    more, 1/2 for a tie. true_scores, altered_scores: (N,) -> (N,) float. Raises ``NonFiniteError`` when a
    score is NaN or infinite (NaN compares false and would count as a loss, or a tie)."""
    if true_scores.shape != altered_scores.shape:
        raise ValueError(f"order_outcomes: {tuple(true_scores.shape)} true-order scores, "
                         f"{tuple(altered_scores.shape)} altered-order scores")
    require_finite(true_scores, "true-order scores")
    require_finite(altered_scores, "altered-order scores")
    diff = true_scores.float() - altered_scores.float()  # (N,)
    return torch.where(diff.abs() <= tie_tol, torch.full_like(diff, 0.5), (diff > 0).float())


def order_accuracy(true_scores: Tensor, altered_scores: Tensor, tie_tol: float = 0.0) -> float:
    """Percent of captions that score their clip in true frame order above the same frames in an altered
    order (``order_outcomes``: a tie counts one half). Chance is 50%, and an encoder blind to frame order
    scores exactly 50% (every caption ties). true_scores, altered_scores: (N,), N >= 1."""
    if true_scores.numel() == 0:
        raise ValueError("order_accuracy: no captions to score")
    return 100.0 * order_outcomes(true_scores, altered_scores, tie_tol).double().mean().item()
