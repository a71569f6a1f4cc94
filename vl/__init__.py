"""vl: end-to-end video-language pretraining."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "__version__"]


def create_model(name: str, **overrides: Any):
    """``vl.models.create_model``: a registered preset with per-part overrides (imported on first use)."""
    from .models import create_model as _create

    return _create(name, **overrides)


def list_models(pattern: str = "*") -> list[str]:
    """``vl.models.list_models``: registered full-model presets."""
    from .models import list_models as _list

    return _list(pattern)
