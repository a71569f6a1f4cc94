"""``vl predict -c CONFIG --ckpt_path CKPT``: what a module predicts per batch, and ``PredictionWriter``,
the callback that writes it (every ``VLModule`` adds one in ``predict`` unless the trainer has one).

Output folder: ``PredictionWriter(output_dir)``, by default ``<trainer.default_root_dir>/predictions``:

- ``video_embeddings.npy`` float32 (Nv, E), L2-normalised; row i belongs to line i of
  ``video_embeddings.jsonl``: ``{"key": sample key}``.
- ``text_embeddings.npy`` float32 (Nt, E), L2-normalised; row i belongs to line i of
  ``text_embeddings.jsonl``: ``{"text": the caption, "key": the key of its clip, or null for a line of
  a captions file}``. Cosine similarity is the dot product of two rows.
- ``predictions.jsonl``: one line per item for the fine-tuning tasks (answers, choices, captions).

Pretraining and retrieval write embeddings: of the clips and captions of ``data.init_args.predict_shards``,
and of the lines of ``data.init_args.predict_texts`` (a text file, one caption per line). Under DDP every
rank writes its own files (``...rank<r>.npy`` / ``.jsonl``) and rank 0 then joins them, in rank order, into
the files above (``merge_rank_files``): one set of files whatever the number of devices, rows matched by
their keys.

Raw video files: ``data.init_args.predict_videos``, a folder (every video file under it, sorted, hidden
files left out), one video file or a glob of them, read and decoded as ``vl index`` reads them, with the
same keys (the path relative to the folder, without extension: ``cats/001``). A file that gives no clip is
skipped and counted, never dropped silently: the run logs how many by reason, and ``video_skipped.jsonl``
lists each (``{"key", "reason", "detail"}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from datapipes.batch import Batch
from vl.evaluation.retrieval import require_finite
from vl.models import VideoLanguageModel


def embeddings(model: VideoLanguageModel, batch: Batch) -> dict[str, Any]:
    """The L2-normalised embeddings of the batch's clips (B, E) and text rows (Nt, E) as float32 arrays,
    with their keys and texts. A batch of a captions file has no clips (``video`` of batch size 0).
    Raises ``vl.evaluation.retrieval.NonFiniteError`` for a NaN or infinite embedding."""
    out: dict[str, Any] = {}
    if batch.batch_size > 0:
        video = model.encode_video(batch.video, frame_mask=batch.frame_mask)["pooled"]  # (B, Dv)
        emb = model.embed_video(video).float()  # (B, E)
        require_finite(emb, "video embeddings")
        out["video"] = emb.cpu().numpy()
        out["video_rows"] = [{"key": k} for k in batch.keys]
    if batch.text_ids.shape[0] > 0:
        emb = model.embed_text(model.encode_text(batch.text_ids, batch.text_mask)["pooled"]).float()  # (Nt, E)
        require_finite(emb, "text embeddings")
        texts = batch.texts or [None] * emb.shape[0]
        keys = [batch.keys[int(i)] for i in batch.video_index().tolist()] if batch.batch_size > 0 else [None] * len(texts)
        out["text"] = emb.cpu().numpy()
        out["text_rows"] = [{"text": t, "key": k} for t, k in zip(texts, keys)]
    return out


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns (``embeddings`` or ``{"rows": [...]}``) into ``output_dir``
    (None: ``<trainer.default_root_dir>/predictions``) at the end of ``vl predict``; see the module docstring."""

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._parts: dict[str, list] = {}

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        for name, value in (prediction or {}).items():
            self._parts.setdefault(name, []).append(value)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parts, self._parts = self._parts, {}
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        out.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        written = []
        for kind in ("video", "text"):
            if kind in parts:
                np.save(out / f"{kind}_embeddings{suffix}.npy", np.concatenate(parts[kind]).astype(np.float32))
                written.append(write_jsonl(out / f"{kind}_embeddings{suffix}.jsonl", parts[f"{kind}_rows"]))
        if "rows" in parts:
            written.append(write_jsonl(out / f"predictions{suffix}.jsonl", parts["rows"]))
        skipped = getattr(trainer.datamodule, "predict_skipped", None)
        if skipped is not None:
            written.append(write_jsonl(out / f"video_skipped{suffix}.jsonl", [skipped]))
            if skipped:
                reasons: dict[str, int] = {}
                for row in skipped:
                    reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
                rank_zero_info(f"vl predict: skipped {len(skipped)} video file(s) that gave no clip ("
                               + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")")
        if not written:
            raise ValueError("vl predict produced nothing: give data.init_args.predict_shards, predict_videos or "
                             "predict_texts")
        if trainer.world_size > 1:
            trainer.strategy.barrier("vl-predict-written")  # every rank's files are complete
            if trainer.is_global_zero:
                written = merge_rank_files(out, trainer.world_size)
            trainer.strategy.barrier("vl-predict-merged")
        rank_zero_info("Predictions written: " + ", ".join(written))


PREDICTION_FILES = ("video_embeddings.npy", "video_embeddings.jsonl", "text_embeddings.npy", "text_embeddings.jsonl",
                    "predictions.jsonl", "video_skipped.jsonl")


def merge_rank_files(out: Path, world_size: int) -> list[str]:
    """Join each ``NAME.rank<r>.EXT`` in ``out`` (r = 0 .. world_size - 1) into ``NAME.EXT``, rows in rank
    order, and delete the rank files; returns what was written, as ``write_jsonl`` reports it. A file kind
    that some rank did not write is an error (every rank runs the same predict loop)."""
    written = []
    for name in PREDICTION_FILES:
        stem, ext = name.rsplit(".", 1)
        parts = [out / f"{stem}.rank{r}.{ext}" for r in range(world_size)]
        present = [p.exists() for p in parts]
        if not any(present):
            continue
        if not all(present):
            missing = ", ".join(p.name for p, here in zip(parts, present) if not here)
            raise FileNotFoundError(f"vl predict: {missing} missing in {out}: cannot join the ranks' {name}")
        if ext == "npy":
            arrays = [np.load(p) for p in parts]
            np.save(out / name, np.concatenate(arrays))
            written.append(f"{out / name} ({sum(len(a) for a in arrays)} rows)")
        else:
            rows = [json.loads(line) for p in parts for line in p.read_text(encoding="utf-8").splitlines() if line]
            written.append(write_jsonl(out / name, [rows]))
        for p in parts:
            p.unlink()
    return written


def write_jsonl(path: Path, batches: list[list[dict]]) -> str:
    """Write the rows of every batch to ``path``, one JSON object a line; returns ``"path (N rows)"``."""
    rows = [row for rows in batches for row in rows]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return f"{path} ({len(rows)} rows)"


# ---- videos named by file: a folder, files or a glob ---------------------------------------------------------

class VideoFileBatches(torch.utils.data.IterableDataset):
    """The videos of ``predict_videos`` (a folder, one video file or a glob of them) as clip-only ``Batch``es
    (no text rows): read as ``vl index`` reads them (``vl.search.sources``: the same files in the same order,
    the same keys) and decoded in the loading process by the pipeline's evaluation path. A file that gives
    no clip is appended to ``skipped`` as ``{"key", "reason", "detail"}`` and counted in its batch's
    ``skipped``."""

    def __init__(self, spec: str, clip_config: Any, batch_size: int, max_text_len: int) -> None:
        from vl.search.sources import find_units

        super().__init__()
        self.units = [u for u in find_units([spec]) if u.kind == "files"]
        if not self.units:
            raise ValueError(f"data.init_args.predict_videos: {spec} names shards, not videos: give them as "
                             f"data.init_args.predict_shards")
        self.cfg, self.batch_size, self.max_text_len = clip_config, batch_size, max_text_len
        self.skipped: list[dict] = []

    def _batch(self, keys: list[str], clips: list, skipped: dict[str, int]) -> Batch:
        empty = torch.zeros(0, self.max_text_len, dtype=torch.long)
        return Batch(video=torch.stack([c[0] for c in clips]), frame_mask=torch.stack([c[1] for c in clips]).bool(),
                     text_ids=empty, text_mask=empty.clone(), keys=keys, texts=[], skipped=skipped)

    def __iter__(self) -> Iterator[Batch]:
        from datapipes.decode import SkipSample
        from vl.search.sources import item_clip, unit_items

        self.skipped.clear()
        keys: list[str] = []
        clips: list = []
        counts: dict[str, int] = {}
        for unit in self.units:
            for item in unit_items(unit, 0, []):
                try:
                    clip = item_clip(item, self.cfg)
                except SkipSample as e:
                    self.skipped.append({"key": item.key, "reason": e.reason, "detail": e.detail})
                    counts[e.reason] = counts.get(e.reason, 0) + 1
                    continue
                keys.append(item.key)
                clips.append(clip)
                if len(keys) == self.batch_size:
                    yield self._batch(keys, clips, counts)
                    keys, clips, counts = [], [], {}
        if keys:
            yield self._batch(keys, clips, counts)
