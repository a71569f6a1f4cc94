"""DALL-E's dVAE encoder as a visual tokenizer (VIOLET's MVM target), from a weights file the user supplies.

OpenAI distributes the encoder as ``encoder.pkl``: a whole pickled ``dall_e.encoder.Encoder``. Loading it
normally needs the ``dall_e`` package; here its three classes are mapped at unpickling time to the
equivalent modules below (same attribute names, same forward), so the file loads without that package.
A plain state dict of the same encoder (``blocks.input.w``, ``blocks.group_1.block_1.res_path.conv_1.w``,
...) loads too; the sizes are read from its shapes.

The encoder: a 7x7 input conv, four groups of residual blocks (widths 1, 2, 4, 8 x ``n_hid``) with 2x2
max-pooling after the first three (so codes are 8x coarser than pixels), then ReLU + 1x1 conv to
``vocab_size`` logits. Inputs are pixels in [0, 1] squeezed to [0.1, 0.9] (the dVAE's logit-Laplace
range); the code of a position is the argmax of its logits.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch import Tensor, nn

LOGIT_LAPLACE_EPS = 0.1
NORM_STATS = {  # (mean, std) of the data normalisations datapipes uses (datapipes.augment.norm_stats: timm's)
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}


def unnormalize(images: Tensor, norm: str) -> Tensor:
    """images (M, 3, H, W) normalised with ``norm`` -> pixels in [0, 1]."""
    if norm not in NORM_STATS:
        raise ValueError(f"unknown normalisation {norm!r}; valid: {', '.join(NORM_STATS)}")
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) for v in NORM_STATS[norm])
    return (images * std + mean).clamp(0.0, 1.0)


class DalleConv2d(nn.Module):
    """``dall_e.utils.Conv2d``: weights ``w`` (out, in, k, k) and ``b``, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int) -> None:
        super().__init__()
        self.n_in, self.n_out, self.kw, self.use_float16 = n_in, n_out, kw, False
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / (n_in * kw**2) ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x.to(self.w.dtype), self.w, self.b, padding=(self.kw - 1) // 2)


class DalleEncoderBlock(nn.Module):
    """``dall_e.encoder.EncoderBlock``: identity (or 1x1 conv) + post_gain * (4 ReLU-conv layers)."""

    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = DalleConv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", DalleConv2d(n_in, hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", DalleConv2d(hid, hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", DalleConv2d(hid, hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", DalleConv2d(hid, n_out, 1)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """``dall_e.encoder.Encoder``: pixels (M, 3, H, W) in [0.1, 0.9] -> logits (M, vocab_size, H/8, W/8)."""

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, input_channels: int = 3,
                 vocab_size: int = 8192) -> None:
        super().__init__()
        self.n_hid, self.n_blk_per_group = n_hid, n_blk_per_group
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = 4 * n_blk_per_group
        widths = [1 * n_hid, 1 * n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]  # input, then each group's width

        def group(i: int, pool: bool) -> nn.Sequential:
            blocks = [(f"block_{j + 1}", DalleEncoderBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1],
                                                           n_layers)) for j in range(n_blk_per_group)]
            return nn.Sequential(OrderedDict(blocks + ([("pool", nn.MaxPool2d(kernel_size=2))] if pool else [])))

        self.blocks = nn.Sequential(OrderedDict([
            ("input", DalleConv2d(input_channels, n_hid, 7)),
            *[(f"group_{i + 1}", group(i, pool=i < 3)) for i in range(4)],
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()), ("conv", DalleConv2d(8 * n_hid, vocab_size, 1))]))),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x.float())


# What ``encoder.pkl`` names -> the equivalent module here.
_DALLE_CLASSES = {
    ("dall_e.encoder", "Encoder"): DalleEncoder,
    ("dall_e.encoder", "EncoderBlock"): DalleEncoderBlock,
    ("dall_e.utils", "Conv2d"): DalleConv2d,
}


class _RemapUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _DALLE_CLASSES.get((module, name)) or super().find_class(module, name)


class _RemapPickle:
    """A ``pickle_module`` for ``torch.load`` that maps the ``dall_e`` classes to the ones above."""

    Unpickler = _RemapUnpickler
    load = staticmethod(lambda f, **kw: _RemapUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _RemapUnpickler(io.BytesIO(b), **kw).load())
    __name__ = "vl_dalle_pickle"


def _from_state_dict(state: dict[str, Tensor]) -> DalleEncoder:
    """A DalleEncoder sized from (and filled with) a state dict of DALL-E's encoder."""
    try:
        n_hid, in_ch = state["blocks.input.w"].shape[:2]
        vocab = state["blocks.output.conv.w"].shape[0]
    except KeyError as e:
        raise ValueError(f"not a DALL-E encoder state dict: no {e.args[0]!r}") from e
    blocks = len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")})
    encoder = DalleEncoder(int(n_hid), blocks, int(in_ch), int(vocab))
    encoder.load_state_dict(state, strict=True)
    return encoder


def load_dalle_encoder(path: str | os.PathLike) -> DalleEncoder:
    """DALL-E's encoder from ``encoder.pkl`` (a pickled module) or a state dict file, frozen, in eval mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DALL-E encoder weights {str(path)!r} do not exist; vl never downloads them: "
                                f"fetch encoder.pkl once (OpenAI's dall_e release) and pass its local path")
    # A whole pickled module: loaded with weights_only=False, as dall_e.load_model does, from a file the user named.
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RemapPickle)
    if isinstance(obj, dict):
        obj = _from_state_dict(obj.get("state_dict", obj))
    if not isinstance(obj, DalleEncoder):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not DALL-E's encoder")
    return obj.eval().requires_grad_(False)


class DalleTokenizer(nn.Module):
    """The visual-tokenizer interface over DALL-E's encoder: ``encode(images (M, 3, H, W) normalised with
    ``norm``) -> ids (M, H/8, W/8)``; ``codebook_size`` = 8192 for the released weights."""

    downsample = 8

    def __init__(self, path: str | os.PathLike | None = None, norm: str = "imagenet",
                 encoder: DalleEncoder | None = None) -> None:
        super().__init__()
        if (path is None) == (encoder is None):
            raise ValueError("DalleTokenizer: give either the weights path or an encoder")
        self.encoder = encoder if encoder is not None else load_dalle_encoder(path)
        self.encoder.eval().requires_grad_(False)
        self.norm = norm
        self.codebook_size = int(self.encoder.vocab_size)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (M, 3, H, W) -> code ids (M, H/8, W/8) long."""
        pixels = unnormalize(images.float(), self.norm)
        pixels = (1 - 2 * LOGIT_LAPLACE_EPS) * pixels + LOGIT_LAPLACE_EPS  # dall_e.utils.map_pixels
        return self.encoder(pixels).argmax(dim=1)
