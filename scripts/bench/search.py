"""Search benchmark: index build throughput, query latency (text encoding + search) and approximate recall.

    python scripts/bench/search.py                      # 1k, 10k, 100k, 1M vectors, 128-d, 1 thread (~3 min)
    python scripts/bench/search.py --sizes 1000,100000 --dim 256 --hnsw-max 100000 --threads 2

Two parts, each a table:
1. FAISS indexes (flat = exact IndexFlatIP, ivf, hnsw) over random *clustered* unit vectors (a mixture of
   ~sqrt(N) overlapping Gaussian clusters, the shape real embedding collections have; uniform random vectors
   have no neighbourhood structure and make every approximate index look bad). Queries are perturbed rows.
   Reports build time and vectors/s, search latency per single query (p50, p95), the speed-up over flat
   measured in the same run, and recall@10 against flat's exact top 10.
2. End to end on real mp4s: ``build_index`` over synthetic shards with an untrained ``vl_tiny`` (videos/s,
   decode + model + FAISS), and text-query latency through ``Searcher.query`` (tokenise + encode + search).

Prints both tables and writes bench_results/search.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repository

from vl.search.faiss_index import build_faiss, choose_spec  # noqa: E402


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around ~sqrt(n) random centres, with noise 1.5x the centres' spread: overlapping clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, int(np.sqrt(n))), dim)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def perturbed_queries(x: np.ndarray, q: int, seed: int) -> np.ndarray:
    """``q`` unit queries near random rows of ``x`` (cosine ~0.7 to their row, as a caption to its video)."""
    rng = np.random.default_rng(seed + 1)
    base = x[rng.integers(len(x), size=q)]
    out = base + rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(x.shape[1])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def time_queries(index, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    """Per-query latencies (ms), one query at a time as the app searches, and the ids found."""
    lat, ids = [], []
    index.search(queries[:1], k)  # warm-up
    for q in queries:
        t = time.perf_counter()
        _, found = index.search(q[None], k)
        lat.append(1000 * (time.perf_counter() - t))
        ids.append(found[0])
    return lat, np.stack(ids)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top k that the approximate search also returned."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def bench_faiss(sizes: list[int], dim: int, queries: int, k: int, hnsw_max: int, seed: int) -> list[dict]:
    """Build and query flat, ivf (and hnsw up to ``hnsw_max`` rows) at each size."""
    rows = []
    for n in sizes:
        x = clustered_vectors(n, dim, seed)
        qs = perturbed_queries(x, queries, seed)
        exact = None
        flat_p50 = None
        for kind in ("flat", "ivf", "hnsw"):
            if kind == "hnsw" and n > hnsw_max:
                continue
            spec = choose_spec(kind, n)
            t = time.perf_counter()
            index = build_faiss(x, spec, seed=seed)
            build_s = time.perf_counter() - t
            lat, found = time_queries(index, qs, k)
            exact = found if kind == "flat" else exact
            p50 = statistics.median(lat)
            flat_p50 = p50 if kind == "flat" else flat_p50
            rows.append({"n": n, "dim": dim, "index": kind, "nlist": spec.nlist, "nprobe": spec.nprobe,
                         "build_s": build_s, "build_vec_per_s": n / build_s, "search_ms_p50": p50,
                         "search_ms_p95": float(np.percentile(lat, 95)), "speedup_vs_flat": flat_p50 / p50,
                         f"recall@{k}": recall_at_k(found, exact)})
            print(_faiss_line(rows[-1], k), flush=True)
            del index
    return rows


def _faiss_line(r: dict, k: int) -> str:
    setting = f"nlist={r['nlist']} nprobe={r['nprobe']}" if r["index"] == "ivf" else ""
    return (f"{r['n']:>9,} {r['index']:<5} {setting:<22} "
            f"build {r['build_s']:7.2f} s ({r['build_vec_per_s']:>10,.0f} vec/s)"
            f"  search p50 {r['search_ms_p50']:7.3f} ms p95 {r['search_ms_p95']:7.3f} ms"
            f"  x{r['speedup_vs_flat']:5.1f} vs flat  recall@{k} {r[f'recall@{k}']:.3f}")


def _tiny_checkpoint(path: Path) -> None:
    """An untrained vl_tiny in the checkpoint format ``vl fit`` writes (speed does not depend on training)."""
    import torch

    from vl.models import create_model

    model = create_model("vl_tiny")
    torch.save({"vl_model_config": model.config, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vl_preprocess": {"num_frames": 4, "frame_size": 32, "tokenizer": "minilm", "max_text_len": 32}}, path)


def bench_end_to_end(videos: int, queries: int, k: int, workdir: Path) -> dict:
    """``build_index`` throughput on synthetic mp4 shards and ``Searcher.query`` latency, vl_tiny on CPU."""
    from datapipes.synth import SynthConfig, write_synth
    from vl.search import BuildOptions, Searcher, build_index

    write_synth(str(workdir / "synth"), {"test": videos}, SynthConfig(frames=16, size=64, fps=8), workers=2,
                progress=False)
    ckpt = workdir / "tiny.ckpt"
    _tiny_checkpoint(ckpt)
    t = time.perf_counter()
    build_index(ckpt, [str(workdir / "synth" / "test-*.tar")], workdir / "index", BuildOptions(progress=False))
    build_s = time.perf_counter() - t
    searcher = Searcher(workdir / "index")
    texts = [item["captions"][0] for item in searcher.items][:queries]
    searcher.query(texts[0], k=k)  # warm-up
    enc, total = [], []
    for text in texts:
        t0 = time.perf_counter()
        searcher.encoder.embed_texts([text])
        t1 = time.perf_counter()
        searcher.query(text, k=k)
        total.append(1000 * (time.perf_counter() - t1))
        enc.append(1000 * (t1 - t0))
    row = {"videos": videos, "build_s": build_s, "videos_per_s": videos / build_s,
           "encode_ms_p50": statistics.median(enc), "query_ms_p50": statistics.median(total),
           "query_ms_p95": float(np.percentile(total, 95))}
    print(f"end to end: {videos} synthetic mp4s indexed in {build_s:.1f} s ({row['videos_per_s']:.1f} videos/s); "
          f"text query p50 {row['query_ms_p50']:.1f} ms (encode {row['encode_ms_p50']:.1f} ms), "
          f"p95 {row['query_ms_p95']:.1f} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000,1000000", help="comma-separated index sizes")
    p.add_argument("--dim", type=int, default=128, help="embedding width (vl_tiny: 128; *_base: 256)")
    p.add_argument("--queries", type=int, default=200, help="single queries timed per index")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--hnsw-max", type=int, default=10_000, help="largest size to build HNSW at (100k takes ~1 min)")
    p.add_argument("--videos", type=int, default=256, help="synthetic mp4s for the end-to-end build (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="FAISS and torch threads (1: stable on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results/search.json")
    args = p.parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"faiss {faiss.__version__}, {args.threads} threads, dim {args.dim}, {args.queries} single queries, "
          f"k={args.k}")
    t = time.perf_counter()
    command = " ".join(["python scripts/bench/search.py"] + (argv if argv is not None else sys.argv[1:]))
    result = {"command": command, "threads": args.threads,
              "faiss": bench_faiss(sizes, args.dim, args.queries, args.k, args.hnsw_max, args.seed)}
    if args.videos > 0:
        with tempfile.TemporaryDirectory() as tmp:
            result["end_to_end"] = bench_end_to_end(args.videos, min(args.queries, args.videos), args.k, Path(tmp))
    result["wall_s"] = time.perf_counter() - t
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
