"""Text-to-video search: ``vl index`` builds a FAISS index of a checkpoint's video embeddings, ``Searcher``
queries it, ``vl demo`` serves it in a Gradio app.

    from vl.search import Searcher
    hits = Searcher("runs/demo/index").query("a red square moves from left to right", k=5)
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildOptions", "CaptionHit", "Hit", "Searcher", "VideoMatches", "build_index"]


def __getattr__(name: str) -> Any:
    """The names of ``vl.search.index``, imported on first use: ``vl index --help`` and ``vl demo --help``
    answer without loading torch and the models."""
    if name in __all__:
        from vl.search import index

        return getattr(index, name)
    raise AttributeError(f"module 'vl.search' has no attribute {name!r}")
