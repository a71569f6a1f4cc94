"""vl: end-to-end video-language pretraining."""

__version__ = "0.1.0"
