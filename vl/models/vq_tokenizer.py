"""Visual tokenizers: images -> discrete codes, the ``vq`` targets of masked visual modelling.

``VisualTokenizer`` is a small convolutional autoencoder (ResNet blocks, ``2^stages`` downsampling) with
a lookup-free quantizer from ``vector-quantize-pytorch``: FSQ (finite scalar quantization) or LFQ.
It is trained in this framework with ``vl fit -c configs/vq_tokenizer/<name>.yaml`` (``vl.lit.vq_tokenizer``).

Every tokenizer used as an MVM target keeps one interface:
``encode(images (M, C, H, W) normalised with the data's ``norm``) -> ids (M, H/f, W/f) long``,
``codebook_size`` and ``downsample`` (f). ``DalleTokenizer`` (``vl.models.dalle``) keeps it too.

Sizes are registered functions in ``VQ_TOKENIZERS`` (``fsq_tiny``, ``fsq_base``, ``lfq_tiny``, ...).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, LFQ

from .registry import Registry, build

VQ_TOKENIZERS = Registry("visual tokenizer")
# Where a checkpoint of ``vl.lit.vq_tokenizer.VQTokenizerModule`` keeps the tokenizer's config and weights; the
# first of each is what the module writes, the others are read too, so that every such checkpoint loads.
CHECKPOINT_CONFIG_KEYS = ("vl_vq_tokenizer_config", "vl_tokenizer_config")
CHECKPOINT_PREFIXES = ("vq_tokenizer.", "tokenizer.")
Quantizer = Literal["fsq", "lfq"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a residual: (M, Cin, H, W) -> (M, Cout, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(min(32, c_in // 4) or 1, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(min(32, c_out // 4) or 1, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _stage_widths(width: int, channel_mult: Sequence[int]) -> list[int]:
    return [width * m for m in channel_mult]


class ConvEncoder(nn.Module):
    """images (M, C, H, W) -> latents (M, code_dim, H/2^S, W/2^S), S = len(channel_mult)."""

    def __init__(self, in_chans: int, width: int, channel_mult: Sequence[int], blocks: int, code_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1)]
        c = width
        for w in _stage_widths(width, channel_mult):
            layers += [ResBlock(c if i == 0 else w, w) for i in range(blocks)]
            layers.append(nn.Conv2d(w, w, 4, stride=2, padding=1))  # halve H and W
            c = w
        layers += [nn.GroupNorm(min(32, c // 4) or 1, c), nn.SiLU(), nn.Conv2d(c, code_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ConvDecoder(nn.Module):
    """latents (M, code_dim, h, w) -> images (M, C, h*2^S, w*2^S)."""

    def __init__(self, out_chans: int, width: int, channel_mult: Sequence[int], blocks: int, code_dim: int) -> None:
        super().__init__()
        widths = _stage_widths(width, channel_mult)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(code_dim, widths[0], 3, padding=1)]
        c = widths[0]
        for w in widths:
            layers += [ResBlock(c if i == 0 else w, w) for i in range(blocks)]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)]
            c = w
        layers += [nn.GroupNorm(min(32, c // 4) or 1, c), nn.SiLU(), nn.Conv2d(c, out_chans, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class VisualTokenizer(nn.Module):
    """Conv encoder -> FSQ or LFQ -> conv decoder.

    Args:
        in_chans: image channels.
        width: channels of the first stage; stage ``i`` has ``width * channel_mult[i]``.
        channel_mult: one entry per stage; each stage halves the resolution (``downsample = 2^stages``).
        blocks: residual blocks per stage.
        quantizer: ``fsq`` (codes = product of ``levels``) or ``lfq`` (codes = ``codebook_size``, a power of 2).
        levels: FSQ levels per latent channel, e.g. (8, 5, 5, 5) = 1000 codes.
        codebook_size: LFQ codebook size.
        entropy_weight: LFQ entropy auxiliary loss weight (keeps the codebook in use).
        norm: normalisation of the images it reads (``imagenet`` or ``clip``), recorded for its users.
    """

    def __init__(self, in_chans: int = 3, width: int = 64, channel_mult: Sequence[int] = (1, 2, 2), blocks: int = 1,
                 quantizer: Quantizer = "fsq", levels: Sequence[int] = (8, 5, 5, 5), codebook_size: int = 1024,
                 entropy_weight: float = 0.1, norm: str = "imagenet") -> None:
        super().__init__()
        if quantizer not in ("fsq", "lfq"):
            raise ValueError(f"tokenizer: quantizer must be 'fsq' or 'lfq', got {quantizer!r}")
        self.quantizer_kind, self.norm, self.in_chans = quantizer, norm, in_chans
        self.downsample = 2 ** len(channel_mult)
        if quantizer == "fsq":
            self.quantizer = FSQ(levels=list(levels))
            self.codebook_size, code_dim = int(math.prod(levels)), len(levels)
        else:
            self.quantizer = LFQ(codebook_size=codebook_size, dim=int(math.log2(codebook_size)),
                                 entropy_loss_weight=entropy_weight)
            self.codebook_size, code_dim = codebook_size, int(math.log2(codebook_size))
        self.encoder = ConvEncoder(in_chans, width, channel_mult, blocks, code_dim)
        self.decoder = ConvDecoder(in_chans, width, channel_mult, blocks, code_dim)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """latents (M, d, h, w) -> (quantized (M, d, h, w), ids (M, h, w) long, auxiliary loss)."""
        if self.quantizer_kind == "fsq":
            zq, ids = self.quantizer(z)
            return zq, ids.long(), z.new_zeros(())
        zq, ids, aux = self.quantizer(z)
        return zq, ids.long(), aux

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (M, C, H, W) -> ``recon`` (M, C, H, W), ``ids`` (M, H/f, W/f), ``aux_loss`` (scalar)."""
        zq, ids, aux = self.quantize(self.encoder(images))
        return {"recon": self.decoder(zq), "ids": ids, "aux_loss": aux}

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (M, C, H, W) -> code ids (M, H/f, W/f) long."""
        return self.quantize(self.encoder(images))[1]

    @torch.no_grad()
    def decode_ids(self, ids: Tensor) -> Tensor:
        """code ids (M, h, w) -> images (M, C, h*f, w*f)."""
        codes = self.quantizer.indices_to_codes(ids)  # (M, d, h, w)
        return self.decoder(codes)


def codebook_usage(ids: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Code ids (any shape) -> ``usage`` (share of the codebook used) and ``perplexity`` (exp entropy)."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp(min=1.0)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum()
    return {"usage": (counts > 0).float().mean(), "perplexity": entropy.exp()}


def create_vq_tokenizer(name: str, **options: Any) -> VisualTokenizer:
    """A registered tokenizer size (``fsq_tiny``, ``fsq_base``, ``lfq_tiny``, ``lfq_base``) with overrides."""
    return VQ_TOKENIZERS.create(name, **options)


def list_vq_tokenizers(pattern: str = "*") -> list[str]:
    return VQ_TOKENIZERS.names(pattern)


def load_vq_tokenizer_checkpoint(path: str | os.PathLike) -> VisualTokenizer:
    """A frozen ``VisualTokenizer`` from a checkpoint of ``vl fit -c configs/vq_tokenizer/...`` (its config,
    ``CHECKPOINT_CONFIG_KEYS``, rebuilds it; its weights, ``CHECKPOINT_PREFIXES``, fill it), in eval mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"visual tokenizer checkpoint {str(path)!r} does not exist; train one with "
                                f"`vl fit -c configs/vq_tokenizer/fsq_tiny.yaml` and pass its checkpoints/last.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # a Lightning checkpoint the user named
    key = next((k for k in CHECKPOINT_CONFIG_KEYS if k in ckpt), None)
    if key is None:
        raise ValueError(f"{str(path)!r} is not a visual tokenizer checkpoint of `vl fit -c configs/vq_tokenizer/...` "
                         f"(no {CHECKPOINT_CONFIG_KEYS[0]}); for DALL-E's encoder set kind: dalle")
    config = dict(ckpt[key])
    model = create_vq_tokenizer(config.pop("name"), **config)
    prefix = next((p for p in CHECKPOINT_PREFIXES if any(k.startswith(p) for k in ckpt["state_dict"])),
                  CHECKPOINT_PREFIXES[0])
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@VQ_TOKENIZERS.register(VisualTokenizer)
def fsq_tiny(**kw) -> VisualTokenizer:
    """Debug size: width 32, 3 stages (f = 8), FSQ levels (8, 5, 5, 5) = 1000 codes."""
    return build(VisualTokenizer, dict(width=32, channel_mult=(1, 2, 2), blocks=1, levels=(8, 5, 5, 5)), kw)


@VQ_TOKENIZERS.register(VisualTokenizer)
def fsq_base(**kw) -> VisualTokenizer:
    """Width 128, 3 stages (f = 8, as DALL-E's dVAE), 2 blocks per stage, FSQ (7, 5, 5, 5, 5) = 4375 codes."""
    return build(VisualTokenizer, dict(width=128, channel_mult=(1, 2, 4), blocks=2, levels=(7, 5, 5, 5, 5)), kw)


@VQ_TOKENIZERS.register(VisualTokenizer)
def lfq_tiny(**kw) -> VisualTokenizer:
    """Debug size: width 32, 3 stages (f = 8), LFQ with 1024 codes."""
    return build(VisualTokenizer, dict(width=32, channel_mult=(1, 2, 2), blocks=1, quantizer="lfq",
                                       codebook_size=1024), kw)


@VQ_TOKENIZERS.register(VisualTokenizer)
def lfq_base(**kw) -> VisualTokenizer:
    """Width 128, 3 stages (f = 8), 2 blocks per stage, LFQ with 8192 codes (DALL-E's vocabulary size)."""
    return build(VisualTokenizer, dict(width=128, channel_mult=(1, 2, 4), blocks=2, quantizer="lfq",
                                       codebook_size=8192), kw)
