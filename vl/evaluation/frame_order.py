"""Whether a model uses the order of the frames (DESIGN §10), as pure functions over embeddings.

Each clip is embedded a second and third time from the same decoded frames, reversed in time and in a fixed
shuffled order (``frame_order_embeddings``), and each caption's score against the true order is compared with
its score against the altered one (``time_order_metrics``): ``reversal_acc`` and ``shuffle_acc``, the percent
of captions that prefer the true order (chance 50%), overall and over the captions the data flags as
temporal or not (``caption_temporal_flags``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from vl.evaluation.retrieval import order_accuracy, require_finite

SHUFFLE_SEED = 0  # seed of the shuffled frame order: the same on every run, rank and checkpoint


def reversed_order(n: int) -> Tensor:
    """(n,) the frame order of n frames played backwards."""
    return torch.arange(n - 1, -1, -1)


@functools.lru_cache(maxsize=None)
def shuffled_order(n: int) -> Tensor:
    """(n,) a fixed permutation of n frames (seeded by ``SHUFFLE_SEED``) that is neither the identity nor the
    reversal. Fewer than 3 frames have no such order: the identity then (``MIN_FRAMES`` leaves them out)."""
    identity = torch.arange(n)
    if n < 3:
        return identity
    g = torch.Generator().manual_seed(SHUFFLE_SEED)
    while True:  # n >= 3: at least 4 of the n! orders qualify
        perm = torch.randperm(n, generator=g)
        if not (torch.equal(perm, identity) or torch.equal(perm, reversed_order(n))):
            return perm


FRAME_ORDERS: dict[str, Callable[[int], Tensor]] = {"reversal": reversed_order, "shuffle": shuffled_order}
MIN_FRAMES = {"reversal": 2, "shuffle": 3}  # real frames a clip needs for the altered order to differ


def reorder_frames(video: Tensor, frame_mask: Optional[Tensor], order: Callable[[int], Tensor]) -> Tensor:
    """video (B, T, C, H, W) with the n real frames of each clip (``frame_mask`` (B, T) True; None: every
    frame) put in ``order(n)``, and padded frames kept where they are (at the end), so that the frame mask
    still describes the result -> (B, T, C, H, W). A copy: ``video`` is left unchanged."""
    B, T = video.shape[:2]
    if frame_mask is None:  # every clip has all T frames: one order for the batch, no per-clip loop
        return video[:, order(T).to(video.device)]
    mask = frame_mask.detach().bool().cpu()
    index = torch.arange(T).repeat(B, 1)  # (B, T) source frame of each position
    for i in range(B):
        real = mask[i].nonzero().flatten()  # (n,) positions of the real frames
        index[i, real] = real[order(len(real))]
    rows = torch.arange(B, device=video.device)[:, None]  # (B, 1)
    return video[rows, index.to(video.device)]  # (B, T, C, H, W)


def real_frame_counts(video: Tensor, frame_mask: Optional[Tensor]) -> Tensor:
    """(B,) long: the number of real frames of each clip of video (B, T, ...)."""
    if frame_mask is None:
        return torch.full((video.shape[0],), video.shape[1], dtype=torch.long, device=video.device)
    return frame_mask.long().sum(dim=1)


def caption_temporal_flags(meta: list[dict], captions: list[str], index: Tensor, joined: bool = False) -> Tensor:
    """(Nt,) int8 per text row: 1 where its clip's json says the caption takes time to understand, 0 where
    it says it does not, -1 where it says nothing. Only the json says so, never the caption's words.

    The field is ``temporal``: a bool for every caption of the clip, or a list of bools, one per entry of
    ``captions``. meta: (B,) the clips' json (``Batch.meta``; missing rows say nothing); captions: (Nt,) the
    text rows; index: (Nt,) the clip of each. ``joined``: each text row is all its clip's captions joined
    (paragraph retrieval), temporal if any of them is. Raises ``ValueError`` for a malformed field."""
    out = torch.full((len(captions),), -1, dtype=torch.int8)
    for j, (caption, clip) in enumerate(zip(captions, index.tolist())):
        info = meta[clip] if clip < len(meta) and isinstance(meta[clip], dict) else {}
        flag = info.get("temporal")
        if flag is None:
            continue
        if isinstance(flag, bool):
            out[j] = int(flag)
            continue
        listed = info.get("captions")
        if not (isinstance(flag, list) and all(isinstance(f, bool) for f in flag) and isinstance(listed, list)
                and len(flag) == len(listed)):
            raise ValueError(f"sample {info.get('key', clip)!r}: json 'temporal' must be a bool or a list of bools "
                             f"with one entry per caption of 'captions'; got {flag!r}")
        if joined:
            out[j] = int(any(flag))
            continue
        match = [f for c, f in zip(listed, flag) if isinstance(c, str) and c.strip() == caption]
        if match:
            out[j] = int(match[0])
    return out


@dataclass
class FrameOrderProbe:
    """One batch's clips embedded with their frames re-ordered, and what scoring them needs."""

    video: dict[str, Tensor]  # order name ("reversal", "shuffle") -> (B, E) embeddings of the re-ordered clips
    frames: Tensor  # (B,) long: real frames of each clip (a clip with too few has no altered order)
    temporal: Tensor  # (Nt,) int8 per text row: 1 temporal caption, 0 not, -1 unknown (caption_temporal_flags)


def frame_order_embeddings(embed: Callable[[Tensor], Tensor], video: Tensor, frame_mask: Optional[Tensor],
                           temporal: Tensor) -> FrameOrderProbe:
    """Embed the batch's decoded clips (B, T, C, H, W) again in every order of ``FRAME_ORDERS`` with
    ``embed`` (a re-ordered clip (B, T, C, H, W) -> (B, E); the frame mask is unchanged by re-ordering). No
    second decode: the same frames, re-ordered in memory. temporal: (Nt,) as ``caption_temporal_flags``."""
    altered = {name: embed(reorder_frames(video, frame_mask, order)) for name, order in FRAME_ORDERS.items()}
    return FrameOrderProbe(altered, real_frame_counts(video, frame_mask), temporal)


TEMPORAL_GROUPS = ((1, "temporal"), (0, "nontemporal"))


def time_order_metrics(text: Tensor, video: Tensor, index: Tensor, order: Optional[dict]) -> dict[str, float]:
    """``<order>_acc`` (percent of captions that score their clip in true frame order above it in ``order``,
    ties one half: ``vl.evaluation.retrieval.order_accuracy``) and ``<order>_captions`` (how many were scored), over
    captions whose clip has at least ``MIN_FRAMES[order]`` real frames; with ``_temporal`` and
    ``_nontemporal`` suffixes, the same over the captions the data flags so (``caption_temporal_flags``).

    text (Nt, E), video (Nv, E) true-order embeddings; index (Nt,) each caption's clip; order: as
    ``vl.lit.evaluation.RetrievalAccumulator.gathered_order`` (None: no metrics). An order no clip can take is left out.
    Raises ``NonFiniteError`` for a NaN or infinite re-ordered embedding.
    """
    if order is None:
        return {}
    true = (text * video[index]).sum(dim=-1)  # (Nt,) each caption against its clip in true order
    frames = order["frames"].to(index.device)[index]  # (Nt,) real frames of each caption's clip
    temporal, tie_tol = order["temporal"].to(index.device), order["tie_tol"]  # (Nt,)
    out: dict[str, float] = {}
    for name, alt in order["altered"].items():
        require_finite(alt, f"{name} video embeddings")
        score = (text * alt[index]).sum(dim=-1)  # (Nt,) against the same clip re-ordered
        valid = frames >= MIN_FRAMES[name]  # (Nt,)
        groups = [("", valid)] + [(f"_{g}", valid & (temporal == flag)) for flag, g in TEMPORAL_GROUPS]
        for suffix, keep in groups:
            if bool(keep.any()):
                out[f"{name}_acc{suffix}"] = order_accuracy(true[keep], score[keep], tie_tol)
                out[f"{name}_captions{suffix}"] = float(keep.sum())
    return out


def time_order_summary(metrics: dict[str, float], suffix: str = "") -> str:
    """``reversal 52.08% (96 captions), shuffle 61.46% (96 captions)`` from the ``<order>_acc<suffix>`` and
    ``<order>_captions<suffix>`` metrics; "" when there are none."""
    return ", ".join(f"{name} {metrics[f'{name}_acc{suffix}']:.2f}% "
                     f"({metrics[f'{name}_captions{suffix}']:.0f} captions)"
                     for name in FRAME_ORDERS if f"{name}_acc{suffix}" in metrics)
