"""``clip_st``: open_clip's image ViT applied to every frame, with a temporal transformer on top.

Each frame goes through open_clip's ``VisionTransformer`` (so open_clip checkpoints load unchanged);
every output token is mapped into CLIP's joint space with the tower's own ``ln_post`` and ``proj``
(as MaskCLIP does for patch tokens). The frames' CLS tokens then pass through a small open_clip
``Transformer`` over time (CLIP4Clip's "seqTransf") whose LayerScale starts near zero, so that at
initialisation the video embedding is the mean of the CLIP image embeddings.

Tokens: ``[T temporal CLS tokens, T*P patch tokens]`` (B, T + T*P, output_dim); ``num_prefix_tokens = T``;
``pool`` = mean of the temporal CLS tokens. Masks (B, T*P) replace patch embeddings by a learned token.

Token-sparse encoding (``forward_features(video, drop=drop)``, ``drop`` (B, T*P) True = dropped, the same
number K of patches kept in every frame, see ``vl.models.sparse``): each frame's image ViT runs on its CLS
token and its K kept patches only, each with the position embedding of its own patch (as FLIP does), and
the tokens come out as ``[T temporal CLS tokens, T*K kept patch tokens]``.

A ``frame_mask`` (B, T), False for the padded frames of a short clip, is honoured fully: frames pass the
image tower one by one (padded frames blanked), the temporal transformer does not attend to padded
frames' CLS tokens, and ``pool`` averages the real frames' CLS tokens only.
"""

from __future__ import annotations

import os

import torch
from open_clip.transformer import QuickGELU, Transformer, VisionTransformer
from timm.layers import trunc_normal_
from torch import Tensor, nn

from .hub import load_open_clip_weights
from .layers import VideoEncoder, blank_padded_frames, check_mask, keep_visible, masked_mean, replace_masked
from .registry import VIDEO_ENCODERS, build


class ClipST(VideoEncoder):
    """open_clip ViT per frame + temporal transformer: video (B, T, C, H, W) -> (B, T + T*P, output_dim)."""

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 8,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        output_dim: int = 512,  # CLIP joint-space width: the token width of this encoder
        quick_gelu: bool = False,  # True for OpenAI's original weights, False for open_clip's LAION ones
        temporal_layers: int = 2,
        temporal_heads: int | None = None,  # default: output_dim // 64
        temporal_init_scale: float = 1e-4,  # LayerScale init of the temporal blocks (near-identity start)
        pretrained: str | os.PathLike | None = None,  # a local open_clip checkpoint file
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"clip_st: img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size, self.num_frames, self.patch_size = img_size, num_frames, patch_size
        self.embed_dim = output_dim
        self.num_prefix_tokens = num_frames
        self.token_layout = "per_frame"  # token-sparse encoding: the same count of patches kept in every frame
        self.grid = (num_frames, img_size // patch_size, img_size // patch_size)
        self.token_size = (1, patch_size, patch_size)
        self.visual = VisionTransformer(
            image_size=img_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
            mlp_ratio=mlp_ratio, output_dim=output_dim, act_layer=QuickGELU if quick_gelu else nn.GELU,
        )
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.frame_pos_embed = nn.Parameter(torch.zeros(1, num_frames, output_dim))
        self.temporal = Transformer(output_dim, temporal_layers, temporal_heads or max(output_dim // 64, 1),
                                    ls_init_value=temporal_init_scale)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.frame_pos_embed, std=0.02)
        self.is_pretrained = pretrained is not None
        if pretrained is not None:
            load_open_clip_weights(self.visual, pretrained, prefix="visual.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.visual.set_grad_checkpointing(enable)
        self.temporal.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        return {"mask_token", "frame_pos_embed", *(f"visual.{n}" for n in self.visual.no_weight_decay())}

    def pretrained_parameter_names(self) -> set[str]:
        """Names of the parameters loaded from the open_clip checkpoint (empty when none was given)."""
        return {f"visual.{n}" for n, _ in self.visual.named_parameters()} if self.is_pretrained else set()

    def embed_frames(self, frames: Tensor, mask: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """frames (B*T, C, H, W), mask (B*T, P) -> CLS + patch embeddings (B*T, 1 + P, width); with ``drop``
        (B*T, P), the same K patches kept per frame, CLS + kept patch embeddings (B*T, 1 + K, width)."""
        v = self.visual
        x = v.conv1(frames).flatten(2).transpose(1, 2)  # (B*T, P, width)
        if mask is not None:
            x = replace_masked(x, mask, self.mask_token)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)  # (B*T, 1, width)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # (B*T, 1 + P, width)
        if drop is not None:
            x = torch.cat([x[:, :1], keep_visible(x[:, 1:], drop)], dim=1)  # (B*T, 1 + K, width)
        return v.ln_pre(x)

    def encode_frames(self, video: Tensor, mask: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W) -> per-frame tokens in CLIP space (B, T, 1 + P or 1 + K, output_dim)."""
        B, T = video.shape[:2]
        if mask is not None:
            mask = check_mask(mask, B, self.num_grid_tokens, "clip_st").view(B * T, -1)  # (B*T, P)
        if drop is not None:
            drop = drop.reshape(B * T, -1)  # (B*T, P)
        x = self.embed_frames(video.flatten(0, 1), mask, drop)  # (B*T, 1 + P or 1 + K, width)
        x = self.visual.transformer(x)
        x = self.visual.ln_post(x) @ self.visual.proj  # (B*T, 1 + P, output_dim)
        return x.view(B, T, x.shape[1], -1)

    def token_keep(self, frame_mask: Tensor | None, mask: Tensor | None = None,
                   drop: Tensor | None = None) -> Tensor | None:
        """(B, T + T*P), or (B, T + T*K) with a token ``drop``, True for the CLS and patch tokens of real frames
        (None: all)."""
        keep = super().token_keep(frame_mask, drop=drop)
        if keep is not None:
            keep[:, :self.num_prefix_tokens] = frame_mask.bool()
        return keep

    def temporal_mask(self, frame_mask: Tensor | None) -> Tensor | None:
        """frame_mask (B, T) -> additive mask (B*heads, T, T) of the temporal transformer: -inf at padded keys."""
        if frame_mask is None:
            return None
        self.frame_keep(frame_mask)  # validates the shape and that every clip has a real frame
        heads = self.temporal.resblocks[0].attn.num_heads
        B, T = frame_mask.shape
        padded = ~frame_mask.bool()[:, None, None]  # (B, 1, 1, T)
        bias = torch.zeros(B, 1, 1, T, device=frame_mask.device).masked_fill(padded, float("-inf"))
        return bias.expand(B, heads, T, T).reshape(B * heads, T, T)  # (B*heads, T, T), batch-major

    def forward_features(self, video: Tensor, mask: Tensor | None = None,
                         frame_mask: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """video (B, T, C, H, W), mask (B, T*P) True = masked, frame_mask (B, T) True = real frame, drop (B, T*P)
        True = dropped (K kept per frame) -> tokens (B, T + T*P or T + T*K, output_dim)."""
        self.check_video(video)
        if drop is not None:
            drop = self.check_drop(drop, mask, video.shape[0])
        attn_mask = self.temporal_mask(frame_mask)  # (B*heads, T, T) | None
        x = self.encode_frames(blank_padded_frames(video, frame_mask), mask, drop)  # (B, T, 1 + P or 1 + K, E)
        cls = self.temporal(x[:, :, 0] + self.frame_pos_embed, attn_mask=attn_mask)  # (B, T, E)
        patches = x[:, :, 1:].flatten(1, 2)  # (B, T*P, E)
        return torch.cat([cls, patches], dim=1)

    def pool(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        """tokens (B, T + T*P, E), keep (B, T + T*P) | None -> (B, E): mean of the real frames' temporal CLS tokens."""
        T = self.num_prefix_tokens
        return masked_mean(tokens[:, :T], None if keep is None else keep[:, :T])


@VIDEO_ENCODERS.register(ClipST)
def clip_st_tiny(**kw) -> ClipST:
    """Debug size: 128 wide, 2 deep, 2 heads, patch 8, 32 px, 4 frames, 1 temporal layer."""
    return build(ClipST, dict(img_size=32, num_frames=4, patch_size=8, width=128, layers=2, heads=2,
                              output_dim=128, temporal_layers=1), kw)


@VIDEO_ENCODERS.register(ClipST)
def clip_st_base(**kw) -> ClipST:
    """open_clip ViT-B/16 per frame (768 wide, 12 deep, 12 heads, 512-d joint space), 8 frames."""
    return build(ClipST, dict(patch_size=16, width=768, layers=12, heads=12, output_dim=512), kw)


@VIDEO_ENCODERS.register(ClipST)
def clip_st_large(**kw) -> ClipST:
    """open_clip ViT-L/14 per frame (1024 wide, 24 deep, 16 heads, 768-d joint space), 8 frames."""
    return build(ClipST, dict(patch_size=14, width=1024, layers=24, heads=16, output_dim=768), kw)
