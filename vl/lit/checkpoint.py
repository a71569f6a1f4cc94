"""Rebuilding a trained model (and how its inputs were prepared) from a `vl fit` checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Data settings a model was trained with, recorded in checkpoints so that search and inference prepare
# new videos and queries the same way.
PREPROCESS_KEYS = ("num_frames", "frame_size", "norm", "tokenizer", "max_text_len", "val_sampling", "sample_fps")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the VideoLanguageModel saved by a vl LightningModule checkpoint.

    Raises FileNotFoundError for a missing file and ValueError for a checkpoint that vl did not write.
    """
    from vl.models import create_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    config = ckpt.get("vl_model_config")
    if config is None:
        raise ValueError(f"{path} has no `vl_model_config`: it was not written by a vl LightningModule")
    model = create_model(**config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its model config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return LoadedModel(model=model.eval(), preprocess=dict(ckpt.get("vl_preprocess", {})), path=path)
