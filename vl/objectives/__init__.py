"""Objectives: standalone modules that turn model outputs into ``{"<name>_loss": ..., metrics}``."""

from .mlm import IGNORE_INDEX, MLMLoss, mask_tokens, word_starts
from .vtc import VTCLoss, caption_keys, time_reversal_loss
from .vtm import MATCH_SCORES, VTMLoss, match_score, sample_negatives, vtm_positives

__all__ = ["IGNORE_INDEX", "MATCH_SCORES", "MLMLoss", "VTCLoss", "caption_keys", "VTMLoss", "mask_tokens", "match_score",
           "sample_negatives", "time_reversal_loss", "vtm_positives", "word_starts"]
