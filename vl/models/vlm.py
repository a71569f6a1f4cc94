"""``VideoLanguageModel``: a video encoder, a text encoder and a fusion module, each built by name from
its registry, plus the VTC projections, the learnable temperature and the VTM/MLM heads.

The model returns tokens, embeddings and logits, never losses (``vl.objectives`` turns them into
losses). ``model.config`` rebuilds it: ``vl.create_model(**model.config)``.

Presets are registered functions (``vl_tiny``, ``violet_base``, ...) that return a model;
``create_model(name, video={...}, text={...}, fusion={...}, embed_dim=...)`` overrides parts: a part
dict with the same ``name`` (or none) updates the preset's options, one with another ``name`` replaces
them.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Importing the families fills the registries.
from . import clip_st as _clip_st, fusion as _fusion, swin3d as _swin3d, text as _text, vit_st as _vit_st  # noqa: F401
from .registry import FUSIONS, MODELS, TEXT_ENCODERS, VIDEO_ENCODERS

PartSpec = dict[str, Any]  # {"name": registered name, **options}
PARTS = ("video", "text", "fusion")
HEADS = ("vtm", "mlm")


class MLMHead(nn.Module):
    """BERT's LM head: dense + GELU + LayerNorm, then a decoder to the vocabulary (B, L, D) -> (B, L, V).

    The decoder weight is ``tied_to`` (the text encoder's word embeddings) when given."""

    def __init__(self, dim: int, vocab_size: int, tied_to: nn.Embedding | None = None) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, vocab_size)
        self.tied = tied_to is not None
        if tied_to is not None:
            self.decoder.weight = tied_to.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(self.transform(tokens))


class VideoLanguageModel(nn.Module):
    """Video encoder + text encoder + fusion, with VTC projections and VTM/MLM heads.

    Args:
        video, text, fusion: ``{"name": registered name, **options}`` for each part.
        embed_dim: width of the shared VTC embedding space.
        heads: which heads to build (``vtm``, ``mlm``); leave out the ones no objective uses.
        tie_mlm_decoder: tie the MLM decoder to the text word embeddings when their shapes allow.
        name: the preset this model was created from (recorded in ``config``).
    """

    def __init__(self, video: PartSpec, text: PartSpec, fusion: PartSpec, embed_dim: int = 256,
                 heads: Sequence[str] = HEADS, tie_mlm_decoder: bool = True, name: str | None = None) -> None:
        super().__init__()
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"model: unknown heads {sorted(unknown)}; valid heads: {', '.join(HEADS)}")
        self._config = copy.deepcopy(dict(name=name, video=dict(video), text=dict(text), fusion=dict(fusion),
                                          embed_dim=embed_dim, heads=list(heads), tie_mlm_decoder=tie_mlm_decoder))
        self.video_encoder = _create_part(VIDEO_ENCODERS, video)
        self.text_encoder = _create_part(TEXT_ENCODERS, text)
        dims = {"video_dim": self.video_encoder.embed_dim, "text_dim": self.text_encoder.embed_dim}
        self.fusion = _create_part(FUSIONS, fusion, reserved=dims)
        self.video_proj = nn.Linear(self.video_encoder.embed_dim, embed_dim)
        self.text_proj = nn.Linear(self.text_encoder.embed_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.vtm_head = nn.Linear(self.fusion.dim, 2) if "vtm" in heads else None
        self.mlm_head = self._mlm_head(tie_mlm_decoder) if "mlm" in heads else None

    def _mlm_head(self, tie: bool) -> MLMHead:
        words = self.text_encoder.word_embeddings
        fits = words is not None and tuple(words.weight.shape) == (self.text_encoder.vocab_size, self.fusion.dim)
        return MLMHead(self.fusion.dim, self.text_encoder.vocab_size, words if tie and fits else None)

    @property
    def config(self) -> dict[str, Any]:
        """Everything ``create_model(**config)`` / ``VideoLanguageModel(**config)`` needs to rebuild this model."""
        return copy.deepcopy(self._config)

    # -- encoders -------------------------------------------------------------------------------
    def encode_video(self, video: Tensor, mask: Tensor | None = None, frame_mask: Tensor | None = None,
                     drop: Tensor | None = None) -> dict[str, Tensor]:
        """video (B, T, C, H, W), mask (B, N_grid) True = masked, frame_mask (B, T) True = real frame
        (``Batch.frame_mask``; None: every frame is real) -> tokens (B, N, Dv), pooled (B, Dv) over the
        real frames only and, with a ``frame_mask``, token_mask (B, N) True for tokens of real frames (the
        ``video_mask`` to give ``fuse``). ``drop`` (B, N_grid) True = dropped encodes the clip on the kept
        tokens only (token-sparse pretraining, ``vl.models.sparse.TokenSparsity``): tokens, token_mask and
        the pooled embedding then cover the kept tokens (B, prefix + N_kept). Evaluation passes no ``drop``."""
        encoder = self.video_encoder
        if drop is None:  # the dense path: every grid token
            tokens = encoder.forward_features(video, mask, frame_mask)
            keep = encoder.token_keep(frame_mask, mask)  # (B, N) | None
        else:
            tokens = encoder.forward_features(video, mask, frame_mask, drop=drop)
            keep = encoder.token_keep(frame_mask, mask, drop=drop)  # (B, prefix + N_kept) | None
        out = {"tokens": tokens, "pooled": encoder.pool(tokens, keep)}
        if keep is not None:
            out["token_mask"] = keep
        return out

    def encode_text(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """ids (B, L), mask (B, L) -> tokens (B, L, Dt), pooled (B, Dt)."""
        tokens = self.text_encoder(ids, mask)
        return {"tokens": tokens, "pooled": self.text_encoder.pool(tokens, mask)}

    def embed_video(self, pooled: Tensor) -> Tensor:
        """(B, Dv) -> L2-normalised (B, embed_dim) for VTC."""
        return F.normalize(self.video_proj(pooled), dim=-1)

    def embed_text(self, pooled: Tensor) -> Tensor:
        """(B, Dt) -> L2-normalised (B, embed_dim) for VTC."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def get_logit_scale(self) -> Tensor:
        """exp(logit_scale), the parameter clamped at log(100) as CLIP does."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def fuse(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
             video_mask: Tensor | None = None, return_attention: bool = False,
             causal: bool = False) -> dict[str, Tensor]:
        """Fusion of (B, N, Dv) video and (B, L, Dt) text tokens -> dict(tokens, text_tokens (B, L, D), cls (B, D),
        pooled (B, D) (by the fusion's ``pooling``: what the VTM, QA and multiple-choice heads read), attentions
        (B, L, N) when asked). ``video_mask`` (B, N): 1 = attend (e.g. not a padded frame).
        ``causal``: text token i sees text 0..i only (a decoder over the text, for captioning)."""
        return self.fusion(video_tokens, text_tokens, text_mask, video_mask, return_attention, causal)

    def vtm_log_odds(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor,
                     video_mask: Tensor | None = None) -> Tensor:
        """VTM match log-odds of P (video, text) pairs: video tokens (P, N, Dv), text tokens (P, L, Dt), text
        mask (P, L) -> (P,) float32 (the match probability is their sigmoid). The one place the VTM head scores
        pairs for re-ranking, multiple choice and search."""
        if self.vtm_head is None:
            raise ValueError("this model has no VTM head (it was built without 'vtm' in its heads)")
        logits = self.vtm_head(self.fuse(video_tokens, text_tokens, text_mask, video_mask)["pooled"]).float()
        return logits[:, 1] - logits[:, 0]  # (P,)

    def forward(self, video: Tensor, text_ids: Tensor, text_mask: Tensor,
                video_token_mask: Tensor | None = None, frame_mask: Tensor | None = None,
                drop: Tensor | None = None) -> dict[str, Tensor]:
        """One pass over matched pairs -> embeddings and logits (no losses). ``frame_mask`` (B, T) False
        marks padded frames: the video embedding averages real frames and the fusion does not attend to
        padded frames' tokens. ``drop`` (B, N_grid): token-sparse encoding (see ``encode_video``).

        Returns ``video_tokens`` (B, N, Dv), ``text_tokens`` (B, L, Dt), ``video_embeds`` / ``text_embeds``
        (B, E) normalised, ``logit_scale`` (the log-space parameter, as ``VTCLoss`` takes it),
        ``fused_text_tokens`` (B, L, D), ``fused_cls`` (B, D), ``fused_pooled`` (B, D) (by the fusion's
        ``pooling``) and, with a VTM head, ``vtm_logits`` (B, 2) of ``fused_pooled`` for these (positive) pairs.
        """
        v = self.encode_video(video, video_token_mask, frame_mask, drop)
        t = self.encode_text(text_ids, text_mask)
        fused = self.fuse(v["tokens"], t["tokens"], text_mask, v.get("token_mask"))
        out = {
            "video_tokens": v["tokens"], "text_tokens": t["tokens"],
            "video_embeds": self.embed_video(v["pooled"]), "text_embeds": self.embed_text(t["pooled"]),
            "logit_scale": self.logit_scale,
            "fused_text_tokens": fused["text_tokens"], "fused_cls": fused["cls"], "fused_pooled": fused["pooled"],
        }
        if self.vtm_head is not None:
            out["vtm_logits"] = self.vtm_head(fused["pooled"])
        return out

    # -- training helpers -----------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Full parameter names to exclude from weight decay (1-D parameters aside, which optimizers skip)."""
        names = {"logit_scale"}
        for prefix, part in (("video_encoder", self.video_encoder), ("text_encoder", self.text_encoder),
                             ("fusion", self.fusion)):
            names |= {f"{prefix}.{n}" for n in part.no_weight_decay()}
        return names & {n for n, _ in self.named_parameters()}

    def pretrained_parameter_names(self) -> set[str]:
        """Full names of parameters that came from pretrained weights (for a lower learning rate)."""
        video = {f"video_encoder.{n}" for n in self.video_encoder.pretrained_parameter_names()}
        text = {f"text_encoder.{n}" for n in self.text_encoder.pretrained_parameter_names()}
        return video | text

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in every part."""
        for part in (self.video_encoder, self.text_encoder, self.fusion):
            part.set_grad_checkpointing(enable)


def _create_part(registry, spec: PartSpec, reserved: dict[str, Any] | None = None) -> nn.Module:
    """Build one part from ``{"name": ..., **options}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{registry.part}: expected a dict with a 'name' key, got {spec!r}; "
                         f"registered: {', '.join(registry.names())}")
    options = {k: v for k, v in spec.items() if k != "name"}
    return registry.create(spec["name"], reserved=reserved, **options)


def merge_spec(preset: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A preset's spec with ``overrides``: part dicts update the preset's part when they name the same
    (or no) part, and replace it when they name another; other keys replace."""
    spec = copy.deepcopy(preset)
    for key, value in overrides.items():
        if key in PARTS:
            if not isinstance(value, dict):
                raise ValueError(f"model: override {key!r} must be a dict of {key} options, got {value!r}")
            same = value.get("name", spec[key]["name"]) == spec[key]["name"]
            spec[key] = {**spec[key], **value} if same else dict(value)
        else:
            spec[key] = value
    return spec


def _preset(name: str, spec: dict[str, Any], overrides: dict[str, Any]) -> VideoLanguageModel:
    """The body of every preset function."""
    return VideoLanguageModel(name=name, **merge_spec(spec, overrides))


# -- factories ------------------------------------------------------------------------------------
def create_model(name: str, **overrides: Any) -> VideoLanguageModel:
    """A registered preset with per-part overrides, e.g.
    ``create_model("vl_tiny", video={"temporal": "divided"}, text={"name": "bert", "pretrained": "minilm"})``.
    Unknown keys raise ``ValueError`` naming the key, the part and the valid options."""
    MODELS.check_options(name, overrides, reserved=("name",))
    return MODELS.get(name)(**overrides)


def list_models(pattern: str = "*") -> list[str]:
    """Registered full-model presets matching a shell-style pattern."""
    return MODELS.names(pattern)


def create_video_encoder(name: str, **options: Any) -> nn.Module:
    """A registered video encoder (``vit_st_tiny``, ``swin3d_base``, ``clip_st_base``, ...)."""
    return VIDEO_ENCODERS.create(name, **options)


def list_video_encoders(pattern: str = "*") -> list[str]:
    return VIDEO_ENCODERS.names(pattern)


def create_text_encoder(name: str, **options: Any) -> nn.Module:
    """A registered text encoder (``bert``, ``bert_tiny``, ``minilm``, ``clip_text_base``, ...)."""
    return TEXT_ENCODERS.create(name, **options)


def list_text_encoders(pattern: str = "*") -> list[str]:
    return TEXT_ENCODERS.names(pattern)


def create_fusion(name: str, video_dim: int, text_dim: int, **options: Any) -> nn.Module:
    """A registered fusion module (``single_stream``, ``cross_attention``) for the given input widths."""
    return FUSIONS.create(name, reserved={"video_dim": video_dim, "text_dim": text_dim}, **options)


def list_fusions(pattern: str = "*") -> list[str]:
    return FUSIONS.names(pattern)


# -- presets --------------------------------------------------------------------------------------
# The options a preset accepts are VideoLanguageModel's (video, text, fusion, embed_dim, heads, ...).
TINY_TEXT = dict(name="bert_tiny")  # 128 wide, uncased WordPiece vocab (MiniLM's), trains in seconds


def tiny_fusion(name: str) -> dict[str, Any]:
    """The tiny presets' 2-layer fusion; its heads (VTM, QA, multiple choice) read the mean of the fused text
    tokens, as suits a text encoder trained from scratch, whose first token says nothing yet."""
    return dict(name=name, depth=2, pooling="mean")


@MODELS.register(VideoLanguageModel)
def vl_tiny(**kw) -> VideoLanguageModel:
    """Debug model: vit_st_tiny (joint) + bert_tiny + 2-layer single-stream fusion, 128-d VTC space."""
    return _preset("vl_tiny", dict(video=dict(name="vit_st_tiny"), text=TINY_TEXT,
                                   fusion=tiny_fusion("single_stream"), embed_dim=128), kw)


@MODELS.register(VideoLanguageModel)
def violet_tiny(**kw) -> VideoLanguageModel:
    """Debug VIOLET: swin3d_tiny + bert_tiny + 2-layer single-stream fusion."""
    return _preset("violet_tiny", dict(video=dict(name="swin3d_tiny"), text=TINY_TEXT,
                                       fusion=tiny_fusion("single_stream"), embed_dim=128), kw)


@MODELS.register(VideoLanguageModel)
def allinone_tiny(**kw) -> VideoLanguageModel:
    """Debug All-in-one: vit_st_tiny with token rolling + bert_tiny + 2-layer single-stream fusion."""
    return _preset("allinone_tiny", dict(video=dict(name="vit_st_tiny", temporal="rolling"), text=TINY_TEXT,
                                         fusion=tiny_fusion("single_stream"), embed_dim=128), kw)


@MODELS.register(VideoLanguageModel)
def clip_tiny(**kw) -> VideoLanguageModel:
    """Debug CLIP-based model: clip_st_tiny + bert_tiny + 2-layer cross-attention fusion."""
    return _preset("clip_tiny", dict(video=dict(name="clip_st_tiny"), text=TINY_TEXT,
                                     fusion=tiny_fusion("cross_attention"), embed_dim=128), kw)


@MODELS.register(VideoLanguageModel)
def violet_base(**kw) -> VideoLanguageModel:
    """VIOLET: Video Swin-B (8 frames, 224 px) + BERT-base text + 6-layer single-stream fusion."""
    return _preset("violet_base", dict(video=dict(name="swin3d_base", num_frames=8), text=dict(name="bert_base"),
                                       fusion=dict(name="single_stream", depth=6), embed_dim=256), kw)


@MODELS.register(VideoLanguageModel)
def allinone_base(**kw) -> VideoLanguageModel:
    """All-in-one: ViT-B/16 with token rolling on 3 frames + BERT-base text + 6-layer single-stream fusion."""
    video = dict(name="vit_st_base", temporal="rolling", num_frames=3, tubelet_size=1)
    return _preset("allinone_base", dict(video=video, text=dict(name="bert_base"),
                                         fusion=dict(name="single_stream", depth=6), embed_dim=256), kw)


@MODELS.register(VideoLanguageModel)
def clip_base(**kw) -> VideoLanguageModel:
    """CLIP ViT-B/16 per frame (8 frames) + BERT-base text + 6-layer cross-attention fusion (VindLU-like)."""
    return _preset("clip_base", dict(video=dict(name="clip_st_base"), text=dict(name="bert_base"),
                                     fusion=dict(name="cross_attention", depth=6), embed_dim=256), kw)
