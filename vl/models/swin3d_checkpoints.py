"""Public Video Swin checkpoints into ``swin3d``: torchvision's weight files and the official release.

Two layouts are read, both from a local file (vl never downloads):

- **torchvision** (``torchvision.models.video.swin3d_t/s/b``; ``torch.save(model.state_dict())`` of a
  ``SwinTransformer3d``): ``patch_embed.*``, ``features.{k}.*`` (even ``k``: the blocks of stage ``k/2``,
  odd ``k``: the patch merging after it), ``norm.*`` and the classifier ``head.*`` (dropped).
- **official** (github.com/SwinTransformer/Video-Swin-Transformer, e.g.
  ``swin_base_patch244_window877_kinetics600_22k.pth``; an mmaction checkpoint ``{"meta", "state_dict"}``):
  ``backbone.patch_embed.*``, ``backbone.layers.{i}.blocks.{j}.*`` with the MLP as ``mlp.fc1``/``mlp.fc2``,
  ``backbone.layers.{i}.downsample.*``, ``backbone.norm.*`` and the classifier ``cls_head.*`` (dropped).
  The same keys without ``backbone.`` (a backbone saved alone, as VIOLET's code keeps it) read too.

Both become swin3d's names (``stages.{i}.blocks.{j}.*`` with torchvision's ``mlp.0``/``mlp.3``,
``stages.{i}.downsample.*``) and load strictly: every weight of the encoder but its ``mask_token`` must come
from the file with its shape, and nothing of the file may be left over. A mismatch raises one
``SwinCheckpointError`` naming the missing, unexpected and mis-shaped keys together with the sizes the
checkpoint was trained at (read from its shapes) and the swin3d options to set. ``relative_position_index``
buffers are a function of ``window_size`` alone: they are checked when present and kept from the model
when absent. Relative position bias tables are not resized: a table built for another window is an error
naming ``window_size``. A file that is no checkpoint, or one of another model family, fails in one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .hub import PretrainedNotFoundError

DROPPED_PREFIXES = ("head.", "cls_head.")  # classifiers of torchvision's model and of mmaction's recognizer
INDEX_SUFFIX = "attn.relative_position_index"
MLP_OFFICIAL_TO_TORCHVISION = {"fc1": "0", "fc2": "3"}  # official Mlp(fc1, act, fc2) vs torchvision MLP Sequential
OPTION_NAMES = ("width", "depths", "num_heads", "window_size", "patch_size", "tubelet_size", "in_chans", "mlp_ratio")


class SwinCheckpointError(ValueError):
    """A Video Swin checkpoint that cannot be read, or does not fit the encoder (the message says why)."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file, unwrapped from a training checkpoint's
    ``state_dict`` (mmaction, Lightning) or ``model`` entry and stripped of DDP's ``module.`` prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedNotFoundError(
            f"swin3d: pretrained weights file {str(path)!r} does not exist; set the encoder's `pretrained` "
            f"(video: {{pretrained: ...}}) to a local Video Swin checkpoint, downloaded once on a machine with "
            f"network (vl never downloads)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails on foreign bytes with any of a dozen types; all mean the same
        if "weights only load failed" in str(e).lower():  # a real checkpoint whose metadata holds other objects
            raise SwinCheckpointError(
                f"swin3d: {str(path)!r} holds Python objects besides tensors, which vl does not unpickle; if you "
                f"trust the file, re-save its weights once: torch.save(torch.load(path, weights_only=False)"
                f"['state_dict'], new_path)") from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SwinCheckpointError(f"swin3d: {str(path)!r} is not a PyTorch checkpoint ({reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SwinCheckpointError(f"swin3d: {str(path)!r} holds a {type(state).__name__} that is not a state dict "
                                  f"of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """``"torchvision"`` or ``"official"`` for a Video Swin state dict (``backbone.`` already stripped);
    ``SwinCheckpointError`` for anything else (another family, an image Swin, an empty file)."""
    embed = state.get("patch_embed.proj.weight")
    if embed is not None and embed.dim() == 4:
        raise SwinCheckpointError("swin3d: this is an image (2D) Swin checkpoint (a 2D patch embedding); swin3d "
                                  "loads Video Swin checkpoints (3D tubelet embedding)")
    has_stage = {p: any(k.startswith(p) for k in state) for p in ("features.", "layers.")}
    if embed is None or embed.dim() != 5 or has_stage["features."] == has_stage["layers."]:
        sample = sorted(state)[:4]
        raise SwinCheckpointError(
            f"swin3d: not a Video Swin checkpoint: expected torchvision's SwinTransformer3d keys "
            f"(patch_embed.proj.weight, features.*) or the official release's (backbone.patch_embed.proj.weight, "
            f"backbone.layers.*); found {len(state)} keys such as {sample}")
    return "torchvision" if has_stage["features."] else "official"


def _rename_torchvision(key: str) -> str:
    """``features.{2i}.{j}.*`` -> ``stages.{i}.blocks.{j}.*``; ``features.{2i+1}.*`` -> ``stages.{i}.downsample.*``."""
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if m is None:
        return key
    k, rest = int(m.group(1)), m.group(2)
    return f"stages.{k // 2}.blocks.{rest}" if k % 2 == 0 else f"stages.{k // 2}.downsample.{rest}"


def _rename_official(key: str) -> str:
    """``layers.{i}.*`` -> ``stages.{i}.*``, the MLP's ``fc1``/``fc2`` -> torchvision's ``0``/``3``."""
    m = re.match(r"layers\.(\d+)\.(.*)", key)
    if m is None:
        return key
    rest = re.sub(r"\.mlp\.(fc[12])\.", lambda f: f".mlp.{MLP_OFFICIAL_TO_TORCHVISION[f.group(1)]}.", f".{m.group(2)}")
    return f"stages.{m.group(1)}{rest}"


def to_swin3d_names(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """A torchvision or official Video Swin state dict -> (the same tensors under swin3d's names, its layout).
    Classifier heads are dropped; the official ``backbone.`` prefix is stripped."""
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("cls_head.")}
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    layout = detect_layout(state)
    rename = _rename_torchvision if layout == "torchvision" else _rename_official
    return {rename(k): v for k, v in state.items()}, layout


def infer_window(table_rows: int, window_volume: int) -> tuple[int, int, int] | None:
    """The (t, h, w) window, h = w, whose bias table has ``table_rows`` rows and that holds ``window_volume``
    tokens (the side of a ``relative_position_index``), or None when no such window exists."""
    for t in range(1, 65):
        for s in range(1, 65):
            if (2 * t - 1) * (2 * s - 1) ** 2 == table_rows and t * s * s == window_volume:
                return (t, s, s)
    return None


def checkpoint_sizes(state: Mapping[str, Tensor]) -> dict[str, object]:
    """The swin3d options a checkpoint (swin3d names) was trained with, read from its tensor shapes; options
    that cannot be read are left out."""
    sizes: dict[str, object] = {}
    embed = state.get("patch_embed.proj.weight")  # (width, in_chans, tubelet, patch, patch)
    if embed is not None and embed.dim() == 5:
        sizes.update(width=embed.shape[0], in_chans=embed.shape[1], tubelet_size=embed.shape[2],
                     patch_size=embed.shape[3])
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"stages\.(\d+)\.blocks\.", k))})
    depths = [len({m.group(1) for k in state if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))}) for i in stages]
    tables = [state.get(f"stages.{i}.blocks.0.attn.relative_position_bias_table") for i in stages]
    if stages and all(t is not None for t in tables):
        sizes.update(depths=tuple(depths), num_heads=tuple(int(t.shape[1]) for t in tables))
        index = state.get(f"stages.0.blocks.0.{INDEX_SUFFIX}")
        if index is not None:
            rows = tables[0].shape[0]
            sizes["window_size"] = infer_window(rows, index.shape[0]) or f"a {rows}-row table"
    fc1 = state.get("stages.0.blocks.0.mlp.0.weight")
    if fc1 is not None and "width" in sizes:
        sizes["mlp_ratio"] = fc1.shape[0] / sizes["width"]
    return sizes


def fit_report(encoder: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise one ``SwinCheckpointError`` naming every missing, unexpected and mis-shaped key of ``state``
    (swin3d names) against ``encoder``, with the checkpoint's sizes and the options to set; else return."""
    own = {k: v for k, v in encoder.state_dict().items() if k != "mask_token"}
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(INDEX_SUFFIX))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    theirs, ours = checkpoint_sizes(state), encoder.size_options()
    differ = {k: theirs[k] for k in OPTION_NAMES if k in theirs and theirs[k] != ours.get(k)}
    advice = (f"set {', '.join(f'{k}={v}' for k, v in differ.items())} on the video encoder" if differ else
              "set the encoder's width, depths, num_heads, window_size, patch_size and tubelet_size to the "
              "checkpoint's")

    def few(items: list[str]) -> str:
        return f"{items[:8]}{f' (+{len(items) - 8} more)' if len(items) > 8 else ''}"

    raise SwinCheckpointError(
        f"swin3d: {source} does not fit this encoder: missing keys {few(missing)}; unexpected keys "
        f"{few(unexpected)}; shape mismatches {few(shapes)}. The checkpoint is "
        f"{', '.join(f'{k}={v}' for k, v in theirs.items())}; the encoder is "
        f"{', '.join(f'{k}={ours[k]}' for k in theirs if k in ours)}: {advice}.")


def load_swin3d_weights(encoder: nn.Module, path: str | os.PathLike) -> set[str]:
    """Load a torchvision or official Video Swin checkpoint file into a ``swin3d`` encoder, strictly (see the
    module docstring); return the names of the parameters it set (every parameter but ``mask_token``)."""
    state, layout = to_swin3d_names(read_checkpoint(path))
    fit_report(encoder, state, f"{layout} checkpoint {str(path)!r}")
    own = encoder.state_dict()
    full = {k: state.get(k, own[k]) for k in own if k != "mask_token"}  # absent index buffers: the model's
    encoder.load_state_dict(full, strict=False)  # strict by fit_report; only mask_token is left as it was
    return {n for n, _ in encoder.named_parameters() if n in state}
