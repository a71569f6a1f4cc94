"""Objectives: standalone modules that turn model outputs into ``{"<name>_loss": ..., metrics}``."""

from .mlm import IGNORE_INDEX, MLMLoss, mask_tokens, word_starts
from .vtc import VTCLoss, caption_keys
from .vtm import VTMLoss, sample_negatives, vtm_positives

__all__ = ["IGNORE_INDEX", "MLMLoss", "VTCLoss", "caption_keys", "VTMLoss", "mask_tokens", "sample_negatives", "vtm_positives", "word_starts"]
