"""Text-video retrieval: fine-tuning with VTC (+ VTM) and evaluation in both directions.

Evaluation embeds every test video and caption (several captions per video: any of them is a right
match; ``paragraph=True`` joins a video's captions into one query, as DiDeMo and ActivityNet Captions
paragraph retrieval do) and ranks by dual-encoder similarity. Then, each reported separately and never
replacing the dual-encoder figures:

- ``rerank/``: the top ``rerank_k`` candidates of every query re-ordered by a score of the fused pair
  (``rerank_score``): ``vtm+vtc`` (default) the VTM head's match log-odds plus the dual encoder's logit
  (learned scale x cosine, the logit its softmax ranks by), so the two are in the same units and the sum
  ranks by the product of the two models' odds; ``vtm+cos`` the log-odds plus the bare cosine (BLIP's
  evaluation); ``vtm`` the log-odds alone (ALBEF's). Candidates past the top k keep their order below them.
  With it, how re-ranking moved each query against the dual encoder: ``rerank/t2v_queries_up`` and
  ``_down``, R@1 ``hits_gained`` and ``hits_lost``, and one-sided sign tests that it made ranking worse
  (``p_worse``, ``hits_p_worse``; ``vl.evaluation.retrieval.rank_changes``), the same for ``v2t``: on a test set of a
  few hundred queries a difference of a few is noise, and these say which. Unless ``rerank_score`` is
  ``vtm``, ``rerank_vtm/`` also ranks the same top k by the VTM log-odds alone (no extra fusion): how good
  a judge the VTM head is on its own.
- ``dsl/``: dual-softmax (CAMoE): similarities multiplied by a softmax over the other direction's
  queries. It uses the statistics of the whole test set, so it is off unless ``dual_softmax=True``.

Beside them (unless ``reversal_eval=False``), whether the model uses the order of the frames: every clip is
embedded again from the same decoded frames reversed and shuffled, and ``reversal_acc`` / ``shuffle_acc``
are the percent of queries that score their clip in true order higher (chance 50%; an order-blind model
scores exactly 50%), per temporal / non-temporal caption where the data flags them
(``vl.evaluation.frame_order.time_order_metrics``).

Metrics: text-to-video and video-to-text R@1/5/10, median and mean rank (``vl.evaluation.retrieval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from datapipes.batch import Batch
from datapipes.text import Tokenize
from vl.evaluation.frame_order import (FrameOrderProbe, caption_temporal_flags, frame_order_embeddings,
                                      time_order_metrics)
from vl.evaluation.retrieval import gt_ranks, rank_changes, require_finite, retrieval_metrics, retrieval_ranks
from vl.lit.evaluation import RetrievalAccumulator, gather_objects, gather_rows, retrieval_summary
from vl.lit.module import BackboneConfig, VLModule, from_plain
from vl.lit.optim import OptimConfig
from vl.models import VideoLanguageModel
from vl.models.hub import load_tokenizer
from vl.objectives import MATCH_SCORES, VTCLoss, VTMLoss, match_score, vtm_positives

# ---------------------------------------------------------------- scoring functions


def dual_softmax(sim: Tensor, temperature: float = 0.01) -> Tensor:
    """Dual-softmax re-weighting (CAMoE): sim (Nq, Nc) cosine -> sim * softmax(sim / temperature) taken over
    the queries (dim 0), i.e. a candidate's prior over the queries that could retrieve it."""
    return sim * torch.softmax(sim / temperature, dim=0)


def rerank_candidates(sim_t2v: Tensor, k: int) -> Tensor:
    """(Nt, Nv) bool: the pairs either direction re-ranks, each text's top-k videos and each video's top-k texts."""
    pairs = torch.zeros_like(sim_t2v, dtype=torch.bool)
    kt, kv = min(k, sim_t2v.shape[1]), min(k, sim_t2v.shape[0])
    pairs.scatter_(1, sim_t2v.topk(kt, dim=1).indices, True)
    pairs.T.scatter_(1, sim_t2v.T.topk(kv, dim=1).indices, True)  # writes through the transposed view
    return pairs


def rerank_topk(sim: Tensor, scores: Tensor, k: int) -> Tensor:
    """Re-rank each row's top-k candidates: sim (Nq, Nc), scores (Nq, Nc) (read at the top-k only) -> (Nq, Nc).

    The top k of each row by ``sim`` are ordered by ``scores`` and placed above every other candidate; the
    others keep their ``sim`` and so their order. The set of top-k candidates of a row never changes.
    Raises ``vl.evaluation.retrieval.NonFiniteError`` when ``sim`` or a re-ranking score of a top-k candidate is NaN or
    infinite (``scores`` elsewhere is never read and may hold anything).
    """
    require_finite(sim, "similarity scores")
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Nq, k)
    new = scores.gather(1, top)  # (Nq, k)
    require_finite(new, "re-ranking scores of the top-k candidates")
    offset = (sim.max() - new.min()).clamp(min=0) + 1  # lifts every re-scored candidate above the rest
    return sim.clone().scatter_(1, top, new + offset)


@torch.no_grad()
def vtm_pair_scores(model: VideoLanguageModel, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
                    pairs: Tensor, batch_size: int, video_mask: Optional[Tensor] = None) -> Tensor:
    """VTM match log-odds of (text, video) ``pairs`` (P, 2): video_tokens (Nv, N, Dv), text_tokens (Nt, L, Dt),
    text_mask (Nt, L), video_mask (Nv, N) True for tokens of real frames (None: all) -> (P,). Under DDP each
    rank scores a contiguous slice and the slices are gathered."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    per_rank = -(-pairs.shape[0] // world)  # ceil
    mine = pairs[rank * per_rank: (rank + 1) * per_rank]
    scores = []
    for chunk in mine.split(batch_size):
        t, v = chunk[:, 0], chunk[:, 1]
        vmask = None if video_mask is None else video_mask[v]  # (P_chunk, N)
        scores.append(model.vtm_log_odds(video_tokens[v], text_tokens[t], text_mask[t], vmask))  # (P_chunk,)
    local = torch.cat(scores) if scores else video_tokens.new_zeros(0, dtype=torch.float32)
    return gather_rows(local)


def prefixed(prefix: str, metrics: dict[str, float], direction: Optional[str] = None) -> dict[str, float]:
    """``metrics`` renamed ``prefix + name``, keeping one direction (``t2v``/``v2t``) when given, never chance."""
    keep = {k: v for k, v in metrics.items() if "chance" not in k and (direction is None or k.startswith(direction))}
    return {f"{prefix}{k}": v for k, v in keep.items()}


def two_way_metrics(prefix: str, sim_t2v: Tensor, sim_v2t: Tensor, index: Tensor) -> dict[str, float]:
    """t2v metrics from ``sim_t2v`` (Nt, Nv) and v2t metrics from ``sim_v2t`` (Nv, Nt), each its own ranking."""
    out = prefixed(prefix, retrieval_metrics(sim_t2v, index), "t2v")
    out.update(prefixed(prefix, retrieval_metrics(sim_v2t.T, index), "v2t"))
    return out


def ranking_rows(sim_t2v: Tensor, sim_v2t: Tensor, index: Tensor, keys: list[str], texts: list[str], top: int,
                 method: str) -> list[dict]:
    """Readable rankings from sim_t2v (Nt, Nv) and sim_v2t (Nv, Nt): per text query its video's rank and top
    videos; per video its best caption's rank and top captions. ``method`` names the ranking. Raises
    ``vl.evaluation.retrieval.NonFiniteError`` for a NaN or infinite score."""
    require_finite(sim_v2t, "video-to-text similarity scores")
    rows = []
    t2v_rank = gt_ranks(sim_t2v, index).tolist()
    t2v_top = sim_t2v.topk(min(top, sim_t2v.shape[1]), dim=1).indices.tolist()  # (Nt, top)
    for j, text in enumerate(texts):
        rows.append({"direction": "t2v", "method": method, "query": text, "video": keys[int(index[j])],
                     "rank": t2v_rank[j], "top": [keys[i] for i in t2v_top[j]]})
    v2t_top = sim_v2t.topk(min(top, sim_v2t.shape[1]), dim=1).indices.tolist()  # (Nv, top)
    for v, key in enumerate(keys):
        mine = (index == v).nonzero().flatten()
        if mine.numel() == 0:
            continue
        best = sim_v2t[v, mine].max()
        negatives = sim_v2t[v].clone()
        negatives[mine] = float("-inf")
        rows.append({"direction": "v2t", "method": method, "query": key, "captions": [texts[i] for i in mine.tolist()],
                     "rank": int((negatives >= best).sum()) + 1, "top": [texts[i] for i in v2t_top[v]]})
    return rows


# ---------------------------------------------------------------- evaluation state


class RetrievalEvalState:
    """What one evaluation pass collects: embeddings (``RetrievalAccumulator``), query texts and, when the
    pass re-ranks, the encoders' tokens (kept on the device: Nv x N x Dv video tokens for the whole split)
    with each video's token mask (True for tokens of real frames), so that re-ranking fuses a short clip
    without its padded frames."""

    def __init__(self) -> None:
        self.embeddings = RetrievalAccumulator()
        self.reset()

    def reset(self) -> None:
        self.embeddings.reset()
        self.texts: list[str] = []
        self.video_tokens: list[Tensor] = []
        self.text_tokens: list[Tensor] = []
        self.text_mask: list[Tensor] = []
        self.video_token_mask: list[Tensor] = []

    def add(self, v_emb: Tensor, t_emb: Tensor, index: Tensor, keys: list[str], texts: list[str],
            tokens: Optional[tuple[Tensor, Tensor, Tensor]] = None, video_mask: Optional[Tensor] = None,
            order: Optional[FrameOrderProbe] = None) -> None:
        """v_emb (B, E), t_emb (Nt, E), index (Nt,), keys (B,), texts (Nt,), tokens: video (B, N, Dv),
        text (Nt, L, Dt) and text mask (Nt, L) when re-ranking, with video_mask (B, N) True for tokens of
        real frames (None: every token is real); order: the clips embedded in other frame orders."""
        self.embeddings.add(v_emb, t_emb, index, keys, order=order)
        self.texts.extend(texts)
        if tokens is not None:
            for store, t in zip((self.video_tokens, self.text_tokens, self.text_mask), tokens):
                store.append(t.detach())
            video = tokens[0]  # (B, N, Dv)
            if video_mask is None:
                video_mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
            self.video_token_mask.append(video_mask.detach().to(torch.uint8))  # uint8: every backend all-gathers it

    def gathered(self) -> dict:
        """Everything over all ranks: video (Nv, E), text (Nt, E), index (Nt,), keys, texts, ``order`` (the
        frame-order data, ``RetrievalAccumulator.gathered_order``, or None), and tokens if kept
        (``video_tokens``, ``text_tokens``, ``text_mask``, ``video_token_mask`` (Nv, N) bool)."""
        video, text, index, keys = self.embeddings.gathered()
        out = {"video": video, "text": text, "index": index, "keys": keys, "texts": gather_objects(self.texts),
               "order": self.embeddings.gathered_order()}
        if self.video_tokens:
            out["video_tokens"] = gather_rows(torch.cat(self.video_tokens))
            out["text_tokens"] = gather_rows(torch.cat(self.text_tokens))
            out["text_mask"] = gather_rows(torch.cat(self.text_mask))
            out["video_token_mask"] = gather_rows(torch.cat(self.video_token_mask)).bool()  # (Nv, N)
        return out


# ---------------------------------------------------------------- LightningModule


@dataclass
class RetrievalObjectives:
    """Weights of the retrieval fine-tuning objectives, under the names pretraining gives them
    (``vl.lit.Objectives``); one with weight 0 is not computed at all."""

    vtc: float = 1.0  # video-text contrastive (open_clip's ClipLoss)
    vtm: float = 1.0  # video-text matching with hard negatives from VTC similarities; 0 also freezes the fusion
    # Share of VTM negatives drawn by VTC similarity (ALBEF: 1.0); the rest uniformly (ViLT/VIOLET: 0.0).
    vtm_hard_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.vtc < 0 or self.vtm < 0:
            raise ValueError(f"objectives: weights must be >= 0, got vtc {self.vtc}, vtm {self.vtm}")


class RetrievalModule(VLModule):
    """Text-video retrieval fine-tuning (VTC + VTM) and evaluation (dual encoder, VTM re-ranking, dual-softmax).

    Args (besides ``BackboneConfig``'s, given by keyword: ``model``, ``video``, ..., ``init_from``):
        tokenizer: tokenizer of paragraph queries (the data's tokenizer: ``minilm`` or a local directory).
        objectives: loss weights (``vtc``, ``vtm``) and ``vtm_hard_fraction``, the share of VTM negatives
            drawn by VTC similarity, the rest uniformly (``RetrievalObjectives``, ``VTMLoss``).
        paragraph: join each video's captions into one query (DiDeMo, ActivityNet Captions), in training too.
        paragraph_max_text_len: tokens of a paragraph query.
        rerank_k: re-rank each query's top k with the VTM head (0: off); reported under ``rerank/``.
        rerank_on_val: also re-rank in validation (test always does when ``rerank_k > 0``).
        rerank_batch_size: pairs per fusion pass when re-ranking.
        rerank_score: what re-orders the top k: ``vtm+vtc`` (VTM log-odds + the dual encoder's logit),
            ``vtm+cos`` (+ the cosine, BLIP) or ``vtm`` (the log-odds alone, ALBEF).
        dual_softmax: also report dual-softmax ranking under ``dsl/``.
        dual_softmax_temperature: temperature of its softmax over cosine similarities.
        predictions_top: candidates written per query to the predictions file.
        reversal_eval: also score every query against its clip reversed and shuffled in time
            (``reversal_acc``, ``shuffle_acc``; two more video-encoder passes per evaluation batch).
        optim: AdamW + warmup/cosine settings.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.

    The options from ``rerank_k`` on change only how the model is evaluated (``VLModule``'s ``evaluation``).
    """

    def __init__(
        self,
        tokenizer: str = "minilm",
        objectives: RetrievalObjectives = RetrievalObjectives(),
        paragraph: bool = False,
        paragraph_max_text_len: int = 64,
        rerank_k: int = 128,
        rerank_on_val: bool = False,
        rerank_batch_size: int = 256,
        rerank_score: str = "vtm+vtc",
        dual_softmax: bool = False,
        dual_softmax_temperature: float = 0.01,
        predictions_top: int = 10,
        reversal_eval: bool = True,
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        **backbone: Any,
    ) -> None:
        objectives = from_plain(RetrievalObjectives, objectives)
        if rerank_k < 0:
            raise ValueError(f"retrieval: rerank_k must be >= 0, got {rerank_k}")
        if rerank_score not in MATCH_SCORES:  # here, not after a whole test pass
            raise ValueError(f"retrieval: rerank_score must be one of {MATCH_SCORES}, got {rerank_score!r}")
        super().__init__(
            BackboneConfig(**backbone),
            heads=("vtm",) if objectives.vtm > 0 or rerank_k > 0 else (),
            frozen=("fusion.", "vtm_head.") if objectives.vtm == 0 else (),  # without VTM, training never fuses
            optim=optim, max_consecutive_nonfinite=max_consecutive_nonfinite,
            options=dict(tokenizer=tokenizer, objectives=objectives, paragraph=paragraph,
                         paragraph_max_text_len=paragraph_max_text_len),
            evaluation=dict(rerank_k=rerank_k, rerank_on_val=rerank_on_val, rerank_batch_size=rerank_batch_size,
                            rerank_score=rerank_score, dual_softmax=dual_softmax,
                            dual_softmax_temperature=dual_softmax_temperature, predictions_top=predictions_top,
                            reversal_eval=reversal_eval),
        )
        self.vtc = VTCLoss()
        self.objectives = objectives
        self.vtm = VTMLoss(objectives.vtm_hard_fraction) if objectives.vtm > 0 else None
        self._paragraph_tokenize: Optional[Tokenize] = None
        self.eval_state = RetrievalEvalState()

    # ---- text rows --------------------------------------------------------------------------------

    def texts(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """The batch's text rows: ids (Nt, L), mask (Nt, L), video index (Nt,) and the raw strings.

        With ``paragraph``: one row per video, its captions joined with spaces."""
        if not self.hparams.paragraph:
            strings = batch.texts or [""] * batch.text_ids.shape[0]
            return batch.text_ids, batch.text_mask, batch.video_index(), strings
        if self._paragraph_tokenize is None:
            self._paragraph_tokenize = Tokenize(load_tokenizer(self.hparams.tokenizer),
                                                self.hparams.paragraph_max_text_len)
        strings = [" ".join(refs) for refs in (batch.references or [])]
        if len(strings) != batch.batch_size or not all(strings):
            raise ValueError("paragraph retrieval needs the captions of every video (Batch.references)")
        ids, mask = self._paragraph_tokenize(strings)  # (B, L)
        index = torch.arange(batch.batch_size, device=self.device)
        return ids.to(self.device), mask.to(self.device), index, strings

    # ---- training ---------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        return {"vtc": self.objectives.vtc, "vtm": self.objectives.vtm}

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """VTC over the batch's (video, caption) pairs and VTM on hard negatives: ``{"vtc_loss", "vtm_loss", ...}``."""
        ids, mask, _, _ = self.texts(batch)
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)  # tokens (B, N, Dv), pooled (B, Dv)
        text = self.model.encode_text(ids, mask)  # tokens (B, L, Dt), pooled (B, Dt)
        v_emb, t_emb = self.model.embed_video(video["pooled"]), self.model.embed_text(text["pooled"])  # (B, E)
        out = self.vtc(v_emb, t_emb, self.model.logit_scale)
        if self.vtm is not None:
            sim = VTCLoss.similarity(v_emb, t_emb, self.model.logit_scale).detach()  # (B, B)
            captions = None if self.hparams.paragraph else batch.texts  # a paragraph is no single caption
            positives = vtm_positives(ids, batch.references, captions)  # (B, B)
            out.update(self.vtm(self.model, video["tokens"], text["tokens"], mask, sim, positives,
                                video_mask=video.get("token_mask")))
        return out

    # ---- evaluation -------------------------------------------------------------------------------

    def _reranks(self, split: str) -> bool:
        return self.rerank_k > 0 and (split == "test" or self.rerank_on_val)

    def eval_step(self, batch: Batch, split: str) -> None:
        ids, mask, index, strings = self.texts(batch)
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)
        text = self.model.encode_text(ids, mask)
        v_emb, t_emb = self.model.embed_video(video["pooled"]), self.model.embed_text(text["pooled"])
        tokens = (video["tokens"], text["tokens"], mask) if self._reranks(split) else None
        order = None
        if self.reversal_eval:  # the same decoded frames, reversed and shuffled
            def embed_video(clip: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, E)
                return self.model.embed_video(self.model.encode_video(clip, frame_mask=batch.frame_mask)["pooled"])

            temporal = caption_temporal_flags(batch.meta, strings, index.cpu(), joined=self.hparams.paragraph)
            order = frame_order_embeddings(embed_video, batch.video, batch.frame_mask, temporal)
        self.eval_state.add(v_emb, t_emb, index, batch.keys, strings, tokens, video.get("token_mask"), order)

    def finish_eval(self, split: str) -> None:
        if not self.eval_state.texts and not self.eval_state.embeddings.video:
            return
        data = self.eval_state.gathered()
        self.eval_state.reset()
        require_finite(data["video"], f"{split} video embeddings")  # gathered: every rank raises together
        require_finite(data["text"], f"{split} text embeddings")
        metrics, rows = self.evaluate(data)
        lines = [retrieval_summary(split, metrics, data["video"].shape[0], data["text"].shape[0])]
        for prefix, label in (("rerank/", f"VTM re-ranking of the top {self.rerank_k}"),
                              ("dsl/", "dual-softmax")):
            if f"{prefix}t2v_R@1" in metrics:
                lines.append(f"  {label}: t2v R@1 {metrics[f'{prefix}t2v_R@1']:.2f}  R@5 {metrics[f'{prefix}t2v_R@5']:.2f}"
                             f"  R@10 {metrics[f'{prefix}t2v_R@10']:.2f}  (dual encoder R@1 {metrics['t2v_R@1']:.2f})")
            if prefix == "rerank/" and "rerank/t2v_queries_up" in metrics:
                m = metrics
                lines.append(f"    text queries moved up {m['rerank/t2v_queries_up']:.0f}, down "
                             f"{m['rerank/t2v_queries_down']:.0f} (sign test p = {m['rerank/t2v_p_worse']:.3f} that it "
                             f"ranks worse); R@1 hits gained {m['rerank/t2v_hits_gained']:.0f}, lost "
                             f"{m['rerank/t2v_hits_lost']:.0f} (p = {m['rerank/t2v_hits_p_worse']:.3f})")
                if "rerank_vtm/t2v_R@1" in m:
                    lines.append(f"    the VTM head alone on the same top {self.rerank_k}: t2v R@1 "
                                 f"{m['rerank_vtm/t2v_R@1']:.2f}  R@5 {m['rerank_vtm/t2v_R@5']:.2f}")
        lines.append(f"  video-to-text R@1 {metrics['v2t_R@1']:.2f}  R@5 {metrics['v2t_R@5']:.2f}"
                     f"  R@10 {metrics['v2t_R@10']:.2f}")
        self.report(split, metrics, rows, "\n".join(lines))

    @torch.no_grad()
    def evaluate(self, data: dict) -> tuple[dict[str, float], list[dict]]:
        """Metrics and predictions rows of every ranking over one gathered split (see ``RetrievalEvalState``)."""
        sim = data["text"] @ data["video"].T  # (Nt, Nv) cosine
        index, keys, texts, top = data["index"], data["keys"], data["texts"], self.predictions_top
        metrics = retrieval_metrics(sim, index)
        metrics.update(time_order_metrics(data["text"], data["video"], index, data.get("order")))
        rows = ranking_rows(sim, sim.T, index, keys, texts, top, "dual")
        if "video_tokens" in data and self.model.vtm_head is None:
            rank_zero_warn("VTM re-ranking skipped: this model has no VTM head (trained with objectives.vtm 0)")
        elif "video_tokens" in data:
            k = self.rerank_k
            pairs = rerank_candidates(sim, k).nonzero()  # (P, 2): (text, video)
            log_odds = torch.full_like(sim, float("nan"))
            # an all-real mask is left out: the fusion then keeps its unmasked (fastest) attention kernel
            video_mask = data["video_token_mask"]  # (Nv, N)
            masked = {} if bool(video_mask.all()) else {"video_mask": video_mask}
            pair_log_odds = vtm_pair_scores(self.model, data["video_tokens"], data["text_tokens"], data["text_mask"],
                                            pairs, self.rerank_batch_size, **masked)  # (P,)
            require_finite(pair_log_odds, "VTM match scores of the re-ranked (text, video) pairs")
            log_odds[pairs[:, 0], pairs[:, 1]] = pair_log_odds.to(sim.dtype)
            scores = match_score(log_odds, sim, self.model.get_logit_scale().float(), self.rerank_score)
            t2v, v2t = rerank_topk(sim, scores, k), rerank_topk(sim.T, scores.T, k)
            metrics.update(two_way_metrics("rerank/", t2v, v2t, index))
            dual_ranks = retrieval_ranks(sim, index)
            new_ranks = (retrieval_ranks(t2v, index)[0], retrieval_ranks(v2t.T, index)[1])
            for direction, before, after in zip(("t2v", "v2t"), dual_ranks, new_ranks):
                metrics.update(rank_changes(before, after, f"rerank/{direction}_"))
            if self.rerank_score != "vtm":  # the VTM head alone on the same pairs (ALBEF's re-ranking), no extra fusion
                metrics.update(two_way_metrics("rerank_vtm/", rerank_topk(sim, log_odds, k),
                                               rerank_topk(sim.T, log_odds.T, k), index))
            rows += ranking_rows(t2v, v2t, index, keys, texts, top, "rerank")
        if self.dual_softmax:
            temp = self.dual_softmax_temperature
            t2v, v2t = dual_softmax(sim, temp), dual_softmax(sim.T, temp)
            metrics.update(two_way_metrics("dsl/", t2v, v2t, index))
            rows += ranking_rows(t2v, v2t, index, keys, texts, top, "dsl")
        return metrics, rows
