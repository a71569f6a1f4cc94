"""The model side of search: a checkpoint's model, tokenizer and clip settings behind one thread-safe object.

``Encoder`` turns text and decoded clips into the model's L2-normalised VTC embeddings, and scores
(video, text) pairs with the VTM head for re-ranking, offered only when the checkpoint trained that head
(``recorded_vtm_weight``): a VTM head that never saw a VTM loss scores at random. ``prepare_video_clip`` decodes
one video through the pipeline's own decode path (``datapipes.process.load_clip`` in evaluation mode, with
the checkpoint's data settings), padding a short one to the model's frame count and returning the
``frame_mask`` that marks the padding; ``encode_video_clips`` takes that mask, so a short video is embedded and
re-ranked from its real frames only, as training and evaluation treat it (``Batch.frame_mask``).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from datapipes.augment import normalize
from datapipes.process import ClipConfig, load_clip
from datapipes.text import Tokenize

MAX_QUERY_CHARS = 1000  # longer queries are cut here (the tokenizer keeps max_text_len tokens anyway)


def normalize_query(text: Any) -> str:
    """A query as clean text: control characters dropped, whitespace collapsed, cut to MAX_QUERY_CHARS.

    Raises ValueError for a query with no visible character.
    """
    raw = "" if text is None else str(text)[: MAX_QUERY_CHARS * 4]
    kept = "".join(" " if ch.isspace() else ch for ch in raw if ch.isspace() or unicodedata.category(ch)[0] != "C")
    query = " ".join(kept.split())[:MAX_QUERY_CHARS]
    if not query:
        raise ValueError("type a query: it is empty")
    return query


def set_threads(threads: Optional[int]) -> None:
    """CPU threads of torch and FAISS (None: leave the libraries' defaults). On a busy machine 1 is often fastest."""
    if threads is None:
        return
    import faiss

    torch.set_num_threads(max(1, threads))
    faiss.omp_set_num_threads(max(1, threads))


def recorded_vtm_weight(path: str | Path) -> float:
    """The VTM loss weight a ``vl fit`` checkpoint's hyper-parameters record: ``objectives.vtm`` (of
    ``PretrainModule`` and ``RetrievalModule``, read through ``recorded_hparams``); 0.0 where they record none (other tasks, checkpoints written without a LightningModule).

    A model config lists a ``vtm`` head whenever its preset has one (``vl_tiny`` does), trained or not, so
    only the training objectives tell whether its scores mean anything. The tensors are memory-mapped,
    not read: only the hyper-parameters are looked at.
    """
    from vl.lit.checkpoint import recorded_hparams

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hparams = recorded_hparams(dict((ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None) or {}))
    objectives = hparams.get("objectives")
    weight = objectives.get("vtm") if isinstance(objectives, Mapping) else getattr(objectives, "vtm", None)
    return float(weight or 0.0)


def video_clip_config(model: torch.nn.Module, preprocess: dict[str, Any]) -> ClipConfig:
    """The evaluation ClipConfig of a model: the checkpoint's data settings (``vl.lit.checkpoint.PREPROCESS_KEYS``,
    the DataModule's names), else its video encoder's sizes.

    Random-segment sampling becomes uniform so that an index is deterministic.
    """
    video = model.video_encoder
    sampling = preprocess.get("val_sampling", "uniform")
    return ClipConfig(
        num_frames=int(preprocess.get("num_frames") or getattr(video, "num_frames", 8)),
        size=int(preprocess.get("frame_size") or getattr(video, "img_size", 224)),
        short_side=preprocess.get("decode_short_side"),
        sampling="uniform" if sampling == "random_segment" else sampling,
        sample_fps=float(preprocess.get("sample_fps", 2.0)),
        backend=preprocess.get("backend", "decord"),
        allow_images=bool(preprocess.get("allow_images", True)),
        norm=preprocess.get("norm", "imagenet"),
        max_text_len=int(preprocess.get("max_text_len", 32)),
    )


def prepare_video_clip(data: bytes, cfg: ClipConfig, meta: Optional[dict] = None) -> tuple[Tensor, Tensor]:
    """Video bytes -> normalised clip (T, C, H, W) as the model's evaluation pipeline prepares it
    (``load_clip`` in evaluation mode, normalised as collation does), and its frame_mask (T,) bool, False
    for the frames that pad a clip shorter than ``cfg.num_frames``.

    ``meta`` is the sample's metadata (its ``start``/``end`` seconds bound the clip). Raises ``SkipSample``
    (``empty_file``, ``decode_error``, ``not_a_video``, ``bad_clip_bounds``) for bytes that give no usable clip.
    """
    clip = load_clip(data, meta or {}, cfg, train=False)
    return normalize(clip.video, cfg.norm), clip.frame_mask  # (T, C, H, W) float32, (T,) bool


class Encoder:
    """A trained VideoLanguageModel with its tokenizer and clip settings; every call is thread-safe.

    Args:
        model: a ``VideoLanguageModel`` (put in eval mode here).
        preprocess: the data settings it was trained with (``LoadedModel.preprocess``).
        device: where the model runs.
        vtm_trained: whether training gave its VTM head a loss (``recorded_vtm_weight > 0``); VTM re-ranking
            is offered only then.
    """

    def __init__(self, model: torch.nn.Module, preprocess: dict[str, Any], device: str = "cpu",
                 vtm_trained: bool = False) -> None:
        from vl.models.hub import load_tokenizer

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.video_clip_config = video_clip_config(model, preprocess)
        self.tokenizer_name = str(preprocess.get("tokenizer", "minilm"))
        self.tokenize = Tokenize(load_tokenizer(self.tokenizer_name), self.video_clip_config.max_text_len)
        self.vtm_trained = bool(vtm_trained)
        self._lock = threading.Lock()  # one forward at a time: shared CPU, and no shared-state surprises

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu") -> "Encoder":
        """The model of a ``vl fit`` checkpoint (``vl.lit.checkpoint.load_checkpoint``), with VTM re-ranking
        when its hyper-parameters record a VTM weight above 0."""
        from vl.lit.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, map_location="cpu")
        return cls(loaded.model, loaded.preprocess, device, vtm_trained=recorded_vtm_weight(path) > 0)

    @property
    def embed_dim(self) -> int:
        return int(self.model.video_proj.out_features)

    @property
    def has_vtm(self) -> bool:
        """True when VTM re-ranking is offered: the model has a VTM head and training gave it a loss."""
        return self.vtm_unavailable is None

    @property
    def vtm_unavailable(self) -> Optional[str]:
        """Why VTM re-ranking is not offered (None when it is)."""
        if getattr(self.model, "vtm_head", None) is None:
            return "this model has no VTM head (it was trained without the vtm objective)"
        if not self.vtm_trained:
            return "this model's VTM head was never trained (its checkpoint records no VTM loss weight above 0)"
        return None

    @property
    def logit_scale(self) -> float:
        """The dual encoder's learned logit scale (its cosine x this is the logit VTC ranks by)."""
        return float(self.model.get_logit_scale().detach())

    def _text(self, texts: list[str]) -> tuple[dict[str, Tensor], Tensor]:
        ids, mask = self.tokenize(texts)  # (N, L) each
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.model.encode_text(ids, mask), mask

    @torch.inference_mode()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (N, E) float32 L2-normalised embeddings."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        with self._lock:
            for i in range(0, len(texts), batch_size):
                encoded, _ = self._text(texts[i : i + batch_size])
                out.append(self.model.embed_text(encoded["pooled"]).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_video_clips(self, clips: Tensor, frame_mask: Optional[Tensor] = None
                           ) -> tuple[np.ndarray, Tensor, Tensor]:
        """Clips (B, T, C, H, W), frame_mask (B, T) False for padded frames (None: all real) -> (B, E) float32
        embeddings, video tokens (B, N, D) and their token mask (B, N) bool, True for tokens of real frames
        (what ``vtm_log_odds`` takes), on the CPU."""
        if frame_mask is not None and bool(frame_mask.all()):
            frame_mask = None  # nothing padded: the encoder keeps its unmasked (fastest) attention
        with self._lock:
            fm = None if frame_mask is None else frame_mask.to(self.device)
            encoded = self.model.encode_video(clips.to(self.device), frame_mask=fm)
            emb = self.model.embed_video(encoded["pooled"]).float().cpu().numpy()
        tokens = encoded["tokens"].cpu()
        keep = encoded.get("token_mask")
        keep = torch.ones(tokens.shape[:2], dtype=torch.bool) if keep is None else keep.cpu()
        return emb, tokens, keep

    @torch.inference_mode()
    def vtm_log_odds(self, video_tokens: Tensor, text: str, video_mask: Optional[Tensor] = None) -> Tensor:
        """VTM match log-odds of one text against each of R videos' tokens (R, N, D) -> (R,) float32 on the
        CPU (the match probability is their sigmoid). ``video_mask`` (R, N) True for tokens of real frames
        (``encode_video_clips``' third output; None: all): the fusion does not attend to padded frames."""
        if self.vtm_unavailable is not None:
            raise ValueError(self.vtm_unavailable)
        r = video_tokens.shape[0]
        if video_mask is not None and bool(video_mask.all()):
            video_mask = None  # nothing padded: the fusion keeps its unmasked (fastest) attention
        with self._lock:
            encoded, mask = self._text([text])
            text_tokens = encoded["tokens"].repeat(r, 1, 1)  # (R, L, Dt)
            vmask = None if video_mask is None else video_mask.to(self.device)
            log_odds = self.model.vtm_log_odds(video_tokens.to(self.device), text_tokens, mask.repeat(r, 1), vmask)
        return log_odds.cpu()
