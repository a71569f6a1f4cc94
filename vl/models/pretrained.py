"""Public checkpoints into ``vit_st``, read from local files only: timm ViTs and Hugging Face VideoMAE.

**timm** (``pretrained_format: timm``): a timm ``VisionTransformer`` state dict as timm saves it
(``model.safetensors``, ``pytorch_model.bin``/``.pth``, a hub snapshot folder holding one of them, or a
training checkpoint wrapping it under ``state_dict``/``model``), inflated to video:

- the 2D patch kernel (D, C, p, p) is copied into every frame of the (D, C, t, p, p) tubelet kernel and
  divided by t, so a tubelet of t identical frames embeds exactly as the image does. Averaging rather than
  centre-frame initialisation keeps every frame of a tubelet in the embedding from the first step (a
  centre-frame kernel ignores the other t - 1 frames until they learn weights of their own, and an even
  tubelet has no centre);
- timm's ``cls_token`` plus its position becomes ``vit_st``'s CLS token, repeated per frame
  (``class_token: true``); the patch positions become the space table, resampled with timm's own
  ``resample_abs_pos_embed`` when the grid differs (another ``img_size`` or ``patch_size``); the time
  table starts at zero;
- blocks keep timm's names (``vit_st``'s blocks are timm ``Block`` s); ``divided``'s time attention and
  its norm start as copies of the block's space attention and ``norm1`` and its output projection
  ``temporal_fc`` at zero, so it adds nothing at step 0 (TimeSformer's initialisation, applied to every
  block): the model computes the image model on every frame. ``none`` does so by construction; ``joint``
  and ``rolling`` do on a clip of identical frames (attention over T identical copies of each key
  averages exactly as over one; rolling swaps a token for an identical one);
- the classifier head (``head.*``, ``fc_norm.*``, ``attn_pool.*``) is dropped: an encoder returns tokens.
  A timm file does not store the number of heads: ``num_heads`` must be the ViT's (12 for ViT-B/16).

**VideoMAE** (``pretrained_format: videomae``): a ``save_pretrained`` folder (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``) of ``VideoMAEModel``, ``VideoMAEForPreTraining`` or
``VideoMAEForVideoClassification`` (decoder and classifier dropped), into ``vit_st`` ``joint``. Query, key
and value become timm's fused ``qkv`` with a zero key bias (VideoMAE has none: a key bias shifts every
score of a query by the same amount, which softmax ignores), taken from either layout of the query and
value biases (``q_bias``/``v_bias`` in the released files, ``query.bias``/``value.bias`` from
transformers 5). Its fixed position table is ``pos_table: flat_sincos``; ``use_mean_pooling: true``
(no final LayerNorm in ``last_hidden_state``) is ``final_norm: false``; its ``layer_norm_eps`` is
``norm_eps``; config.json is checked against these options too.

Every loader is strict: what does not fit (missing, unexpected and mis-shaped keys, and the options that
differ from the checkpoint's, with the value to set) is named in one ``ValueError``; a file that is not a
checkpoint, or a checkpoint of another family, fails with a one-line error. Nothing downloads: a hub id
is used only from the local Hugging Face cache, otherwise the error says how to fetch the file once and
pass its path.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from .hub import PretrainedNotFoundError

if TYPE_CHECKING:
    from .vit_st import VideoViT

PretrainedFormat = Literal["timm", "videomae"]
FORMATS: tuple[str, ...] = ("timm", "videomae")
TIMM_HEAD = ("head.", "fc_norm.", "attn_pool.")  # a timm classifier's pooling and head: not forward_features
VIDEOMAE_DROPPED = ("decoder.", "encoder_to_decoder.", "mask_token", "position_embeddings", "classifier.",
                    "fc_norm.")  # the pretraining decoder and the classifier head
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a hub snapshot / save_pretrained holds


@dataclass
class Converted:
    """A checkpoint turned into ``vit_st`` names: ``state`` holds the tensors (loaded ones and those the loader
    initialised), ``loaded`` the names that carry a checkpoint tensor, ``source`` the checkpoint key each
    came from, ``unexpected`` checkpoint keys with no place, ``options`` the options that differ
    (``"depth: 12"`` = set depth to 12)."""

    state: dict[str, Tensor] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    source: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    original: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def take(self, name: str, tensor: Tensor, src: str, original: Tensor | None = None) -> None:
        """``name`` holds ``tensor``, made from checkpoint key ``src`` (whose tensor was ``original``)."""
        self.state[name], self.source[name] = tensor, src
        self.original[name] = tuple((tensor if original is None else original).shape)
        self.loaded.add(name)


# -- entry point ----------------------------------------------------------------------------------------
def load_vit_st_weights(model: VideoViT, pretrained: str | os.PathLike, fmt: str) -> set[str]:
    """Load a local checkpoint of format ``fmt`` into ``model`` strictly; returns the loaded parameter names."""
    converted = convert_checkpoint(model, pretrained, fmt)
    model.load_state_dict(converted.state, strict=True)
    return converted.loaded & {n for n, _ in model.named_parameters()}


def convert_checkpoint(model: VideoViT, pretrained: str | os.PathLike, fmt: str) -> Converted:
    """Read and convert a checkpoint for ``model``, raising one ``ValueError`` naming whatever does not fit
    (the model is not touched: this also checks a base-size model built on the meta device)."""
    if fmt not in FORMATS:
        raise ValueError(f"vit_st: pretrained_format must be one of {FORMATS}, got {fmt!r}")
    path = resolve_local(pretrained, fmt)
    if fmt == "timm":
        return convert_state(read_timm(path), model, fmt, what=f"timm ViT checkpoint {str(path)!r}")
    config, state = read_videomae(path)
    return convert_state(state, model, fmt, config, what=f"VideoMAE checkpoint {str(path)!r}")


def convert_state(state: dict[str, Tensor], model: VideoViT, fmt: str, config: dict[str, Any] | None = None,
                  what: str = "checkpoint") -> Converted:
    """A state dict of format ``fmt`` (with its config.json for VideoMAE) -> the full ``vit_st`` state,
    new parameters initialised; one ``ValueError`` naming what does not fit."""
    converted = convert_timm(state, model) if fmt == "timm" else convert_videomae(state, config or {}, model)
    init_new_parameters(converted, model)
    check_fits(converted, model, what)
    return converted


# -- finding and reading files --------------------------------------------------------------------------
def resolve_local(pretrained: str | os.PathLike, fmt: str) -> Path:
    """A local path, or a hub id already in the local Hugging Face cache; otherwise a
    ``PretrainedNotFoundError`` saying how to download it once and pass the path."""
    name = str(pretrained)
    path = Path(name).expanduser()
    if path.exists():
        return path
    repo = name if "/" in name or fmt == "videomae" else f"timm/{name}"
    cached = _from_hf_cache(repo, WEIGHT_FILES[0] if fmt == "timm" else "config.json")
    if cached is not None:
        return cached if fmt == "timm" else cached.parent
    folder = f"weights/{repo.split('/')[-1]}"
    fetch = (f"`hf download {repo} model.safetensors --local-dir {folder}` and set pretrained: "
             f"{folder}/model.safetensors" if fmt == "timm" else
             f"`hf download {repo} --local-dir {folder}` and set pretrained: {folder} (pretrained_format: videomae)")
    raise PretrainedNotFoundError(
        f"vit_st: pretrained {name!r} is not a local file or folder, and vl never downloads weights. On a "
        f"machine with network run {fetch}."
    )


def _from_hf_cache(repo: str, filename: str) -> Path | None:
    """The cached path of ``filename`` in hub repo ``repo``, looked up without network (None if absent)."""
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, filename)
    except (ImportError, ValueError):  # no hub library, or not a valid repo id
        return None
    return Path(hit) if isinstance(hit, str) else None


def read_state(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors or torch file (told apart by content, not by name), unwrapped from a training
    checkpoint's ``state_dict``/``model`` entry and DDP's ``module.`` prefix; a one-line ``ValueError``
    when the file is neither."""
    with open(path, "rb") as f:
        head = f.read(9)
    try:
        if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the readers raise, the file is not a checkpoint they can read
        reason = " ".join(str(e).split())[:160]
        raise ValueError(f"vit_st: {str(path)!r} is not a checkpoint file (safetensors or torch): {reason}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"vit_st: {str(path)!r} holds no state dict of tensors (found {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def family(keys: list[str]) -> str:
    """What a checkpoint looks like, from its key names, for error messages."""
    if any(k.startswith("visual.") for k in keys):
        return "an open_clip CLIP checkpoint: load it with clip_st (its `pretrained` option)"
    if any("video_encoder." in k for k in keys):
        return "a vl model checkpoint: start from it with init_from, or resume with ckpt_path"
    if any(k.startswith("backbone.") or "relative_position_bias_table" in k for k in keys):
        return "a Video Swin checkpoint: load it with swin3d"
    if any("patch_embeddings" in k or ".layer." in k for k in keys):
        return ("a Hugging Face transformers checkpoint: for VideoMAE pass its save_pretrained folder with "
                "pretrained_format: videomae")
    if "patch_embed.proj.weight" in keys:
        return "a timm ViT checkpoint: set pretrained_format: timm"
    if any(k.startswith("blocks.") for k in keys):
        return "a ViT without timm's patch_embed.proj (not a timm VisionTransformer)"
    return f"no known model (first keys: {', '.join(sorted(keys)[:4])})"


def read_timm(path: Path) -> dict[str, Tensor]:
    """A timm ViT state dict from a file or a hub snapshot folder; a one-line error for another family."""
    if path.is_dir():
        config = path / "config.json"
        if config.is_file() and _json(config).get("model_type") == "videomae":
            raise ValueError(f"vit_st: {str(path)!r} is a Hugging Face VideoMAE folder, not a timm ViT checkpoint: "
                             f"set pretrained_format: videomae")
        path = _weights_in(path, "a timm ViT checkpoint")
    state = read_state(path)
    if "patch_embed.proj.weight" not in state:
        raise ValueError(f"vit_st: {str(path)!r} is not a timm ViT checkpoint (no patch_embed.proj.weight); "
                         f"it looks like {family(list(state))}")
    return state


def read_videomae(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of a VideoMAE ``save_pretrained`` folder; one-line errors otherwise."""
    if not path.is_dir():
        kind = family(list(read_state(path)))
        raise ValueError(f"vit_st: pretrained_format videomae expects a save_pretrained folder (config.json + "
                         f"model.safetensors), got the file {str(path)!r}, which looks like {kind}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"vit_st: {str(path)!r} has no config.json, so it is not a Hugging Face "
                         f"save_pretrained folder (pretrained_format: videomae)")
    config = _json(config_file)
    if config.get("model_type") != "videomae":
        raise ValueError(f"vit_st: {str(path)!r} holds a Hugging Face {config.get('model_type')!r} model, not "
                         f"VideoMAE (pretrained_format: videomae)")
    state = read_state(_weights_in(path, "a VideoMAE save_pretrained folder"))
    return config, state


def _weights_in(folder: Path, what: str) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"vit_st: the folder {str(folder)!r} holds none of {', '.join(WEIGHT_FILES)}, so it is not "
                     f"{what}; pass the weights file itself")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"vit_st: cannot read {str(path)!r} as JSON: {e}") from e
    return data if isinstance(data, dict) else {}


# -- timm -----------------------------------------------------------------------------------------------
def inflate_patch_kernel(weight: Tensor, tubelet: int) -> Tensor:
    """(D, C, p, p) image kernel -> (D, C, t, p, p): the same kernel in every frame, divided by t."""
    if weight.dim() != 4:
        return weight  # left as it is: the shape check names it
    return weight[:, :, None].expand(-1, -1, tubelet, -1, -1) / tubelet


def convert_timm(state: dict[str, Tensor], model: VideoViT) -> Converted:
    """A timm ViT state dict -> ``vit_st`` names, with the options it needs (see the module docstring)."""
    c = Converted()
    s = {k: v for k, v in state.items() if not k.startswith(TIMM_HEAD)}
    weight = s.pop("patch_embed.proj.weight")
    c.take("patch_embed.proj.weight", inflate_patch_kernel(weight, model.tubelet_size), "patch_embed.proj.weight",
           weight)
    cls, pos = s.pop("cls_token", None), s.pop("pos_embed", None)
    prefix = 1 if cls is not None and pos is not None and _is_square(pos.shape[1] - 1) else 0
    if cls is not None:  # the class position (absent in timm's no_embed_class ViTs) folded into the token
        c.take("cls_token", cls + pos[:, :1] if prefix else cls, "cls_token")
    if pos is not None:
        grid = pos[:, prefix:]  # (1, h*w, D)
        if _is_square(grid.shape[1]):
            grid = resample_abs_pos_embed(grid, new_size=list(model.grid[1:]), num_prefix_tokens=0)
        c.take("pos_embed_space", grid, "pos_embed", pos)
    for key, value in s.items():  # blocks.* and norm.* keep their names; anything else is unexpected
        c.take(key, value, key)
    c.options = _options_diff(model, _timm_options(weight, cls, state))
    return c


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _timm_options(patch: Tensor, cls: Tensor | None, state: dict[str, Tensor]) -> dict[str, Any]:
    """The ``vit_st`` options a timm state dict implies (those its shapes and keys reveal)."""
    depth = 1 + max((int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    want: dict[str, Any] = dict(embed_dim=patch.shape[0], depth=depth, class_token=cls is not None,
                                final_norm="norm.weight" in state, pos_table="space_time",
                                norm_eps=1e-6)  # every timm VisionTransformer's LayerNorm epsilon
    if patch.dim() == 4:
        want.update(patch_size=patch.shape[-1], in_chans=patch.shape[1])
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        want["mlp_ratio"] = fc1.shape[0] / patch.shape[0]
    if "blocks.0.ls1.gamma" not in state:
        want["init_values"] = None
    return want


# -- VideoMAE -------------------------------------------------------------------------------------------
VIDEOMAE_RENAMES = (  # (pattern, vit_st name) over the encoder's keys, after the `videomae.` prefix
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)


def convert_videomae(state: dict[str, Tensor], config: dict[str, Any], model: VideoViT) -> Converted:
    """A VideoMAE state dict (any of its heads) -> ``vit_st`` names; config.json gives the other options."""
    c = Converted()
    if any(k.startswith("videomae.") for k in state):
        state = {k.removeprefix("videomae."): v for k, v in state.items() if k.startswith("videomae.")}
    s = {k: v for k, v in state.items() if not k.startswith(VIDEOMAE_DROPPED)}
    layers = sorted({int(m[1]) for k in s if (m := re.match(r"encoder\.layer\.(\d+)\.attention\.attention\.", k))})
    for i in layers:
        _fuse_qkv(c, s, i)
    for key, value in s.items():
        for pattern, target in VIDEOMAE_RENAMES:
            if re.fullmatch(pattern, key):
                c.take(re.sub(pattern, target, key), value, key)
                break
        else:
            c.unexpected.append(key)
    c.options = _options_diff(model, _videomae_options(config))
    if config.get("hidden_act", "gelu") != "gelu":
        c.options.append(f"(none: vit_st's MLP is GELU, the checkpoint's is {config['hidden_act']!r})")
    return c


def _fuse_qkv(c: Converted, s: dict[str, Tensor], i: int) -> None:
    """Pop layer ``i``'s query/key/value into timm's fused ``qkv`` (biases: q and v from either layout, k zero)."""
    pre = f"encoder.layer.{i}.attention.attention."
    parts = [s.get(f"{pre}{n}.weight") for n in ("query", "key", "value")]
    if any(p is None for p in parts):
        return  # left in place: reported as unexpected, and qkv as missing
    q, k, v = (s.pop(f"{pre}{n}.weight") for n in ("query", "key", "value"))
    zeros = q.new_zeros(q.shape[0])
    q_bias = s.pop(f"{pre}query.bias", s.pop(f"{pre}q_bias", zeros))
    k_bias = s.pop(f"{pre}key.bias", zeros)
    v_bias = s.pop(f"{pre}value.bias", s.pop(f"{pre}v_bias", zeros))
    c.take(f"blocks.{i}.attn.qkv.weight", torch.cat([q, k, v]), f"{pre}query/key/value.weight")
    c.take(f"blocks.{i}.attn.qkv.bias", torch.cat([q_bias, k_bias, v_bias]), f"{pre}q_bias/v_bias")


def _videomae_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``vit_st`` options a VideoMAE config.json implies (VideoMAEConfig's defaults where a key is absent)."""
    hidden = cfg.get("hidden_size", 768)
    image = cfg.get("image_size", 224)
    return dict(
        embed_dim=hidden, depth=cfg.get("num_hidden_layers", 12), num_heads=cfg.get("num_attention_heads", 12),
        mlp_ratio=cfg.get("intermediate_size", 3072) / hidden, patch_size=cfg.get("patch_size", 16),
        tubelet_size=cfg.get("tubelet_size", 2), num_frames=cfg.get("num_frames", 16),
        img_size=image[0] if isinstance(image, (list, tuple)) else image, in_chans=cfg.get("num_channels", 3),
        norm_eps=cfg.get("layer_norm_eps", 1e-12), final_norm=not cfg.get("use_mean_pooling", True),
        temporal="joint", class_token=False, pos_table="flat_sincos", init_values=None,
    )


# -- shared: new parameters, options, the one error -----------------------------------------------------
def init_new_parameters(c: Converted, model: VideoViT) -> None:
    """What the checkpoint has no tensor for starts so that step 0 computes the checkpoint's model: time
    positions at zero; ``divided``'s time attention as a copy of the space attention with a zero output
    projection; the mask token as initialised."""
    own = model.state_dict()
    if model.pos_embed_time is not None:
        c.state["pos_embed_time"] = torch.zeros_like(own["pos_embed_time"])
    if model.mask_token is not None:
        c.state["mask_token"] = own["mask_token"]
    if model.temporal != "divided":
        return
    for i in range(model.depth):
        b = f"blocks.{i}."
        for new, old in (("norm_t", "norm1"), ("attn_t.qkv", "attn.qkv"), ("attn_t.proj", "attn.proj")):
            for p in ("weight", "bias"):
                if b + f"{old}.{p}" in c.state and b + f"{new}.{p}" in own:
                    c.state[b + f"{new}.{p}"] = c.state[b + f"{old}.{p}"].clone()
        for p in ("weight", "bias"):
            c.state[b + f"temporal_fc.{p}"] = torch.zeros_like(own[b + f"temporal_fc.{p}"])


def _options_diff(model: VideoViT, want: dict[str, Any]) -> list[str]:
    """``"option: value"`` for each option of ``model`` that differs from the checkpoint's ``want``."""
    have = dict(embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                patch_size=model.patch_size, tubelet_size=model.tubelet_size, num_frames=model.num_frames,
                img_size=model.img_size, in_chans=model.patch_embed.proj.in_channels, norm_eps=model.norm_eps,
                final_norm=model.final_norm, temporal=model.temporal, class_token=model.cls_token is not None,
                pos_table=model.pos_table, init_values=model.init_values)
    out = []
    for key, value in want.items():
        current = have[key]
        if key == "init_values" and value is None:
            same = current is None
        elif isinstance(value, float) and current is not None and not isinstance(current, (bool, str)):
            same = math.isclose(value, current, rel_tol=1e-6)
        else:
            same = value == current
        if not same:
            out.append(f"{key}: {value}")
    if "init_values" not in want and model.init_values is None:
        out.append("init_values: a float (the checkpoint has LayerScale; its values are loaded)")
    return out


def check_fits(c: Converted, model: VideoViT, what: str) -> None:
    """Raise one ``ValueError`` naming the options to set and the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    unexpected = c.unexpected + [c.source.get(k, k) for k in c.state if k not in own]
    for k in [k for k in c.state if k not in own]:
        del c.state[k]
        c.loaded.discard(k)
    missing = [k for k in own if k not in c.state]
    shapes = [_shape_line(c, k, tuple(own[k].shape)) for k, v in c.state.items() if v.shape != own[k].shape]
    if not (c.options or missing or unexpected or shapes):
        return
    parts = [f"vit_st: the {what} does not fit this encoder"]
    if c.options:
        parts.append(f"set {', '.join(c.options)} (the checkpoint's)")
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            parts.append(f"{label}: {summarise(keys)}")
    raise ValueError("; ".join(parts))


def _shape_line(c: Converted, name: str, model_shape: tuple[int, ...]) -> str:
    """``"src (checkpoint shape) -> name (model shape)"``; one name when the checkpoint's is the same."""
    src, ckpt = c.source.get(name, name), c.original.get(name, tuple(c.state[name].shape))
    if src == name:
        return f"{name}: checkpoint {ckpt} vs model {model_shape}"
    return f"{src} {ckpt} -> {name} {model_shape}"


def summarise(keys: list[str], limit: int = 10) -> str:
    """Key names with per-block repeats folded: ``blocks.2-11.* (120 keys)``, ``blocks.{0,1}.ls1.gamma``."""
    groups: dict[tuple[str, str], list[int]] = {}
    items: list[str] = []
    for key in keys:
        m = re.match(r"(.*?(?:blocks|layer)\.)(\d+)\.(.*)", key)
        if m:
            groups.setdefault((m[1], m[3]), []).append(int(m[2]))
        else:
            items.append(key)
    by_blocks: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for (pre, rest), idx in groups.items():
        by_blocks.setdefault((pre, tuple(sorted(set(idx)))), []).append(rest)
    for (pre, idx), rests in by_blocks.items():
        span = (f"{idx[0]}-{idx[-1]}" if len(idx) > 1 and idx == tuple(range(idx[0], idx[-1] + 1))
                else str(idx[0]) if len(idx) == 1 else "{" + ",".join(map(str, idx)) + "}")
        if len(rests) > 3:
            items.append(f"{pre}{span}.* ({len(rests) * len(idx)} keys)")
        else:
            items.extend(f"{pre}{span}.{r}" for r in rests)
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
