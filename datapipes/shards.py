"""Shard lists: expansion, opening (local, ``pipe:``, fsspec URLs), resampling and rank/worker splitting.

A shard spec is a string or a list of strings. Each string may hold several specs joined by ``::``,
brace ranges (``shards/{00000..00999}.tar``) and globs (``shards/*.tar``, also on fsspec file systems).
Local shards are checked at start, so a typo fails at once rather than as a hang or an empty epoch.
Remote URLs (``s3://``, ``gs://``, ``https://``, ...) are opened with fsspec; ``pipe:CMD`` reads the
standard output of a shell command (webdataset's convention).
"""

from __future__ import annotations

import glob
import os
import random
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Optional, Union

import braceexpand
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from datapipes.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, SkipTally

ShardSpec = Union[str, Sequence[str]]
GLOB_CHARS = ("*", "?", "[")
# Extensions a sample file may carry: media, text, metadata, video2dataset's audio, our MVM targets.
# A tar member's key is its name minus the longest of these, so keys may hold dots (`a.b.mp4`).
KNOWN_EXTENSIONS: frozenset[str] = frozenset(
    VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
    + ("txt", "json", "cls", "npy", "vq.npy", "m4a", "mp3", "wav", "flac", "ogg", "opus")
)


def split_key(path: str) -> tuple[Optional[str], Optional[str]]:
    """``(key, extension)`` of a tar member name: the extension is the longest known suffix.

    ``videos/a.b.mp4`` -> ``("videos/a.b", "mp4")`` and ``x.vq.npy`` -> ``("x", "vq.npy")``. A name with no
    known suffix is split at its first dot as webdataset does (``x.seg.xyz`` -> ``("x", "seg.xyz")``);
    ``(None, None)`` when the name has no extension at all.
    """
    folder, slash, base = path.rpartition("/")
    dot = base.find(".", 1)
    while dot != -1:
        if base[dot + 1 :].lower() in KNOWN_EXTENSIONS:
            return folder + slash + base[:dot], base[dot + 1 :]
        dot = base.find(".", dot + 1)
    return base_plus_ext(path)


def _scheme(url: str) -> str:
    """URL scheme (``s3``, ``pipe``, ...) or ``""`` for a local path (Windows drive letters included)."""
    if url.startswith("pipe:"):
        return "pipe"
    head, sep, _ = url.partition("://")
    return head.lower() if sep and len(head) > 1 else ""


def _glob(pattern: str) -> list[str]:
    """Sorted matches of a local or fsspec glob pattern (remote matches keep their scheme)."""
    scheme = _scheme(pattern)
    if scheme == "":
        return sorted(glob.glob(os.path.expanduser(pattern)))
    if scheme == "file":
        return sorted("file://" + p for p in glob.glob(pattern[len("file://") :]))
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    return sorted(fs.unstrip_protocol(p) for p in paths)


def expand_shards(spec: ShardSpec, check_local: bool = True) -> list[str]:
    """Expand a shard spec into the list of shard URLs it names.

    Raises ``ValueError`` when the spec is empty, names no shard or names a local directory, and
    ``FileNotFoundError`` when a local shard (or every match of a local glob) is missing: all at start,
    never as a silent empty epoch or a traceback from inside a DataLoader worker.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("the shard list is empty: give a path, brace pattern, glob or URL of .tar shards")
    urls: list[str] = []
    for entry in specs:
        if not str(entry).strip():
            raise ValueError(f"the shard spec {spec!r} has an empty entry: give a path, brace pattern, glob or "
                             f"URL of .tar shards")
        for part in str(entry).split("::"):
            for url in braceexpand.braceexpand(part.strip()):
                if not url:
                    continue
                if _scheme(url) != "pipe" and any(c in url for c in GLOB_CHARS):
                    matches = _glob(url)
                    if not matches:
                        raise FileNotFoundError(f"no shard matches the pattern {url!r} (from spec {entry!r})")
                    urls.extend(matches)
                else:
                    urls.append(url)
    if not urls:
        raise ValueError(f"the shard spec {spec!r} names no shard")
    _check_protocols(urls)
    if check_local:
        missing = [u for u in urls if _scheme(u) in ("", "file") and not os.path.exists(_local_path(u))]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards do not exist: {missing[:3]}{more}")
        folders = [u for u in urls if _scheme(u) in ("", "file") and os.path.isdir(_local_path(u))]
        if folders:
            raise ValueError(f"the shard spec {spec!r} names a directory, not a .tar shard: {folders[0]!r}; give "
                             f"the shards inside it, e.g. {os.path.join(folders[0], '*.tar')!r}")
    return urls


def _check_protocols(urls: list[str]) -> None:
    """Fail at start when fsspec cannot handle a remote scheme (unknown, or its package is missing)."""
    schemes = {_scheme(u) for u in urls} - {"", "file", "pipe"}
    if not schemes:
        return
    import fsspec

    for scheme in sorted(schemes):
        try:
            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as e:
            raise ImportError(
                f"cannot read {scheme}:// shards: {e}. Install fsspec's package for it (s3fs for s3://, gcsfs "
                f"for gs://, adlfs for az://) or read through a command: 'pipe:aws s3 cp s3://... -'"
            ) from e


def _local_path(url: str) -> str:
    return os.path.expanduser(url[len("file://") :] if url.startswith("file://") else url)


def open_shard(url: str) -> IO[bytes]:
    """Open one shard for reading: a local file, ``pipe:CMD`` (webdataset's gopen) or an fsspec URL."""
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return open(_local_path(url), "rb")
    if scheme == "pipe":
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except ImportError as e:
        raise ImportError(
            f"cannot open {url!r}: fsspec needs an extra package for {scheme}:// ({e}). Install it "
            f"(s3fs for s3://, gcsfs for gs://, aiohttp for https://) or use 'pipe:<command>' instead."
        ) from e


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (seed, rank, worker, epoch, ...) so that streams differ."""
    return random.Random(repr(tuple(int(p) for p in parts))).getrandbits(63)


class ResampledShards(IterableDataset):
    """Endless shard URLs drawn with replacement, a different stream for each rank, worker and epoch.

    Unlike webdataset's ``ResampledShards``, the rank is given explicitly (resolved in the main
    process), so DataLoader workers of different ranks never draw the same stream.
    """

    def __init__(self, urls: list[str], seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ResampledShards needs at least one shard")
        self.urls, self.seed, self.rank, self.epoch = list(urls), seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_info()
        rng = random.Random(stream_seed(self.seed, self.rank, worker, self.epoch))
        self.epoch += 1  # persistent workers keep this copy: their next epoch draws a new stream
        while True:
            yield dict(url=self.urls[rng.randrange(len(self.urls))])


class SplitShards(IterableDataset):
    """Each shard once, split by rank then by DataLoader worker (evaluation).

    With at least ``world_size * num_workers`` shards, each worker reads its own shards. With fewer,
    every worker reads all shards and ``split_samples`` keeps every n-th sample, so that each sample
    is still seen exactly once.
    """

    def __init__(self, urls: list[str], rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not urls:
            raise ValueError("SplitShards needs at least one shard")
        self.urls, self.rank, self.world_size = list(urls), rank, world_size

    def by_shard(self, num_workers: int) -> bool:
        """True when there are enough shards to split whole shards across every rank and worker."""
        return len(self.urls) >= self.world_size * num_workers

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_info()
        urls = self.urls
        if self.by_shard(num_workers):
            urls = urls[self.rank :: self.world_size][worker::num_workers]
        for url in urls:
            yield dict(url=url)

    def split_samples(self, samples: Iterable[dict]) -> Iterator[dict]:
        """Keep this rank and worker's share of samples when whole shards could not be split."""
        worker, num_workers = worker_info()
        if self.by_shard(num_workers):
            yield from samples
            return
        total, me = self.world_size * num_workers, self.rank * num_workers + worker
        for i, sample in enumerate(samples):
            if i % total == me:
                yield sample


def _tar_error_reason(exn: BaseException) -> str:
    """Skip reason for an exception raised while reading a tar stream."""
    msg = str(exn.args[0] if exn.args else exn).lower()
    if isinstance(exn, EOFError) or any(s in msg for s in ("unexpected end", "truncated", "empty header")):
        return "truncated_tar"
    if "empty file" in msg:
        return "empty_shard"
    if isinstance(exn, (tarfile.TarError, UnicodeDecodeError)):
        return "bad_tar"
    return "shard_read_error"


def shard_samples(
    urls: Iterable[dict], counter: SkipTally, max_empty_shards: Optional[int] = None
) -> Iterator[dict]:
    """Samples ``{"__key__", "__url__", ext: bytes}`` of each shard, read with webdataset's tar iterator.

    A shard that cannot be opened or read is counted (``shard_open_error``, ``truncated_tar``,
    ``bad_tar``, ...) and the stream goes on with the next one; samples read before the error are kept.
    With ``max_empty_shards``, that many shards in a row yielding no sample raise ``RuntimeError``
    (an endless resampled stream of bad shards would otherwise hang).
    """
    empty_in_row = 0
    for item in urls:
        url = item["url"]
        produced = 0
        try:
            stream = open_shard(url)
        except Exception as e:  # any failure to open: missing file, network, bad pipe command
            counter.skip("shard_open_error", f"{url}: {type(e).__name__}: {e}")
            stream = None
        if stream is not None:
            for sample in _read_tar(stream, url, counter):
                produced += 1
                yield sample
        empty_in_row = 0 if produced else empty_in_row + 1
        if max_empty_shards is not None and empty_in_row >= max_empty_shards:
            raise RuntimeError(
                f"the last {empty_in_row} shards read gave no sample (last: {url}); skipped so far: "
                f"{counter.totals()}. Check the shard list."
            )


class _EndCheck:
    """Wraps a shard stream and remembers its first and last bytes, to tell a whole tar from a cut one.

    A tar ends with two zero blocks; tarfile itself accepts a stream cut exactly between two members.
    """

    COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bz2, xz, zstd

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.head, self.tail = stream, b"", b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if len(self.head) < 8:
            self.head += data[: 8 - len(self.head)]
        self.tail = (self.tail + data)[-1024:]
        return data

    def cut_short(self, drain_limit: int = 1 << 20) -> bool:
        """True when an uncompressed tar stream ends without its end-of-archive zero blocks."""
        if self.head.startswith(self.COMPRESSED):
            return False  # decompressors raise on a cut stream
        drained = 0
        while drained < drain_limit:  # the zero blocks and record padding after the last member
            chunk = self.read(65536)
            if not chunk:
                break
            drained += len(chunk)
        return len(self.tail) < 1024 or self.tail.count(0) != 1024


def _read_tar(stream: IO[bytes], url: str, counter: SkipTally) -> Iterator[dict]:
    """Group the files of one open tar stream into samples (keys by ``split_key``); tar errors end the
    shard and are counted, as are members not named ``KEY.EXTENSION`` (``bad_file_name``)."""
    failed = []
    checked = _EndCheck(stream)

    def on_tar_error(exn: BaseException) -> bool:
        failed.append(exn)
        counter.skip(_tar_error_reason(exn), f"{url}: {exn}")
        return False  # stop reading this shard: the stream is no longer in sync

    def on_group_error(exn: BaseException) -> bool:
        counter.skip("duplicate_file" if "duplicate" in str(exn) else "bad_tar", f"{url}: {exn}")
        return True

    def files() -> Iterator[dict]:
        try:
            for f in tar_file_iterator(checked, handler=on_tar_error):
                f["__url__"] = url
                yield f
        except Exception as e:  # raised by tarfile outside webdataset's handler (header errors)
            on_tar_error(e)
        if not failed and checked.cut_short():
            counter.skip("truncated_tar", f"{url}: the tar ends without its end-of-archive blocks")

    def keys(name: str) -> tuple[Optional[str], Optional[str]]:
        key, ext = split_key(name)
        if key is None:
            counter.skip("bad_file_name", f"{url}: {name!r} is not named KEY.EXTENSION")
        return key, ext

    try:
        yield from group_by_keys(files(), keys=keys, handler=on_group_error)
    finally:
        try:
            stream.close()
        except Exception as e:  # e.g. a `pipe:` command that exited with an error status
            counter.skip("shard_read_error", f"{url}: {type(e).__name__}: {e}")


def mix_streams(sources: list[Iterator[dict]], weights: Sequence[float], seed: int) -> Iterator[dict]:
    """Interleave endless sample streams, drawing stream ``i`` with probability ``weights[i] / sum``.

    Not ``webdataset.RandomMix``: it draws from Python's global ``random`` (no seed or generator can be
    given), so its choices would depend on every other user of that generator. Training resumes mid-epoch
    by replaying each worker's stream up to a recorded position, which needs the sequence of choices to
    be a function of ``seed`` (rank, worker and epoch) alone.
    """
    if len(sources) != len(weights) or not sources:
        raise ValueError(f"need one weight per dataset: {len(sources)} datasets, {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"dataset weights must be non-negative with a positive sum, got {list(weights)}")
    rng = random.Random(seed)
    while True:
        (source,) = rng.choices(sources, weights=weights)
        yield next(source)


@dataclass
class ShardCount:
    """What one shard holds, from its tar headers."""

    samples: int  # keys (every sample, with or without a video)
    media: int  # samples with a video or image file


def count_shard_samples(url: str) -> Optional[ShardCount]:
    """The samples of one local uncompressed shard, counted from its tar headers (file contents are skipped,
    not read: a 1 GB shard is counted in milliseconds); None for a remote, compressed or unreadable shard.
    Keys are grouped as the data pipeline groups them (``datapipes.shards.split_key``)."""
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or path.startswith("pipe:") or not path.endswith(".tar") or not os.path.isfile(path):
        return None
    media_ext = set(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
    keys: set[str] = set()
    media: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_key(member.name)
                if key is None:
                    continue
                keys.add(key)
                if ext is not None and ext.lower() in media_ext:
                    media.add(key)
    except (OSError, tarfile.TarError, EOFError):
        return None
    return ShardCount(samples=len(keys), media=len(media))


def count_samples(urls: Sequence[str], budget_s: float = 5.0) -> Optional[list[ShardCount]]:
    """``count_shard_samples`` of every shard; None when one cannot be counted or counting takes longer than
    ``budget_s`` seconds (a total is a convenience, never worth a long wait)."""
    deadline = time.monotonic() + budget_s
    counts = []
    for url in urls:
        count = count_shard_samples(url)
        if count is None or time.monotonic() > deadline:
            return None
        counts.append(count)
    return counts
