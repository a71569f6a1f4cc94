"""Masked visual modelling (MVM): mask video tokens, encode, predict each masked token's target.

One objective covers VIOLET (vq targets from the fused tokens, blockwise + attended masking), VIOLETv2's
target study (pixel, hog, feature), VideoMAE (tube masking at 0.9 with a light decoder over the visible
tokens only) and text-guided / motion-guided masking, chosen by ``MVMConfig``.

The forward pass follows MAE's named steps::

    mask   = mask_video(...)        # (B, N) bool on the encoder's grid, True = masked
    target = target(video)          # (B, N, ...) per grid token, no gradient
    latent = forward_encoder(...)   # (B, N or N_visible, D): encoder (or fused) tokens of the masked clip
    pred   = forward_decoder(...)   # (M, out_dim): predictions at the M masked tokens
    loss   = forward_loss(pred, target[mask])

Where the encoder keeps every position (swin3d, clip_st, vit_st other than ``joint``) masked tokens come
back as contextualised mask tokens and the head reads them directly (``decoder_depth: 0``) or through the
decoder. Where it drops them (``vit_st`` joint: sparse encoding), the decoder scatters the visible tokens
back among learned mask tokens, adds positions and runs ``decoder_depth`` timm ViT blocks, as VideoMAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .interfaces import MaskedVideoModel
from .masking import Grid, MaskSpec, VideoMasker, attention_scores, motion_scores, similarity_scores
from .mvm_targets import FeatureTarget, HOGTarget, PixelTarget, Target, VQTarget


TARGETS: tuple[str, ...] = ("vq", "pixel", "hog", "feature")


@dataclass
class VQConfig:
    """The frozen visual tokenizer of ``vq`` targets."""

    kind: Literal["vl", "dalle"] = "vl"  # vl: a `vl fit -c configs/vq_tokenizer/*.yaml` checkpoint; dalle: DALL-E's
    path: Optional[str] = None  # tokenizer .ckpt, or DALL-E's encoder.pkl (a local file; never downloaded)
    precomputed: Optional[str] = None  # shards of `vl data vq-targets`, looked up by sample key (deterministic
    # clips only: uniform sampling, crop_scale [1, 1]); clips not found are tokenized on the fly


@dataclass
class TeacherConfig:
    """The frozen teacher of ``feature`` targets: any registered video encoder."""

    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "clip_st_base"})  # name + options; clip_st
    # with `pretrained: /path/open_clip_pytorch_model.bin` is an open_clip ViT teacher
    checkpoint: Optional[str] = None  # a vl checkpoint (its model.video_encoder.* weights) or the encoder's state dict
    norm: Optional[Literal["imagenet", "clip"]] = None  # normalisation the teacher expects (default: input_norm)


@dataclass
class MVMConfig:
    """Masked visual modelling: what to predict, how to mask, where predictions come from."""

    target: Literal["vq", "pixel", "hog", "feature"] = "pixel"
    masking: list[MaskSpec] = field(default_factory=lambda: [MaskSpec("blockwise", 0.15)])  # drawn per sample
    source: Literal["encoder", "fusion"] = "encoder"  # predict from video-encoder tokens, or from the fused video
    # tokens of a single-stream fusion given the caption (VIOLET)
    decoder_depth: int = 1  # MAE-style decoder blocks; >= 1 where the encoder drops masked tokens; 0 = MLP head only
    decoder_dim: int = 256  # decoder width (VideoMAE-B: 384)
    decoder_heads: int = 4
    input_norm: Literal["imagenet", "clip"] = "imagenet"  # normalisation of the clips (data.init_args.norm)
    pixel_max_patch: int = 16  # pixel targets: tokens wider than this are average-pooled to it
    hog_bins: int = 9  # hog targets: orientation bins
    vq: VQConfig = field(default_factory=VQConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


class MVMDecoder(nn.Module):
    """Tokens on the grid from encoder tokens: (B, N or N_vis, D_in), mask (B, N) -> (B, N, dim).

    Visible tokens are projected and put back at their positions among learned mask tokens (when the
    encoder dropped the masked ones), positions are added, and ``depth`` timm ViT blocks run."""

    def __init__(self, in_dim: int, num_tokens: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    def unshuffle(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, N or N_vis, dim) -> (B, N, dim): visible tokens at their grid positions, mask tokens elsewhere."""
        B, N = mask.shape
        if tokens.shape[1] == N:  # the encoder kept every position; the mask token stays in the graph for DDP
            return tokens + 0.0 * self.mask_token.to(tokens.dtype)
        full = self.mask_token.to(tokens.dtype).expand(B, N, -1).clone()  # (B, N, dim)
        full[~mask] = tokens.reshape(-1, tokens.shape[-1])  # row-major, as the encoder dropped them
        return full

    def forward(self, tokens: Tensor, mask: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """``keep`` (B, N) True for grid tokens of real frames (None: all): no token attends to padded ones."""
        x = self.unshuffle(self.embed(tokens), mask) + self.pos_embed  # (B, N, dim)
        attn_mask = None if keep is None else keep.bool()[:, None, None, :]  # (B, 1, 1, N)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)


def fill_padded_frames(video: Tensor, frame_mask: Optional[Tensor]) -> Tensor:
    """video (B, T, C, H, W), frame_mask (B, T) True = real -> each padded frame replaced by the latest real
    frame before it (the first real frame where none precedes it), as ``datapipes.augment.pad_frames`` pads.

    Motion scores, targets and a teacher then see only real pixels, whatever the padding was filled with."""
    if frame_mask is None:
        return video
    real = frame_mask.bool()  # (B, T)
    T = real.shape[1]
    steps = torch.arange(T, device=video.device).expand_as(real)  # (B, T)
    first = real.float().argmax(dim=1, keepdim=True)  # (B, 1): the first real frame of each clip
    source = torch.where(real, steps, torch.zeros_like(steps)).cummax(dim=1).values  # latest real at or before t
    source = torch.where(real.cumsum(dim=1) > 0, source, first)  # (B, T)
    if bool((source == steps).all()):
        return video
    index = source[:, :, None, None, None].expand_as(video)  # (B, T, C, H, W)
    return video.gather(1, index)


class MVMLoss(nn.Module):
    """``forward(model, video (B, T, C, H, W), video_tokens (B, P + N, Dv), text_tokens (B, L, Dt), text_mask,
    text_embeds (B, E), keys, frame_mask) -> {"mvm_loss", metrics}``.

    ``video_tokens`` / ``text_embeds`` are the unmasked pass's (they score ``attended`` and ``text_guided``
    masking); the masked clip is encoded again here. ``mvm_ratio`` reports the masked share.

    ``frame_mask`` (B, T) False marks a short clip's padded frames (``Batch.frame_mask``): the encoder and
    the fusion ignore them, motion scores and targets read real frames only (``fill_padded_frames``), and
    the loss is taken over the masked tokens of real frames, so nothing depends on the padding's pixels.
    """

    def __init__(self, target: Target, masking: list[MaskSpec], grid: Grid, in_dim: int,
                 source: str = "encoder", decoder_depth: int = 1, decoder_dim: int = 256,
                 decoder_heads: int = 4) -> None:
        super().__init__()
        self.predicted = True  # whether the last forward had masked tokens of real frames to predict
        if source not in ("encoder", "fusion"):
            raise ValueError(f"mvm: source must be 'encoder' or 'fusion', got {source!r}")
        self.target, self.masker, self.grid, self.source = target, VideoMasker(masking), tuple(grid), source
        num_tokens = grid[0] * grid[1] * grid[2]
        self.decoder = (MVMDecoder(in_dim, num_tokens, decoder_dim, decoder_depth, decoder_heads)
                        if decoder_depth > 0 else None)
        width = decoder_dim if self.decoder is not None else in_dim
        transform = [] if self.decoder is not None else [nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)]
        self.head = nn.Sequential(*transform, nn.Linear(width, target.out_dim))

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        return {"decoder.mask_token", "decoder.pos_embed"} if self.decoder is not None else set()

    # -- steps ------------------------------------------------------------------------------------
    @torch.no_grad()
    def mask_scores(self, model: MaskedVideoModel, video: Tensor, video_tokens: Tensor, text_tokens: Tensor,
                    text_mask: Tensor, text_embeds: Tensor, needed: set[str],
                    frame_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """(B, N) scores of the scored strategies in ``needed``, from the unmasked pass (``video`` with its
        padded frames filled by ``fill_padded_frames``; the fusion does not attend to padded frames' tokens)."""
        prefix = model.video_encoder.num_prefix_tokens
        scores: dict[str, Tensor] = {}
        if "attended" in needed:
            video_mask = model.video_encoder.token_keep(frame_mask)  # (B, P + N) | None
            fused = model.fuse(video_tokens.detach(), text_tokens.detach(), text_mask, video_mask,
                               return_attention=True)
            scores["attended"] = attention_scores(fused["attentions"][:, :, prefix:], text_mask)
        if "text_guided" in needed:
            token_embeds = model.embed_video(video_tokens.detach()[:, prefix:])  # (B, N, E)
            scores["text_guided"] = similarity_scores(token_embeds, text_embeds.detach())
        if "motion" in needed:
            scores["motion"] = motion_scores(video.float(), self.grid)
        return scores

    def mask_video(self, model: MaskedVideoModel, video: Tensor, video_tokens: Tensor, text_tokens: Tensor,
                   text_mask: Tensor, text_embeds: Tensor, generator: Optional[torch.Generator] = None,
                   frame_mask: Optional[Tensor] = None) -> Tensor:
        """One strategy per sample -> mask (B, N) bool on the grid, True = masked."""
        choice = self.masker.draw(video.shape[0], generator)  # (B,)
        scores = self.mask_scores(model, video, video_tokens, text_tokens, text_mask, text_embeds,
                                  self.masker.needed(choice), frame_mask)
        return self.masker(self.grid, choice, scores, generator, video.device)

    def forward_encoder(self, model: MaskedVideoModel, video: Tensor, mask: Tensor, text_tokens: Tensor,
                        text_mask: Tensor, frame_mask: Optional[Tensor] = None) -> Tensor:
        """Masked clip -> grid tokens (B, N, D) (masked ones as mask tokens) or (B, N_vis, D) (dropped).
        ``frame_mask`` (B, T) False = padded frame: the encoder and the fusion ignore those frames."""
        encoder = model.video_encoder
        counts = mask.sum(dim=1)  # (B,)
        if encoder.drops_masked_tokens and bool((counts != counts[0]).any()):
            raise ValueError(f"mvm: {type(encoder).__name__} drops masked tokens (sparse encoding), which needs "
                             f"the same masked count in every sample; the strategies mask "
                             f"{self.masker.counts(self.grid)} tokens of the {self.grid} grid: give them "
                             f"ratios that mask equal counts")
        tokens = encoder.forward_features(video, mask, frame_mask)  # (B, P + N or P + N_vis, Dv)
        if self.source == "fusion":
            fused = model.fuse(tokens, text_tokens, text_mask, encoder.token_keep(frame_mask, mask))
            if "video_tokens" not in fused:
                raise ValueError(f"mvm: source 'fusion' needs fused video tokens, which {type(model.fusion).__name__} "
                                 f"does not return (use single_stream fusion, or source: encoder)")
            tokens = fused["video_tokens"]
        return tokens[:, encoder.num_prefix_tokens:]

    def forward_decoder(self, latent: Tensor, mask: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """Grid tokens (B, N or N_vis, D) -> predictions at the masked tokens (M, out_dim); ``keep`` (B, N)
        True for grid tokens of real frames (None: all) keeps the decoder from attending to padded ones."""
        if self.decoder is None:
            if latent.shape[1] != mask.shape[1]:
                raise ValueError("mvm: the encoder dropped the masked tokens (sparse encoding); predicting them "
                                 "needs a decoder: set decoder_depth >= 1")
            return self.head(latent[mask])  # (M, out_dim)
        return self.head(self.decoder(latent, mask, keep)[mask])  # (M, out_dim)

    def forward_loss(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Predictions (M, out_dim) and targets (M, ...) of the masked tokens -> loss and metrics."""
        return self.target.loss(pred, target)

    def forward(self, model: MaskedVideoModel, video: Tensor, video_tokens: Tensor, text_tokens: Tensor,
                text_mask: Tensor, text_embeds: Tensor, generator: Optional[torch.Generator] = None,
                keys: Optional[Sequence[str]] = None, frame_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        video = fill_padded_frames(video, frame_mask)  # (B, T, C, H, W): padded frames copy real ones
        mask = self.mask_video(model, video, video_tokens, text_tokens, text_mask, text_embeds, generator,
                               frame_mask)  # (B, N)
        latent = self.forward_encoder(model, video, mask, text_tokens, text_mask, frame_mask)
        # (B, N) True for grid tokens of real frames: a padded frame's token has nothing to reconstruct
        keep = model.video_encoder.token_keep(frame_mask)
        real = torch.ones_like(mask) if keep is None else keep[:, model.video_encoder.num_prefix_tokens:]
        self.predicted = bool((mask & real).any())
        if not self.predicted:  # nothing to predict: a zero loss, a function of the latent
            zero = latent.sum() * 0.0  # its decoder and head then get no gradient (see VLModule.sometimes_unused)
            return {"mvm_loss": zero, "mvm_ratio": zero.detach()}
        target = self.target.compute(video, keys)  # (B, N, ...)
        pred = self.forward_decoder(latent, mask, None if keep is None else real)  # (M, out_dim), mask's order
        scored = real[mask]  # (M,) which of those belong to real frames
        out = self.forward_loss(pred[scored], target[mask & real])
        out["mvm_ratio"] = mask.float().mean()
        return out


# -- building from config -------------------------------------------------------------------------
def build_teacher(cfg: TeacherConfig) -> nn.Module:
    """The frozen teacher encoder of ``feature`` targets, with its checkpoint's weights when one is given."""
    from vl.models import create_video_encoder

    options = {k: v for k, v in cfg.encoder.items() if k != "name"}
    if "name" not in cfg.encoder:
        raise ValueError(f"mvm teacher: encoder needs a 'name' (a registered video encoder), got {cfg.encoder}")
    teacher = create_video_encoder(cfg.encoder["name"], **options)
    if cfg.checkpoint is not None:
        teacher.load_state_dict(encoder_state_dict(cfg.checkpoint), strict=True)
    return teacher.eval().requires_grad_(False)


def encoder_state_dict(path: str) -> dict[str, Tensor]:
    """A video encoder's weights from a vl checkpoint (``model.video_encoder.*``) or a plain state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mvm teacher checkpoint {path!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # a Lightning checkpoint the user named
    state = ckpt.get("state_dict", ckpt)
    for prefix in ("model.video_encoder.", "video_encoder."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def build_target(cfg: MVMConfig, encoder: nn.Module) -> Target:
    """The target module ``cfg.target`` names, for ``encoder``'s grid and token size."""
    grid, token_size = tuple(encoder.grid), tuple(encoder.token_size)
    if cfg.target == "pixel":
        return PixelTarget(grid, token_size, max_patch=cfg.pixel_max_patch)
    if cfg.target == "hog":
        return HOGTarget(grid, token_size, bins=cfg.hog_bins)
    if cfg.target == "vq":
        if cfg.vq.path is None:
            raise ValueError("mvm: target 'vq' needs vq.path: a tokenizer checkpoint from `vl fit -c "
                             "configs/vq_tokenizer/fsq_tiny.yaml` (kind: vl) or DALL-E's encoder.pkl (kind: dalle)")
        if cfg.vq.kind == "dalle":
            from vl.models.dalle import DalleTokenizer

            tokenizer: nn.Module = DalleTokenizer(cfg.vq.path, norm=cfg.input_norm)
        else:
            from vl.models.vq_tokenizer import load_vq_tokenizer_checkpoint

            tokenizer = load_vq_tokenizer_checkpoint(cfg.vq.path)
        table = None
        if cfg.vq.precomputed is not None:
            from vl.tools.vq_targets import load_vq_targets

            table = load_vq_targets(cfg.vq.precomputed)
        return VQTarget(tokenizer, grid, token_size, input_norm=cfg.input_norm, precomputed=table)
    if cfg.target == "feature":
        return FeatureTarget(build_teacher(cfg.teacher), grid, cfg.input_norm, cfg.teacher.norm)
    raise ValueError(f"mvm: unknown target {cfg.target!r}; valid: {', '.join(TARGETS)}")


def build_mvm(cfg: MVMConfig, model: MaskedVideoModel) -> MVMLoss:
    """The MVM objective of ``cfg`` for ``model`` (its video encoder's grid; its fusion width for ``fusion``)."""
    encoder = model.video_encoder
    in_dim = model.fusion.dim if cfg.source == "fusion" else encoder.embed_dim
    return MVMLoss(build_target(cfg, encoder), list(cfg.masking), tuple(encoder.grid), in_dim, cfg.source,
                   cfg.decoder_depth, cfg.decoder_dim, cfg.decoder_heads)
