"""Video-text matching (VTM): binary matched / not matched on fused tokens, with ALBEF's hard negatives.

For every video a negative text is drawn with probability softmax(similarity) over the batch's other
texts, and for every text a negative video likewise; the positives never are. The fusion then sees
B positive and 2B negative pairs, and ``model.vtm_head`` classifies its CLS token.

``hard_fraction`` (1.0: ALBEF) mixes that distribution with the uniform one over the non-positives
(0.0: ViLT's, VIOLET's and All-in-one's random negatives): a negative is a hard one with probability
``hard_fraction`` and a random one otherwise. When the dual encoder already ranks well, its hardest
negatives are pairs the fusion cannot yet tell apart, and a fusion trained from scratch on them alone
never leaves the prior (BENCHMARKS.md has the measured losses). Random negatives teach it to match at
all; the hard ones then teach it what the dual encoder confuses.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interfaces import MatchingModel


def check_hard_fraction(hard_fraction: float) -> float:
    """``hard_fraction`` if it is in [0, 1]; ValueError otherwise."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"vtm: hard_fraction must be in [0, 1], got {hard_fraction}")
    return hard_fraction


def sample_negatives(sim_v2t: Tensor, positive_mask: Tensor | None = None,
                     generator: torch.Generator | None = None, hard_fraction: float = 1.0) -> tuple[Tensor, Tensor]:
    """sim_v2t (B, B) (row i: video i against every text) -> (neg_text (B,), neg_video (B,)) indices.

    Negatives are drawn from ``hard_fraction`` x softmax(similarity) + (1 - ``hard_fraction``) x uniform,
    both over the non-positives (the diagonal, plus ``positive_mask`` (B, B) bool where several texts
    describe one video, are excluded), so harder negatives come up more often.
    """
    check_hard_fraction(hard_fraction)
    B = sim_v2t.shape[0]
    if sim_v2t.dim() != 2 or sim_v2t.shape[1] != B:
        raise ValueError(f"vtm: sim_v2t must be square (B, B), got {tuple(sim_v2t.shape)}")
    if B < 2:
        raise ValueError(f"vtm: hard negatives need a batch of at least 2 pairs, got {B}")
    positives = torch.eye(B, dtype=torch.bool, device=sim_v2t.device)
    if positive_mask is not None:
        positives = positives | positive_mask.bool()
    if bool(positives.all(dim=1).any()) or bool(positives.all(dim=0).any()):
        raise ValueError("vtm: some video or text has no negative in the batch (every pair is marked positive)")
    sim = sim_v2t.detach().float()

    def weights(s: Tensor, pos: Tensor) -> Tensor:  # (B, B) row-wise distribution over the non-positives
        hard = s.masked_fill(pos, float("-inf")).softmax(dim=1)
        uniform = (~pos).float() / (~pos).sum(dim=1, keepdim=True)
        return hard_fraction * hard + (1.0 - hard_fraction) * uniform

    weights_v2t = weights(sim, positives)  # over texts
    weights_t2v = weights(sim.t(), positives.t())  # over videos
    neg_text = torch.multinomial(weights_v2t, 1, generator=generator).squeeze(1)  # (B,)
    neg_video = torch.multinomial(weights_t2v, 1, generator=generator).squeeze(1)  # (B,)
    return neg_text, neg_video


def vtm_positives(text_ids: Tensor, references: list[list[str]] | None = None,
                  texts: list[str] | None = None) -> Tensor:
    """(B, B) bool, video i and text j match, so VTM never draws the pair as a negative: text j is token for
    token text i, or (given each clip's ``references`` and the batch's raw ``texts``, ``Batch.texts``) one of
    clip i's captions. The hardest "negatives" are often such true matches."""
    same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)  # (B, B) identical token rows
    if not references or not texts:
        return same
    describes = [[text in refs for text in texts] for refs in map(set, references)]
    return same | torch.tensor(describes, dtype=torch.bool, device=same.device)


MATCH_SCORES = ("vtm+vtc", "vtm+cos", "vtm")


def match_score(log_odds: Tensor, cosine: Tensor, logit_scale: Tensor | float, how: str = "vtm+vtc") -> Tensor:
    """The score a (video, text) pair is ranked by after fusion, from the VTM head's match log-odds and
    the dual encoder's cosine (same shapes): ``vtm+vtc`` log-odds + logit_scale x cosine (the dual encoder's
    logit: both terms are log-odds, so the sum ranks by the product of the two models' odds), ``vtm+cos``
    log-odds + cosine (BLIP's retrieval evaluation), ``vtm`` log-odds alone (ALBEF's)."""
    if how == "vtm+vtc":
        return log_odds + logit_scale * cosine
    if how == "vtm+cos":
        return log_odds + cosine
    if how == "vtm":
        return log_odds
    raise ValueError(f"match score must be one of {MATCH_SCORES}, got {how!r}")


class VTMLoss(nn.Module):
    """``forward(model, video_tokens (B, N, Dv), text_tokens (B, L, Dt), text_mask (B, L), sim_v2t (B, B))
    -> {"vtm_loss", "vtm_acc"}``: cross-entropy of ``model.vtm_head`` over B positive and 2B hard
    negative pairs. ``sim_v2t`` is ``VTCLoss.similarity(...)`` of the same batch (not back-propagated).
    ``video_mask`` (B, N) True for tokens of real frames (``encode_video(...)["token_mask"]``) travels with
    each video into its pairs, so the fusion never attends to a short clip's padded frames.
    ``hard_fraction``: see the module docstring."""

    def __init__(self, hard_fraction: float = 1.0) -> None:
        super().__init__()
        self.hard_fraction = check_hard_fraction(hard_fraction)  # at construction, not at the first step

    def forward(self, model: MatchingModel, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
                sim_v2t: Tensor, positive_mask: Tensor | None = None, video_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if model.vtm_head is None:
            raise ValueError("vtm: the model was built without a VTM head; add 'vtm' to its heads")
        neg_text, neg_video = sample_negatives(sim_v2t, positive_mask, generator, self.hard_fraction)
        B = video_tokens.shape[0]
        # Pairs in order: (video i, text i), (video i, negative text), (negative video, text i).
        videos = torch.cat([video_tokens, video_tokens, video_tokens[neg_video]])  # (3B, N, Dv)
        texts = torch.cat([text_tokens, text_tokens[neg_text], text_tokens])  # (3B, L, Dt)
        masks = torch.cat([text_mask, text_mask[neg_text], text_mask])  # (3B, L)
        vmask = None if video_mask is None else torch.cat([video_mask, video_mask, video_mask[neg_video]])
        logits = model.vtm_head(model.fuse(videos, texts, masks, vmask)["pooled"])  # (3B, 2)
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)  # (3B,)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"vtm_loss": loss, "vtm_acc": acc}
