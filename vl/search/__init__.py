"""Text-to-video search: ``vl index`` builds a FAISS index of a checkpoint's video embeddings, ``Searcher``
queries it, ``vl demo`` serves it in a Gradio app.

    from vl.search import Searcher
    hits = Searcher("runs/demo/index").query("a red square moves from left to right", k=5)
"""

from vl.search.index import BuildOptions, CaptionHit, Hit, Searcher, VideoMatches, build_index

__all__ = ["BuildOptions", "CaptionHit", "Hit", "Searcher", "VideoMatches", "build_index"]
