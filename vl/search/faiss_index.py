"""FAISS indexes over L2-normalised embeddings, searched by inner product (cosine similarity).

``flat`` (IndexFlatIP) is exact. ``ivf`` (IndexIVFFlat) clusters the rows into ``nlist`` cells and
searches the ``nprobe`` nearest cells; ``hnsw`` (IndexHNSWFlat) walks a neighbour graph. ``auto`` picks
flat below ``auto_approx_from`` rows and IVF from there (quick to build, recall set by nprobe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")


@dataclass
class FaissSpec:
    """A FAISS index type and its settings (stored in the index's config.json)."""

    kind: str = "flat"  # flat | ivf | hnsw
    nlist: int = 0  # ivf: number of cells
    nprobe: int = 0  # ivf: cells searched per query
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 80  # hnsw: candidate list while building
    ef_search: int = 128  # hnsw: candidate list while searching


def choose_spec(kind: str, n: int, auto_approx_from: int = 100_000, *, nlist: Optional[int] = None,
                nprobe: Optional[int] = None, hnsw_m: int = 32, ef_search: int = 128) -> FaissSpec:
    """The index for ``n`` rows: ``kind`` as asked, ``auto`` -> flat below ``auto_approx_from``, else ivf."""
    if kind not in INDEX_TYPES:
        raise ValueError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
    if kind == "auto":
        kind = "flat" if n < auto_approx_from else "ivf"
    if kind == "ivf":
        # ~2 sqrt(N) cells, each with at least 39 training points (FAISS's own lower bound)
        cells = nlist or max(1, min(int(2 * math.sqrt(n)), n // 39))
        probes = nprobe or max(1, min(cells, math.ceil(cells / 16)))
        return FaissSpec("ivf", nlist=cells, nprobe=min(probes, cells))
    if kind == "hnsw":
        return FaissSpec("hnsw", hnsw_m=hnsw_m, ef_search=ef_search)
    return FaissSpec("flat")


def build_faiss(emb: np.ndarray, spec: FaissSpec, seed: int = 0):
    """A FAISS index holding ``emb`` (N, E) float32 rows in order (row i has id i).

    Raises ``vl.evaluation.retrieval.NonFiniteError`` for a NaN or infinite row: FAISS would index it and never
    return it."""
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    from vl.evaluation.retrieval import require_finite  # (torch: not needed by `vl index --help`)

    require_finite(emb, "embeddings to index")
    n, d = emb.shape
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.kind == "ivf":
        if spec.nlist > n:
            raise ValueError(f"an IVF index with {spec.nlist} cells needs at least as many vectors, got {n}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = emb[np.sort(rng.choice(n, size=min(n, 64 * spec.nlist), replace=False))]
        index.cp.seed = seed
        index.train(sample)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        raise ValueError(f"unknown index kind {spec.kind!r}")
    index.add(emb)
    configure(index, spec)
    return index


def configure(index, spec: FaissSpec) -> None:
    """Set the search-time parameters of ``spec`` (nprobe, efSearch) on a built or loaded index."""
    import faiss

    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = max(1, spec.nprobe)
    elif spec.kind == "hnsw":
        index.hnsw.efSearch = max(1, spec.ef_search)
