"""Rebuilding a trained model (and how its inputs were prepared) from a `vl fit` checkpoint, and the
global random state that rides in every checkpoint so that a resumed run draws what it would have."""

from __future__ import annotations

import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

# Data settings a model was trained with, recorded in checkpoints so that search and inference prepare
# new videos and queries the same way.
PREPROCESS_KEYS = ("num_frames", "frame_size", "norm", "tokenizer", "max_text_len", "val_sampling", "sample_fps",
                   "decode_short_side", "backend", "allow_images")  # search decodes as the model was trained


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with the data settings it was trained with."""

    model: torch.nn.Module  # vl.models.VideoLanguageModel, in eval mode
    preprocess: dict[str, Any]  # PREPROCESS_KEYS -> value (missing keys absent)
    path: Path


def preprocess_from_datamodule(datamodule: Any) -> dict[str, Any]:
    """The PREPROCESS_KEYS of a DataModule's hyper-parameters ({} when it has none)."""
    hparams = getattr(datamodule, "hparams", None) or {}
    return {k: hparams[k] for k in PREPROCESS_KEYS if k in hparams}


# Model options that checkpoints may record under another name: part -> {recorded name: name today}. A
# checkpoint's config is read through ``recorded_model_config``, so such checkpoints keep loading; configs and
# command lines take only today's names.
RECORDED_OPTION_NAMES = {"text": {"pool_type": "pooling"}, "fusion": {"pool": "pooling"}}


def recorded_model_config(ckpt: dict) -> dict[str, Any] | None:
    """The model config a checkpoint records (``vl_model_config``, None when absent), with every option under
    the name ``vl.create_model`` takes (``RECORDED_OPTION_NAMES``)."""
    config = ckpt.get("vl_model_config")
    return None if config is None else _with_current_part_names(config)


def _with_current_part_names(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose backbone parts (``text``, ``fusion``) name their options as today
    (``RECORDED_OPTION_NAMES``)."""
    config = dict(config)
    for part, names in RECORDED_OPTION_NAMES.items():
        if isinstance(config.get(part), dict):
            config[part] = {names.get(k, k): v for k, v in config[part].items()}
    return config


# A task's hyper-parameters that checkpoints may record at the top level: name -> (mapping, key) where the
# module takes it today (a retrieval checkpoint's loss weights, under ``objectives`` as in pretraining).
RECORDED_HPARAM_PLACES = {"vtc_weight": ("objectives", "vtc"), "vtm_weight": ("objectives", "vtm"),
                          "vtm_hard_fraction": ("objectives", "vtm_hard_fraction")}


def recorded_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters (the module's keyword arguments, as `vl test --ckpt_path` restores
    them) under today's names: ``RECORDED_OPTION_NAMES`` inside the backbone parts, ``RECORDED_HPARAM_PLACES``
    at the top. ``hparams`` is not modified."""
    out = _with_current_part_names(hparams)
    for name, (mapping, key) in RECORDED_HPARAM_PLACES.items():
        if name in out:
            value = out.pop(name)
            out[mapping] = {**(out.get(mapping) or {}), key: value}
    return out


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and says why."""


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is a whole PyTorch checkpoint file; else CheckpointError (FileNotFoundError when
    missing), one line naming the file, so that torch's unpickling advice never stands in for "wrong file".

    A checkpoint is a zip archive (torch.save) or, from old torch versions, a pickle. A zip cut short has
    lost its central directory, which sits at the end of the file; opening the archive finds that.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint: give the .ckpt file inside it")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path} is a truncated or damaged checkpoint ({e}); use another checkpoint, "
                                  "e.g. the best-*.ckpt beside it") from e
    elif not head.startswith(b"\x80"):
        kind = "an empty file" if not head else f"a file starting with {head!r}"
        raise CheckpointError(f"{path} is not a checkpoint (it is {kind}); give a .ckpt file written by `vl fit`")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the VideoLanguageModel saved by a vl LightningModule checkpoint.

    Raises FileNotFoundError for a missing file, CheckpointError for a file that is no (whole) checkpoint
    and ValueError for a checkpoint that vl did not write.
    """
    from vl.models import create_model

    path = check_checkpoint_file(path)
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    config = recorded_model_config(ckpt)
    if config is None:
        raise ValueError(f"{path} has no `vl_model_config`: it was not written by a vl LightningModule")
    model = create_model(**config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its model config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return LoadedModel(model=model.eval(), preprocess=dict(ckpt.get("vl_preprocess", {})), path=path)


class RandomState(pl.Callback):
    """Saves the process's global random generators in each checkpoint and restores them on resume.

    Lightning restores weights, optimiser, schedule, loops and data position, but not the torch, CUDA,
    NumPy and Python generators that dropout and random masking draw from; without them a resumed run
    draws other dropout masks than the uninterrupted run from the first step on. Every rank restores
    the state rank 0 saved, as ``seed_everything`` gives every rank the same seed.
    """

    def state_dict(self) -> dict[str, Any]:
        """Tensors, lists and ints only, so that checkpoints still load with torch's ``weights_only``."""
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, key, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
