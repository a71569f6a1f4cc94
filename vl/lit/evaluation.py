"""Collecting embeddings over an evaluation pass (across DDP ranks) and scoring retrieval."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from vl.metrics import retrieval_metrics


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate a (N_rank, ...) tensor from every rank; N may differ between ranks."""
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
        self._num_videos = 0

    def add(self, video_emb: Tensor, text_emb: Tensor, text_video_index: Tensor, keys: list[str]) -> None:
        """video_emb (B, E), text_emb (Nt, E), text_video_index (Nt,) into this batch's videos."""
        self.video.append(video_emb.detach().float())
        self.text.append(text_emb.detach().float())
        self.text_video.append(text_video_index.detach().long() + self._num_videos)
        self.keys.extend(keys)
        self._num_videos += video_emb.shape[0]

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

    def compute(self, module=None) -> dict[str, float]:
        """Retrieval metrics over everything added, or {} when nothing was."""
        if not self.video:
            return {}
        video, text, index, _ = self.gathered()
        return retrieval_metrics(text @ video.T, index)  # sim (Nt, Nv)
