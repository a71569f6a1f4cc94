"""Streaming video-text data from WebDataset shards (DESIGN §1-3).

Depends on torch, webdataset, decord/PyAV and a tokenizer; never on ``vl``. Start with
``build_train_loader`` / ``build_eval_loader`` (``datapipes.pipeline``), which yield ``Batch``es.
"""

import importlib
from typing import Any

# Public names and the module of each, imported on first use: `vl data --help` and the shard tools need
# no torch until they touch a Batch or a loader.
_EXPORTS = {
    "Batch": "datapipes.batch",
    "SkipSample": "datapipes.decode",
    "decode_clip": "datapipes.decode",
    "SKIP_REASONS": "datapipes.pipeline",
    "ClipConfig": "datapipes.pipeline",
    "build_eval_dataset": "datapipes.pipeline",
    "build_eval_loader": "datapipes.pipeline",
    "build_train_dataset": "datapipes.pipeline",
    "build_train_loader": "datapipes.pipeline",
    "expand_shards": "datapipes.shards",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datapipes' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
