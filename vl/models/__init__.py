"""Video encoders, text encoders, fusion modules and the full ``VideoLanguageModel``, by registry name."""

from .registry import FUSIONS, MODELS, TEXT_ENCODERS, VIDEO_ENCODERS, Registry
from .vlm import (
    MLMHead,
    VideoLanguageModel,
    create_fusion,
    create_model,
    create_text_encoder,
    create_video_encoder,
    list_fusions,
    list_models,
    list_text_encoders,
    list_video_encoders,
    merge_spec,
)

__all__ = [
    "FUSIONS", "MODELS", "TEXT_ENCODERS", "VIDEO_ENCODERS", "Registry", "MLMHead", "VideoLanguageModel",
    "create_fusion", "create_model", "create_text_encoder", "create_video_encoder", "list_fusions",
    "list_models", "list_text_encoders", "list_video_encoders", "merge_spec",
]
