"""``vl index``: embed a folder (or shards) of videos with a trained checkpoint into a FAISS search index.

    vl index --ckpt runs/demo/checkpoints/last.ckpt --videos data/synth/test-*.tar --out runs/demo/index
    vl index --ckpt model.ckpt --videos ~/clips --out clips.index --index-type hnsw

Re-running the same command after an interruption resumes where it stopped. Videos that cannot be
decoded are skipped and listed in INDEX/skipped.jsonl. ``vl demo --index INDEX`` serves the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from vl.search.faiss_index import INDEX_TYPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vl index", description="Embed videos with a trained checkpoint into a search "
                                "index (FAISS, inner product on L2-normalised embeddings).")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `vl fit`")
    p.add_argument("--videos", required=True, nargs="+", help="folders of videos, video files, or shards "
                   "(paths, brace patterns a/{000..009}.tar, globs, URLs)")
    p.add_argument("--out", required=True, help="index directory to write (resumed when it holds an unfinished build)")
    p.add_argument("--index-type", choices=INDEX_TYPES, default="auto", help="flat (exact), ivf or hnsw "
                   "(approximate); auto: flat below --auto-approx-from videos, else ivf (default: auto)")
    p.add_argument("--auto-approx-from", type=int, default=100_000, help="size from which auto picks ivf")
    p.add_argument("--nlist", type=int, default=None, help="ivf: number of cells (default ~2 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="ivf: cells searched per query (default nlist/16)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: neighbours per node (default: 32)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: 16)")
    p.add_argument("--chunk-size", type=int, default=256, help="videos per saved chunk, the unit of resumption")
    p.add_argument("--workers", type=int, default=2, help="threads decoding videos (default: 2)")
    p.add_argument("--device", default="cpu", help="device of the model (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch and FAISS (default: theirs)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing index at --out first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _report(out: Path, config: dict) -> None:
    """Print what was indexed and what was skipped, by reason, with a few examples."""
    print(f"indexed {config['num_videos']} videos ({config['num_captions']} captions) into {out} "
          f"[{config['faiss']['kind']}, {config['embed_dim']}-d]")
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines() if line]
    if not skipped:
        return
    reasons = Counter(s["reason"] for s in skipped)
    print(f"skipped {len(skipped)} inputs: " + ", ".join(f"{r}={n}" for r, n in reasons.most_common()))
    for s in skipped[:5]:
        print(f"  {s.get('key') or '-'}  {s['source']}  {s['reason']}: {s.get('detail', '')[:120]}")
    print(f"full list: {out / 'skipped.jsonl'}")


def main(argv: Optional[list[str]] = None) -> int:
    """``vl index``; exit status 0 when videos were indexed, 1 when none could be, 2 for bad arguments."""
    args = _parser().parse_args(argv)
    from vl.search.encoder import set_threads
    from vl.search.index import BuildOptions, EmptyIndexError, build_index

    set_threads(args.threads)

    opts = BuildOptions(batch_size=args.batch_size, chunk_size=args.chunk_size, workers=args.workers,
                        index_type=args.index_type, auto_approx_from=args.auto_approx_from, nlist=args.nlist,
                        nprobe=args.nprobe, hnsw_m=args.hnsw_m, overwrite=args.overwrite, progress=not args.quiet)
    out = Path(args.out)
    try:
        config = build_index(args.ckpt, args.videos, out, opts, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except EmptyIndexError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished chunks are kept in {out}; re-run the same command to resume", file=sys.stderr)
        return 130
    _report(out, config)
    return 0
