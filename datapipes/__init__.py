"""Streaming video-text data from WebDataset shards (DESIGN §1-3).

Depends on torch, webdataset, decord/PyAV and a tokenizer; never on ``vl``. Start with
``build_train_loader`` / ``build_eval_loader`` (``datapipes.pipeline``), which yield ``Batch``es.
"""

from datapipes.batch import Batch
from datapipes.decode import SkipSample, decode_clip
from datapipes.pipeline import (
    SKIP_REASONS,
    ClipConfig,
    build_eval_dataset,
    build_eval_loader,
    build_train_dataset,
    build_train_loader,
)
from datapipes.shards import expand_shards

__all__ = [
    "Batch",
    "ClipConfig",
    "SKIP_REASONS",
    "SkipSample",
    "build_eval_dataset",
    "build_eval_loader",
    "build_train_dataset",
    "build_train_loader",
    "decode_clip",
    "expand_shards",
]
