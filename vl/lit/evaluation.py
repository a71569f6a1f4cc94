"""The Lightning side of evaluation: rows collected over an evaluation pass and gathered across DDP ranks,
the summary a person reads, and the metrics and predictions files a test writes.

The metrics themselves are pure functions in ``vl.evaluation`` (retrieval ranks and R@K, the frame-order
accuracies, captioning scores, QA accuracy); ``RetrievalAccumulator`` gathers the embeddings they score.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from vl.evaluation.frame_order import TEMPORAL_GROUPS, FrameOrderProbe, time_order_metrics, time_order_summary
from vl.evaluation.retrieval import gt_ranks, order_tie_tolerance, require_finite, retrieval_metrics


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate a (N_rank, ...) tensor from every rank; N may differ between ranks.

    Not Lightning's ``LightningModule.all_gather``, which stacks tensors of one shape: the ranks' evaluation
    shards hold different numbers of clips, so the sizes are gathered first and the rows padded to the
    longest."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def gather_objects(items: list) -> list:
    """Concatenate python lists from every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


class RetrievalAccumulator:
    """Accumulates video and text embeddings of one evaluation pass and scores text-to-video retrieval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.video: list[Tensor] = []
        self.text: list[Tensor] = []
        self.text_video: list[Tensor] = []
        self.keys: list[str] = []
        self.captions: list[str] = []
        self._num_videos = 0
        self.order_video: dict[str, list[Tensor]] = {}  # order name -> [(B, E)] re-ordered clips' embeddings
        self.order_frames: list[Tensor] = []  # [(B,)] real frames per clip
        self.order_temporal: list[Tensor] = []  # [(Nt,)] int8 temporal flag per caption
        self.tie_tol = order_tie_tolerance()  # grows to the precision of the least precise embeddings added

    def add(self, video_emb: Tensor, text_emb: Tensor, text_video_index: Tensor, keys: list[str],
            captions: list[str] | None = None, order: Optional[FrameOrderProbe] = None) -> None:
        """video_emb (B, E), text_emb (Nt, E), text_video_index (Nt,) into this batch's videos; ``order``: the
        same clips embedded in other frame orders (``frame_order_embeddings``), given with every batch or
        with none."""
        if self.video and (order is None) != (not self.order_frames):
            raise ValueError("RetrievalAccumulator.add: frame-order embeddings must come with every batch or none")
        if order is not None:
            for name, emb in order.video.items():
                self.order_video.setdefault(name, []).append(emb.detach().float())
            self.order_frames.append(order.frames.detach().long())
            self.order_temporal.append(order.temporal.detach().to(torch.int8))
            dtypes = [video_emb.dtype, text_emb.dtype, *(e.dtype for e in order.video.values())]
            self.tie_tol = max(self.tie_tol, order_tie_tolerance(*dtypes))
        self.video.append(video_emb.detach().float())
        self.text.append(text_emb.detach().float())
        self.text_video.append(text_video_index.detach().long() + self._num_videos)
        self.keys.extend(keys)
        self.captions.extend(captions if captions is not None else [""] * text_emb.shape[0])
        self._num_videos += video_emb.shape[0]

    def gathered_order(self) -> Optional[dict]:
        """The frame-order data over all ranks, in the row order of ``gathered``: ``altered`` (order name ->
        (Nv, E)), ``frames`` (Nv,), ``temporal`` (Nt,) int8 and ``tie_tol`` (the largest of any rank); None
        when no batch brought any."""
        if not self.order_frames:
            return None
        device = self.video[0].device
        tol = gather_rows(torch.tensor([self.tie_tol], device=device)).max().item()
        altered = {name: gather_rows(torch.cat(embs)) for name, embs in self.order_video.items()}
        frames = gather_rows(torch.cat(self.order_frames).to(device))
        temporal = gather_rows(torch.cat(self.order_temporal).to(device).long())  # long: every backend gathers it
        return {"altered": altered, "frames": frames, "temporal": temporal, "tie_tol": tol}

    def gathered(self) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """(Nv, E) videos, (Nt, E) texts, (Nt,) global video index, keys — over all ranks."""
        video = torch.cat(self.video)
        text = torch.cat(self.text)
        index = torch.cat(self.text_video)
        counts = gather_rows(torch.tensor([video.shape[0]], device=video.device))  # (world,)
        offsets = torch.cumsum(counts, 0) - counts  # (world,) first video row of each rank
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        index = index + offsets[rank]
        return gather_rows(video), gather_rows(text), gather_rows(index), gather_objects(self.keys)

    def compute(self, topk: int = 0, split: str = "eval") -> tuple[dict[str, float], int, int, list[dict]]:
        """Retrieval metrics over everything added (all ranks), the numbers of videos and texts, and with
        `topk` > 0 one readable ranking per text query (its caption, its video, that video's rank, the top
        `topk` video keys). With frame-order embeddings added, the metrics include ``reversal_acc`` and
        ``shuffle_acc`` (``time_order_metrics``).

        Raises ``vl.evaluation.retrieval.NonFiniteError`` naming the ``split`` and how many video or text
        embeddings hold a NaN or infinity: such a model has no ranking (NaN compares false and would rank
        first). The check runs on the gathered embeddings, so every DDP rank raises together."""
        if not self.video:
            return {}, 0, 0, []
        video, text, index, keys = self.gathered()
        require_finite(video, f"{split} video embeddings")
        require_finite(text, f"{split} text embeddings")
        sim = text @ video.T  # (Nt, Nv)
        rankings: list[dict] = []
        if topk > 0:
            captions = gather_objects(self.captions)
            ranks = gt_ranks(sim, index)
            top = sim.topk(min(topk, sim.shape[1]), dim=1).indices  # (Nt, k)
            rankings = [{"caption": captions[i], "video": keys[int(index[i])], "rank": int(ranks[i]),
                         "top": [keys[int(j)] for j in top[i]]} for i in range(sim.shape[0])]
        metrics = retrieval_metrics(sim, index)
        metrics.update(time_order_metrics(text, video, index, self.gathered_order()))
        return metrics, video.shape[0], text.shape[0], rankings


def retrieval_summary(split: str, metrics: dict[str, float], num_videos: int, num_texts: int) -> str:
    """A few lines a person reads at the end of an evaluation: R@k next to chance, and the ratio; beside
    R@1 the time-order accuracies (chance 50%), then the same per temporal / non-temporal captions."""
    lines = [f"{split}: text-to-video retrieval over {num_videos} clips, {num_texts} captions"]
    for k in (1, 5, 10):
        got, chance = metrics.get(f"t2v_R@{k}"), metrics.get(f"t2v_chance_R@{k}")
        if got is None or chance is None:
            continue
        line = f"  R@{k:<3} {got:6.2f}%   chance {chance:6.2f}%   ({got / chance:5.1f}x chance)"
        order = time_order_summary(metrics) if k == 1 else None
        lines.append(line + (f"   time order: {order} (chance 50%)" if order else ""))
    lines.append(f"  median rank {metrics['t2v_MdR']:.0f}, mean rank {metrics['t2v_MnR']:.1f}")
    for _, group in TEMPORAL_GROUPS:
        order = time_order_summary(metrics, f"_{group}")
        if order:
            lines.append(f"  time order, {group} captions: {order}")
    return "\n".join(lines)


def write_eval_outputs(trainer, split: str, metrics: dict, predictions: list[dict]) -> tuple[str, str] | None:
    """Write ``<split>_metrics.json`` and ``<split>_predictions.jsonl`` (one JSON object per line) into the
    run's log folder (``trainer.log_dir``, else ``default_root_dir``), on global rank 0 only.

    ``metrics``: name -> number (or None for a metric that could not be computed); ``predictions``: JSON-ready
    dicts (rankings, answers, captions). Returns the two paths on rank 0, else None.
    """
    import json
    import os

    from lightning.pytorch.utilities import rank_zero_info

    if getattr(trainer, "global_rank", 0) != 0:
        return None
    folder = getattr(trainer, "log_dir", None) or trainer.default_root_dir
    os.makedirs(folder, exist_ok=True)
    metrics_path = os.path.join(folder, f"{split}_metrics.json")
    predictions_path = os.path.join(folder, f"{split}_predictions.jsonl")
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(predictions_path, "w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rank_zero_info(f"{split} metrics -> {metrics_path}\n{split} predictions ({len(predictions)}) -> {predictions_path}")
    return metrics_path, predictions_path
