"""Video search indexes: building one from a folder or shards (resumable), storing it, and ``Searcher``.

An index is a directory:

    config.json      model config, checkpoint, clip settings, FAISS settings, counts (written last)
    videos.faiss     one L2-normalised video embedding per row; inner product = cosine similarity
    items.jsonl      row i: key, path of the playable file, source, captions
    captions.npy     text embeddings of every caption of every item, in items order (video -> caption search)
    skipped.jsonl    inputs that could not be indexed, with the reason
    media/           clips extracted from shards, so the app can play them (folders keep their own paths)
    chunks/          embeddings written while building; with progress.json they make a build resumable

``build_index`` embeds videos in chunks of ``chunk_size``; each finished chunk is saved and recorded in
``progress.json``, so an interrupted build re-run with the same command skips what is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from datapipes.decode import SkipSample
from datapipes.shards import count_samples
from vl.evaluation.retrieval import NonFiniteError, nonfinite_message, require_finite
from vl.objectives import match_score
from vl.search.encoder import Encoder, normalize_query, prepare_video_clip
from vl.search.faiss_index import FaissSpec, build_faiss, choose_spec, configure
from vl.search.sources import RawItem, Unit, find_units, item_clip, unit_items

INDEX_VERSION = 1
DERIVED_FILES = ("config.json", "videos.faiss", "items.jsonl", "captions.npy", "skipped.jsonl")
BUILD_FILES = ("progress.json",)
BUILD_DIRS = ("chunks", "media")
CLIP_FIELDS = ("num_frames", "size", "sampling", "sample_fps", "norm", "max_text_len")  # what shapes embeddings


class EmptyIndexError(RuntimeError):
    """No input video could be indexed."""


@dataclass
class BuildOptions:
    """How ``build_index`` works; none of these change the embeddings except through the model."""

    batch_size: int = 16  # clips per forward pass
    chunk_size: int = 256  # videos per saved chunk (the unit of resumption)
    workers: int = 2  # threads decoding videos ahead of the model
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: flat below auto_approx_from rows
    auto_approx_from: int = 100_000  # auto switches to an approximate (IVF) index from this many videos
    nlist: Optional[int] = None  # IVF cells (default ~2 sqrt(N))
    nprobe: Optional[int] = None  # IVF cells searched per query
    hnsw_m: int = 32  # HNSW graph degree
    overwrite: bool = False  # delete an existing index at `out` first
    progress: bool = True  # tqdm bar


Clip = tuple[torch.Tensor, torch.Tensor]  # (T, C, H, W) normalised clip, (T,) frame_mask (False: padded frame)


def _load_video_clip(item: RawItem, video_clip_cfg) -> Clip | SkipSample:
    """Decode one item (in a worker thread) into its clip and frame mask; failures are returned, not raised."""
    try:
        return item_clip(item, video_clip_cfg)
    except SkipSample as e:
        return e


def _decoded_batches(items: Iterator[RawItem], video_clip_cfg, pool: ThreadPoolExecutor, batch_size: int
                     ) -> Iterator[list[tuple[RawItem, Clip | SkipSample]]]:
    """Batches of (item, (clip, frame_mask) or failure), the next batch decoding while the caller runs the model."""

    def submit() -> list[tuple[RawItem, Future]]:
        return [(it, pool.submit(_load_video_clip, it, video_clip_cfg)) for it in islice(items, batch_size)]

    ahead = submit()
    while ahead:
        current, ahead = ahead, submit()
        yield [(it, f.result()) for it, f in current]


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:120] or "video"


def _row(item: RawItem, out: Path, unit_idx: int, ordinal: int) -> dict:
    """The items.jsonl row of an indexed item; a shard's video is extracted into ``out/media``."""
    if item.data is None:
        return {"key": item.key, "path": item.path, "source": item.source, "captions": item.captions}
    rel = Path("media") / f"{unit_idx:05d}" / f"{ordinal:07d}_{_safe_name(item.key)}.{item.ext}"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(item.data)
    return {"key": item.key, "path": rel.as_posix(), "source": item.source, "captions": item.captions}


def require_finite_rows(emb: np.ndarray, what: str, keys: Sequence[str]) -> None:
    """Raise ``NonFiniteError`` when a row of ``emb`` (N, E) holds a NaN or infinity, counting the rows and
    naming the first of their ``keys``: a model with non-finite weights has nothing to index (such rows would
    match no query, silently)."""
    bad = ~np.isfinite(emb).all(axis=1)  # (N,)
    if bool(bad.any()):
        first = keys[int(np.argmax(bad))] if len(keys) == len(bad) else "?"
        raise NonFiniteError(nonfinite_message(what, int(bad.sum()), len(bad)) + f"; first: {first!r}")


def encode_clip_batch(encoder: Encoder, clips: Sequence[Clip]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``encoder.encode_video_clips`` of (clip, frame_mask) pairs stacked into (B, T, C, H, W) and (B, T): a short
    video is embedded from its real frames only. The mask is passed only when some frame is padded."""
    videos = torch.stack([clip for clip, _ in clips])  # (B, T, C, H, W)
    frame_mask = torch.stack([mask for _, mask in clips])  # (B, T)
    if bool(frame_mask.all()):
        return encoder.encode_video_clips(videos)
    return encoder.encode_video_clips(videos, frame_mask)


def embed_chunk(items: Iterator[RawItem], encoder: Encoder, pool: ThreadPoolExecutor, out: Path, unit_idx: int,
                first: int, batch_size: int, bar) -> Optional[dict]:
    """Embed up to one chunk of items -> {"emb", "cap_emb", "rows", "skipped", "count"}; None when empty.

    Raises ``NonFiniteError`` before anything of a batch is kept when a video or caption embedding is not
    finite."""
    rows, skipped, count = [], [], 0
    embs = [np.zeros((0, encoder.embed_dim), np.float32)]
    cap_embs = [np.zeros((0, encoder.embed_dim), np.float32)]
    for batch in _decoded_batches(items, encoder.video_clip_config, pool, batch_size):
        good = []
        for j, (it, clip) in enumerate(batch):
            if isinstance(clip, SkipSample):
                skipped.append({"key": it.key, "source": it.source, "reason": clip.reason, "detail": clip.detail[:300]})
            else:
                good.append((first + count + j, it, clip))
        if good:
            emb = np.asarray(encode_clip_batch(encoder, [clip for _, _, clip in good])[0])  # (b, E)
            require_finite_rows(emb, "video embeddings", [it.key for _, it, _ in good])
            captions = [(it.key, c) for _, it, _ in good for c in it.captions]
            cap_emb = np.asarray(encoder.embed_texts([c for _, c in captions]))  # (captions, E)
            require_finite_rows(cap_emb, "caption embeddings", [k for k, _ in captions])
            embs.append(emb)
            cap_embs.append(cap_emb)
            rows += [_row(it, out, unit_idx, ordinal) for ordinal, it, _ in good]
        count += len(batch)
        if bar is not None:
            bar.update(len(batch))
    if count == 0:
        return None
    return {"emb": np.concatenate(embs), "cap_emb": np.concatenate(cap_embs), "rows": rows, "skipped": skipped,
            "count": count}


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file + rename), so an interruption never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _save_chunk(out: Path, name: str, chunk: dict) -> None:
    tmp = out / "chunks" / f"{name}.tmp.npz"
    np.savez(tmp, emb=chunk["emb"], cap_emb=chunk["cap_emb"],
             meta=np.array(json.dumps({"rows": chunk["rows"], "skipped": chunk["skipped"]})))
    os.replace(tmp, out / "chunks" / f"{name}.npz")


def _load_chunk(out: Path, name: str) -> dict:
    with np.load(out / "chunks" / f"{name}.npz", allow_pickle=False) as z:
        return {"emb": z["emb"], "cap_emb": z["cap_emb"], **json.loads(str(z["meta"]))}


def _signature(ckpt: str, units: list[Unit], encoder: Encoder, chunk_size: int) -> dict:
    """What must not change between an interrupted build and its resumption."""
    st = os.stat(ckpt)
    clip = {k: getattr(encoder.video_clip_config, k) for k in CLIP_FIELDS}
    checkpoint = {"path": os.path.abspath(ckpt), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    signature = {"version": INDEX_VERSION, "checkpoint": checkpoint, "units": [u.describe() for u in units],
                 "chunk_size": chunk_size, "clip": clip, "tokenizer": encoder.tokenizer_name}
    return json.loads(json.dumps(signature))  # as it reads back from progress.json


def _prepare_out(out: Path, signature: dict, overwrite: bool) -> dict:
    """Open (or start) the progress manifest at ``out``; refuses to mix builds or to clobber other files."""
    progress = out / "progress.json"
    if overwrite:
        for name in DERIVED_FILES + BUILD_FILES:
            (out / name).unlink(missing_ok=True)
        for name in BUILD_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    if progress.is_file():
        state = json.loads(progress.read_text(encoding="utf-8"))
        if state.get("signature") == signature:
            return state
        raise ValueError(f"{out} holds an index built from another checkpoint, other videos or other settings; "
                         f"pass --overwrite to rebuild it, or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a vl index: choose an empty or new --out")
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    state = {"signature": signature, "chunks": {}, "done_units": [], "unit_errors": {}}
    _write_json(progress, state)
    return state


def _run_units(units: list[Unit], state: dict, encoder: Encoder, out: Path, opts: BuildOptions, bar) -> None:
    """Embed every unit not done yet, chunk by chunk, recording each finished chunk in progress.json."""
    cs, skipped = opts.chunk_size, 0
    with ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="vl-index-decode") as pool:
        for u, unit in enumerate(units):
            if u in state["done_units"]:
                if bar is not None:  # done before an interruption: counted, so the bar's total is reached
                    bar.update(sum(v["count"] for k, v in state["chunks"].items() if k.split(":")[0] == str(u)))
                continue
            c = 0
            while f"{u}:{c}" in state["chunks"]:
                if bar is not None:
                    bar.update(state["chunks"][f"{u}:{c}"]["count"])
                c += 1
            tar_errors: list[dict] = []
            items = unit_items(unit, c * cs, tar_errors)
            while True:
                chunk = embed_chunk(islice(items, cs), encoder, pool, out, u, c * cs, opts.batch_size, bar)
                if chunk is None:
                    break
                name = f"u{u:05d}-c{c:06d}"
                _save_chunk(out, name, chunk)
                state["chunks"][f"{u}:{c}"] = {"file": name, "count": chunk["count"], "rows": len(chunk["rows"])}
                _write_json(out / "progress.json", state)
                skipped += len(chunk["skipped"])
                if bar is not None:
                    bar.set_postfix(skipped=skipped)
                c += 1
            state["done_units"].append(u)
            state["unit_errors"][str(u)] = tar_errors
            _write_json(out / "progress.json", state)


def _finalize(out: Path, state: dict, opts: BuildOptions, model_config: dict) -> dict:
    """Gather the chunks into videos.faiss, items.jsonl, captions.npy, skipped.jsonl and config.json."""
    names = [state["chunks"][k]["file"] for k in sorted(state["chunks"], key=lambda k: tuple(map(int, k.split(":"))))]
    chunks = [_load_chunk(out, n) for n in names]
    rows = [r for ch in chunks for r in ch["rows"]]
    skipped = [s for ch in chunks for s in ch["skipped"]] + [e for errs in state["unit_errors"].values() for e in errs]
    with open(out / "skipped.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped)
    if not rows:
        raise EmptyIndexError(f"no video could be indexed ({len(skipped)} inputs skipped, see {out / 'skipped.jsonl'})")
    emb = np.concatenate([ch["emb"] for ch in chunks]).astype(np.float32)
    cap_emb = np.concatenate([ch["cap_emb"] for ch in chunks]).astype(np.float32)
    require_finite_rows(emb, "video embeddings", [r["key"] for r in rows])
    require_finite_rows(cap_emb, "caption embeddings", [r["key"] for r in rows for _ in r["captions"]])
    spec = choose_spec(opts.index_type, len(rows), opts.auto_approx_from, nlist=opts.nlist, nprobe=opts.nprobe,
                       hnsw_m=opts.hnsw_m)
    import faiss

    faiss.write_index(build_faiss(emb, spec), str(out / "videos.faiss"))
    np.save(out / "captions.npy", cap_emb)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    config = {"version": INDEX_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "checkpoint": state["signature"]["checkpoint"], "model": model_config,
              "clip": state["signature"]["clip"], "tokenizer": state["signature"]["tokenizer"],
              "embed_dim": int(emb.shape[1]), "faiss": asdict(spec), "num_videos": len(rows),
              "num_captions": sum(len(r["captions"]) for r in rows), "num_skipped": len(skipped),
              "sources": [u["name"] for u in state["signature"]["units"]]}
    _write_json(out / "config.json", config)
    return config


def _total_items(units: list[Unit]) -> Optional[int]:
    """Inputs of a build, for the progress bar: files of folders plus samples of shards; None when a shard
    cannot be counted."""
    files = sum(len(u.files) for u in units if u.kind == "files")
    shards = [u.name for u in units if u.kind == "shard"]
    counts = count_samples(shards) if shards else []
    return None if counts is None else files + sum(c.samples for c in counts)


def build_index(ckpt: str | Path, videos: Sequence[str], out: str | Path, options: Optional[BuildOptions] = None,
                device: str = "cpu", encoder: Optional[Encoder] = None) -> dict:
    """Embed every video of ``videos`` (folders, files, shard specs) with the model of ``ckpt`` into ``out``.

    Resumes an interrupted build of the same inputs; returns the index's config (counts included).
    Raises ValueError for bad inputs or a conflicting ``out``, EmptyIndexError when no video could be indexed.
    """
    options = options or BuildOptions()
    if options.batch_size < 1 or options.chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    ckpt, out = str(ckpt), Path(out)
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    units = find_units(videos)
    encoder = encoder or Encoder.from_checkpoint(ckpt, device)
    state = _prepare_out(out, _signature(ckpt, units, encoder, options.chunk_size), options.overwrite)
    (out / "config.json").unlink(missing_ok=True)  # marks the index incomplete until _finalize rewrites it
    bar = None
    if options.progress:
        from tqdm import tqdm

        bar = tqdm(total=_total_items(units), desc="indexing", unit="video", dynamic_ncols=True)
    try:
        _run_units(units, state, encoder, out, options, bar)
    finally:
        if bar is not None:
            bar.close()
    return _finalize(out, state, options, encoder.model.config)


# ---- searching --------------------------------------------------------------------------------


@dataclass
class Hit:
    """One video found by a search."""

    rank: int  # 1-based
    key: str
    row: int  # row of the index (items.jsonl line)
    score: float  # what the order is by: cosine similarity, or when re-ranked the match score (``rerank_score``)
    similarity: float  # cosine similarity of the embeddings
    path: str  # absolute path of the playable file
    captions: list[str]
    vtm: Optional[float] = None  # match probability from the VTM head (re-ranked searches)


@dataclass
class CaptionHit:
    """One caption of the index found for an uploaded video."""

    rank: int
    text: str
    score: float  # cosine similarity between the video and the caption
    key: str  # the indexed video this caption belongs to


@dataclass
class VideoMatches:
    """What an uploaded video finds: similar videos and the best-matching captions."""

    videos: list[Hit]
    captions: list[CaptionHit]


def read_items(index: str | Path) -> list[dict]:
    """items.jsonl of an index, with ``path`` made absolute."""
    index = Path(index)
    items = [json.loads(line) for line in (index / "items.jsonl").read_text(encoding="utf-8").splitlines() if line]
    for item in items:
        item["path"] = str(Path(item["path"]) if os.path.isabs(item["path"]) else (index / item["path"]).resolve())
    return items


def read_config(index: str | Path) -> dict:
    """config.json of a finished index; FileNotFoundError with what to do when there is none."""
    path = Path(index) / "config.json"
    if not path.is_file():
        if (Path(index) / "progress.json").is_file():
            hint = "its build was interrupted: re-run the same `vl index` command to finish it"
        else:
            hint = "build one with `vl index --ckpt CKPT --videos DIR --out INDEX`"
        raise FileNotFoundError(f"no finished index at {index}: {hint}")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("version") != INDEX_VERSION:
        raise ValueError(f"{index} is an index of format {config.get('version')}, this vl reads {INDEX_VERSION}")
    return config


class Searcher:
    """Text-to-video and video-to-video search over an index built by ``vl index``; thread-safe.

    Args:
        index: the index directory.
        ckpt: the checkpoint to encode queries with (default: the one the index was built with).
        device: where the model runs.
        encoder: an ``Encoder`` already loaded (tests, scripts); overrides ``ckpt``.
        cache_size: decoded-and-encoded candidate videos kept for VTM re-ranking.
    """

    def __init__(self, index: str | Path, ckpt: Optional[str | Path] = None, device: str = "cpu",
                 encoder: Optional[Encoder] = None, cache_size: int = 256) -> None:
        import faiss

        self.root = Path(index)
        self.config = read_config(self.root)
        self.items = read_items(self.root)
        self.spec = FaissSpec(**self.config["faiss"])
        self.index = faiss.read_index(str(self.root / "videos.faiss"))
        configure(self.index, self.spec)
        self.encoder = encoder or Encoder.from_checkpoint(self._checkpoint(ckpt), device)
        if self.encoder.embed_dim != self.config["embed_dim"]:
            raise ValueError(f"the model embeds into {self.encoder.embed_dim} dimensions, the index holds "
                             f"{self.config['embed_dim']}: use the checkpoint the index was built with")
        self.caption_text = [c for item in self.items for c in item["captions"]]
        self.caption_item = np.array([i for i, item in enumerate(self.items) for _ in item["captions"]], np.int64)
        self.caption_index = faiss.IndexFlatIP(self.config["embed_dim"])
        self.caption_index.add(np.load(self.root / "captions.npy"))
        # row -> video tokens (N, D) and token mask (N,), True for tokens of real frames: VTM re-ranking (LRU order)
        self._tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def _checkpoint(self, ckpt: Optional[str | Path]) -> str:
        recorded = self.config["checkpoint"]
        path = str(ckpt or recorded["path"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} (recorded in {self.root}/config.json) not found: pass the "
                                    f"checkpoint the index was built with (--ckpt / Searcher(index, ckpt=...))")
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
            warnings.warn(f"{path} differs (size or modification time) from the checkpoint {self.root} was built "
                          f"with: if it holds another model, its queries will not match the index; rebuild it with "
                          f"`vl index`", stacklevel=3)
        return path

    def __len__(self) -> int:
        return len(self.items)

    def media_files(self) -> list[str]:
        """The playable files of the index: the only files an app over it may serve."""
        return [item["path"] for item in self.items]

    def example_queries(self, n: int = 6) -> list[str]:
        """Up to ``n`` distinct first captions, spread evenly over the index."""
        seen: dict[str, None] = {}
        for item in self.items:
            if item["captions"]:
                seen.setdefault(item["captions"][0], None)
        unique = list(seen)
        step = max(1, len(unique) // max(1, n))
        return unique[::step][:n]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        rows = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0]
        return [Hit(rank=r + 1, key=self.items[i]["key"], row=i, score=s, similarity=s, path=self.items[i]["path"],
                    captions=list(self.items[i]["captions"])) for r, (s, i) in enumerate(rows)]

    def search_embedding(self, emb: np.ndarray, k: int = 10) -> list[Hit]:
        """The ``k`` videos nearest to one (E,) embedding; ``NonFiniteError`` when it is not finite (FAISS
        would return no hit, as if nothing matched)."""
        require_finite(np.asarray(emb).reshape(1, -1), "query embedding")
        k = max(1, min(int(k), len(self.items)))
        scores, ids = self.index.search(np.ascontiguousarray(emb.reshape(1, -1), dtype=np.float32), k)
        return self._hits(scores[0], ids[0])

    def query(self, text: str, k: int = 10, rerank: bool = False, rerank_depth: int = 32,
              rerank_score: str = "vtm+vtc") -> list[Hit]:
        """The ``k`` videos that best match ``text``; with ``rerank``, the top ``rerank_depth`` by embedding
        are re-ordered by ``vl.objectives.match_score`` of the VTM head's match log-odds and the cosine
        (``vtm+vtc``: plus the dual encoder's logit, as ``RetrievalModule`` re-ranks; ``vtm``: VTM alone).
        Each hit's ``vtm`` is the match probability. Raises ValueError for an empty query."""
        text = normalize_query(text)
        emb = self.encoder.embed_texts([text])[0]
        if not rerank:
            return self.search_embedding(emb, k)
        if not self.encoder.has_vtm:
            raise ValueError(f"{self.encoder.vtm_unavailable}: search without re-ranking")
        candidates = self.search_embedding(emb, max(k, rerank_depth))
        tokens = self._candidate_tokens([h.row for h in candidates])
        kept = [(h, t) for h, t in zip(candidates, tokens) if t is not None]
        if not kept:
            return []
        video_tokens = torch.stack([t for _, (t, _) in kept])  # (R, N, D)
        video_mask = torch.stack([m for _, (_, m) in kept])  # (R, N)
        log_odds = self.encoder.vtm_log_odds(video_tokens, text, video_mask)  # (R,)
        cosine = torch.tensor([h.similarity for h, _ in kept], dtype=torch.float32)  # (R,)
        scores = match_score(log_odds, cosine, self.encoder.logit_scale, rerank_score).numpy()
        require_finite(scores, "re-ranking scores")  # NaN would sort arbitrarily
        probs = torch.sigmoid(log_odds).numpy()
        order = np.argsort(-scores, kind="stable")[:k]
        out = []
        for r, j in enumerate(order):
            h = kept[int(j)][0]
            out.append(Hit(rank=r + 1, key=h.key, row=h.row, score=float(scores[j]), similarity=h.similarity,
                           path=h.path, captions=h.captions, vtm=float(probs[j])))
        return out


    def _candidate_tokens(self, rows: list[int]) -> list[Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """Video tokens (N, D) and token mask (N,) of indexed rows, from the cache or decoded again; None where
        decoding fails."""
        with self._cache_lock:
            found = {r: self._tokens[r] for r in rows if r in self._tokens}
        missing = [r for r in rows if r not in found]
        clips = {}
        for r in missing:
            try:
                clips[r] = prepare_video_clip(Path(self.items[r]["path"]).read_bytes(), self.encoder.video_clip_config)
            except (OSError, SkipSample):
                continue  # the file changed or vanished since indexing: it cannot be re-ranked
        if clips:
            _, tokens, keep = encode_clip_batch(self.encoder, list(clips.values()))  # (m, N, D), (m, N)
            found.update(zip(clips, zip(tokens, keep)))
            with self._cache_lock:
                for r in clips:
                    self._tokens.pop(r, None)
                    self._tokens[r] = found[r]
                while len(self._tokens) > self._cache_size:
                    self._tokens.pop(next(iter(self._tokens)))
        return [found.get(r) for r in rows]

    def similar(self, video: str | Path | bytes, k: int = 10, num_captions: int = 5) -> VideoMatches:
        """Videos of the index most similar to ``video`` (a path or bytes) and its best-matching captions.

        Raises ``SkipSample`` when ``video`` is not a decodable video.
        """
        data = video if isinstance(video, bytes) else Path(video).read_bytes()
        emb = encode_clip_batch(self.encoder, [prepare_video_clip(data, self.encoder.video_clip_config)])[0]  # (1, E)
        videos = self.search_embedding(emb[0], k)
        captions: list[CaptionHit] = []
        if len(self.caption_text):
            depth = min(len(self.caption_text), 4 * num_captions)
            scores, ids = self.caption_index.search(emb, depth)
            for s, i in zip(scores[0], ids[0]):
                text = self.caption_text[i]
                if i >= 0 and len(captions) < num_captions and all(c.text != text for c in captions):
                    key = self.items[int(self.caption_item[i])]["key"]
                    captions.append(CaptionHit(rank=len(captions) + 1, text=text, score=float(s), key=key))
        return VideoMatches(videos, captions)
