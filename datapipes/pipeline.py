"""Train and evaluation pipelines: shards -> samples -> clips + text -> ``Batch``, with skip counting.

``build_train_loader`` reads resampled shards (several datasets mixed by weight), shuffles, decodes,
augments and batches inside DataLoader workers; every worker yields a fixed number of batches per
epoch, so every DDP rank runs the same number of steps. ``build_eval_loader`` reads every sample
exactly once, split by rank then by worker, with one text row per caption. Each raw sample becomes
``Sample``s through ``datapipes.process`` (``process_sample``, around ``load_clip``, the decode path search
shares).

Samples that cannot be used are skipped and counted by reason (``SkipTally``); each batch carries
the counts of its worker since that worker's previous batch in ``Batch.skipped``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.utils import PipelineStage

from datapipes.augment import Norm
from datapipes.batch import Batch
from datapipes.collate import Sample, collate
from datapipes.decode import SkipSample, SkipTally, quiet_decoders
from datapipes.process import ClipConfig, process_sample
from datapipes.shards import (
    ResampledShards,
    ShardSpec,
    SplitShards,
    dist_info,
    expand_shards,
    mix_streams,
    shard_samples,
    stream_seed,
    worker_info,
)
from datapipes.text import HFTokenizer, Tokenize

# Skip reasons a pipeline can count (shards.py adds the tar-level ones).
SKIP_REASONS: tuple[str, ...] = (
    "status_not_success", "bad_metadata", "no_video", "not_a_video", "empty_file", "decode_error",
    "bad_clip_bounds", "no_caption", "bad_text_encoding", "no_question", "bad_qa",
    "truncated_tar", "bad_tar", "empty_shard", "shard_open_error", "duplicate_file", "shard_read_error",
    "bad_file_name",
    "padded_clip",  # not a skip: a video kept with fewer real frames than num_frames (Batch.frame_mask)
)
# Reasons of SKIP_REASONS that count samples kept, not skipped: reported beside the skips, not in their total.
KEPT_REASONS: tuple[str, ...] = ("padded_clip",)


# Where one worker's stream stands, as plain ints (checkpoints hold only primitive types): the raw samples
# of the epoch's (shuffled) stream before index `raw` are done, and so are the first `taken` Samples made
# from raw sample `raw` (QA turns one raw sample into one Sample per question).
StreamPosition = tuple[int, int]  # (raw, taken)


class StreamContext:
    """State shared by the stages of one pipeline copy (one per worker): seed, rank, epoch, skip counts,
    and the position in the epoch's stream (where to start, and what each Sample came from)."""

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.counter = SkipTally()
        self.start: StreamPosition = (0, 0)  # where this epoch's stream begins (a resumed epoch: later)
        self.raw_index = -1  # index in the epoch's stream of the raw sample being processed
        self.sample_positions: deque[StreamPosition] = deque()  # position after each Sample not yet batched

    def rng(self, salt: int) -> np.random.Generator:
        """A generator for this rank, worker and epoch; ``salt`` separates the stages."""
        worker, _ = worker_info()
        return np.random.default_rng(stream_seed(self.seed, self.rank, worker, self.epoch, salt))

    def sample_rng(self) -> np.random.Generator:
        """The generator of the raw sample being processed, seeded by its index in the epoch's stream.

        A resumed epoch skips the raw samples before its start without decoding them; seeding each
        sample by its index makes the samples after the start draw what they drew in the first run.
        """
        worker, _ = worker_info()
        return np.random.default_rng(stream_seed(self.seed, self.rank, worker, self.epoch, 3, self.raw_index))


class TrainSource(PipelineStage):
    """Endless raw samples from resampled shards of one or more datasets mixed by weight."""

    def __init__(self, datasets: list[list[str]], weights: list[float], ctx: StreamContext,
                 max_empty_shards: int) -> None:
        self.datasets, self.weights, self.ctx, self.max_empty_shards = datasets, weights, ctx, max_empty_shards

    def run(self) -> Iterator[dict]:
        streams = []
        for i, urls in enumerate(self.datasets):
            shards = ResampledShards(urls, seed=self.ctx.seed + 7919 * i, rank=self.ctx.rank)
            shards.set_epoch(self.ctx.epoch)
            streams.append(shard_samples(shards, self.ctx.counter, self.max_empty_shards))
        if len(streams) == 1:
            return streams[0]
        worker, _ = worker_info()
        return mix_streams(streams, self.weights, stream_seed(self.ctx.seed, self.ctx.rank, worker, self.ctx.epoch, 1))


class EvalSource(PipelineStage):
    """Raw samples of every shard once, this rank and worker's share only."""

    def __init__(self, urls: list[str], ctx: StreamContext) -> None:
        self.shards, self.ctx = SplitShards(urls, ctx.rank, ctx.world_size), ctx

    def run(self) -> Iterator[dict]:
        return self.shards.split_samples(shard_samples(self.shards, self.ctx.counter))


class ShuffleStage(PipelineStage):
    """webdataset's buffer shuffle, seeded per rank, worker and epoch."""

    def __init__(self, bufsize: int, ctx: StreamContext) -> None:
        self.bufsize, self.ctx = bufsize, ctx

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(int(self.ctx.rng(2).integers(2**62)))
        return wds.shuffle(self.bufsize, min(self.bufsize, 100), rng=rng)(iter(src))


class RawPositionStage(PipelineStage):
    """Numbers the raw samples of the epoch's stream and drops, undecoded, those before ``ctx.start``."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        first = self.ctx.start[0]
        for index, raw in enumerate(src):
            if index < first:
                continue
            self.ctx.raw_index = index  # read by ctx.sample_rng() while this sample is processed
            yield raw


class SamplePositionStage(PipelineStage):
    """Records the stream position after each ``Sample`` (for ``BatchPositionStage``) and drops the
    Samples of the start's raw sample that a resumed epoch had already batched."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    def run(self, src: Iterable[Sample]) -> Iterator[Sample]:
        start_raw, start_taken = self.ctx.start
        self.ctx.sample_positions.clear()
        current, taken = -1, 0
        for sample in src:
            if self.ctx.raw_index != current:
                current, taken = self.ctx.raw_index, 0
            taken += 1
            if current == start_raw and taken <= start_taken:
                continue
            self.ctx.sample_positions.append((current, taken))
            yield sample


class PositionedBatch(NamedTuple):
    """A training batch with the worker that made it and that worker's stream position after it."""

    batch: Batch
    worker: int
    position: StreamPosition


class BatchPositionStage(PipelineStage):
    """Pairs each ``Batch`` with its worker's stream position after it (``PositionedBatch``).

    The position is that of the batch's last Sample; when the worker has already made the next Sample
    from a later raw sample, it moves to that raw sample, so a resumed epoch re-decodes nothing.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    def run(self, src: Iterable[Batch]) -> Iterator[PositionedBatch]:
        worker, _ = worker_info()
        pending = self.ctx.sample_positions
        for batch in src:
            for _ in range(batch.batch_size - 1):
                pending.popleft()
            raw, taken = pending.popleft()
            if pending and pending[0][0] != raw:
                raw, taken = pending[0][0], 0
            yield PositionedBatch(batch, worker, (raw, taken))


class ProcessStage(PipelineStage):
    """Raw samples -> ``Sample``s; skips are counted, and too many in a row raise instead of hanging."""

    def __init__(self, cfg: ClipConfig, train: bool, ctx: StreamContext, max_consecutive_skips: Optional[int]) -> None:
        self.cfg, self.train, self.ctx, self.max_skips = cfg, train, ctx, max_consecutive_skips

    def run(self, src: Iterable[dict]) -> Iterator[Sample]:
        quiet_decoders()
        counter = self.ctx.counter
        for raw in src:
            try:
                samples = process_sample(raw, self.cfg, self.train, self.ctx.sample_rng(), counter)
            except SkipSample as e:
                counter.skip(e.reason, f"{raw.get('__key__')} ({raw.get('__url__')}): {e.detail}")
                if self.max_skips is not None and counter.consecutive >= self.max_skips:
                    raise RuntimeError(
                        f"{counter.consecutive} samples in a row were skipped ({counter.totals()}); "
                        f"last problems: {counter.last_detail}. Check the shards."
                    ) from e
                continue
            counter.ok()
            yield from samples


class BatchStage(PipelineStage):
    """Group samples into collated ``Batch``es carrying the skip counts since the worker's last batch.

    A full batch is handed on only when the next sample arrives (or the stream ends), so skips after
    the last sample still reach a batch. ``partial`` keeps a last, smaller batch (evaluation).
    """

    def __init__(self, batch_size: int, tokenize: Tokenize, norm: Norm, ctx: StreamContext, partial: bool) -> None:
        self.batch_size, self.tokenize, self.norm, self.ctx, self.partial = batch_size, tokenize, norm, ctx, partial

    def run(self, src: Iterable[Sample]) -> Iterator[Batch]:
        buf: list[Sample] = []
        for sample in src:
            if len(buf) == self.batch_size:
                yield collate(buf, self.tokenize, self.norm, self.ctx.counter.pop())
                buf = []
            buf.append(sample)
        if buf and (self.partial or len(buf) == self.batch_size):
            yield collate(buf, self.tokenize, self.norm, self.ctx.counter.pop())
        elif self.ctx.counter.pending:
            worker, _ = worker_info()
            warnings.warn(f"rank {self.ctx.rank} worker {worker}: samples skipped after its last batch, "
                          f"not reported in any batch: {self.ctx.counter.pop()}")


class VideoTextPipeline(wds.DataPipeline):
    """A webdataset pipeline whose stages share a ``StreamContext``; each ``iter()`` starts a new epoch.

    A training pipeline (``per_worker`` set) yields that many batches per worker and epoch. ``resume``
    (a ``LoaderPosition`` dict, set by ``EpochDataLoader``) makes the next epoch, when it is the one
    recorded, start each worker where it stood: the batches it had made are left out, and the raw
    samples behind them are skipped without decoding.
    """

    def __init__(self, *stages, ctx: StreamContext, per_worker: Optional[int] = None,
                 num_workers: int = 0) -> None:
        super().__init__(*stages)
        self.ctx = ctx
        self.next_epoch = 0
        self.per_worker = per_worker  # batches per worker and epoch (training); None: read to the end
        self.num_workers = max(1, num_workers)
        self.resume: Optional[dict] = None

    def __len__(self) -> int:
        if self.per_worker is None:
            raise TypeError("an evaluation pipeline has no length: it reads its shards to the end")
        return self.per_worker * self.num_workers

    def __iter__(self) -> Iterator[Batch]:
        self.ctx.epoch = self.next_epoch
        self.next_epoch += 1  # persistent workers keep this copy and move on by themselves
        resume, self.resume = self.resume, None  # only the first epoch after a restart resumes
        self.ctx.start, done = (0, 0), 0
        if resume is not None and resume["epoch"] == self.ctx.epoch:
            worker, _ = worker_info()
            self.ctx.start, done = tuple(resume["positions"][worker]), resume["batches"][worker]
        stream = self.iterator1()
        return stream if self.per_worker is None else islice(stream, self.per_worker - done)


class EpochDataLoader(DataLoader):
    """A DataLoader over a ``VideoTextPipeline`` that tells it the epoch before each pass.

    Workers that are not persistent get a fresh copy of the dataset every epoch; setting the epoch
    here makes their random streams differ from epoch to epoch.

    Training loaders also know their data position: ``position(consumed)`` is where the stream stands
    once the first ``consumed`` batches of the current epoch were used (a ``LoaderPosition`` dict of
    ints, for checkpoints), and a loader given that dict as ``resume`` continues from there, with
    exactly the batches an uninterrupted run would have had next. A training epoch starts at the first
    ``next()``, not at ``iter()``: Lightning creates the iterator before it restores a checkpoint.
    ``epoch_fn`` (e.g. the trainer's current epoch) names each epoch; without it epochs count up from
    ``start_epoch``.
    """

    def __init__(self, dataset: VideoTextPipeline, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, start_epoch: int = 0,
                 prefetch_factor: Optional[int] = None, resume: Optional[dict] = None,
                 epoch_fn: Optional[Callable[[], int]] = None, **kwargs: Any) -> None:
        # kwargs: other DataLoader options (Lightning re-creates loaders passing sampler=None).
        kwargs.pop("batch_size", None)  # batching happens inside the pipeline
        # The pipeline seeds itself (stream_seed); the loader's own generator keeps each epoch's worker
        # base seed from drawing on torch's global generator, whose draws (dropout) must not depend on
        # how many loaders a run has started, so that a resumed run draws what an uninterrupted one does.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers and num_workers > 0,
                         prefetch_factor=prefetch_factor if num_workers > 0 else None, **kwargs)
        self.start_epoch = start_epoch
        self.epoch = start_epoch
        self.resume = resume
        self.epoch_fn = epoch_fn
        self._start: Optional[dict] = None  # the position the current epoch started from
        self._taken: list[tuple[int, StreamPosition]] = []  # (worker, position after) per batch handed out

    def _next_epoch(self) -> int:
        epoch = self.epoch if self.epoch_fn is None else self.epoch_fn()
        self.epoch = epoch + 1
        self.dataset.next_epoch = epoch
        return epoch

    def __iter__(self) -> Iterator[Batch]:
        if getattr(self.dataset, "per_worker", None) is None:
            self._next_epoch()
            return super().__iter__()  # evaluation: no position to keep
        return self._train_epoch()

    def _train_epoch(self) -> Iterator[Batch]:
        """One training epoch (a generator: it starts at the first ``next()``)."""
        epoch = self._next_epoch()
        workers = max(1, self.num_workers)
        resume = self.resume if self.resume is not None and self.resume["epoch"] == epoch else None
        self.resume = None
        if resume is not None and resume["num_workers"] != workers:
            raise ValueError(f"the checkpoint's data position was recorded with {resume['num_workers']} DataLoader "
                             f"worker(s) and this run has {self.num_workers}: resume with --data.init_args.num_workers "
                             f"{resume['num_workers']}, or from a checkpoint written at the end of an epoch")
        self._start = resume or {"epoch": epoch, "num_workers": workers, "batches": [0] * workers,
                                 "positions": [[0, 0]] * workers}
        self._taken = []
        self.dataset.resume = resume
        batches = super().__iter__()  # workers start here, each with its copy of the dataset and `resume`
        self.dataset.resume = None
        yield from self._in_order(batches, sum(self._start["batches"]), workers)

    def _in_order(self, batches: Iterator[PositionedBatch], first: int, workers: int) -> Iterator[Batch]:
        """Unwrap ``PositionedBatch``es in the order of an uninterrupted epoch: batch ``i`` from worker ``i % W``.

        A DataLoader takes its workers in turn from worker 0, which a resumed epoch must not: it holds
        back the few batches that arrive before their turn.
        """
        waiting: dict[int, deque[PositionedBatch]] = {w: deque() for w in range(workers)}
        index = first
        for item in batches:
            waiting[item.worker].append(item)
            while waiting[index % workers]:
                item = waiting[index % workers].popleft()
                self._taken.append((item.worker, tuple(item.position)))
                index += 1
                yield item.batch
        for worker in range(workers):  # unreachable when every worker makes its share; never drop data
            for item in waiting[worker]:
                self._taken.append((item.worker, tuple(item.position)))
                yield item.batch

    def position(self, consumed: int) -> Optional[dict]:
        """The ``LoaderPosition`` after the first ``consumed`` batches of the current epoch (None before
        the first epoch starts): ``{"epoch", "num_workers", "batches": [per worker], "positions": [[raw,
        taken] per worker]}``, plain ints so that it can ride in a checkpoint."""
        if self._start is None:
            return None
        batches = list(self._start["batches"])
        positions = [list(p) for p in self._start["positions"]]
        for worker, pos in self._taken[: max(0, consumed - sum(self._start["batches"]))]:
            batches[worker] += 1
            positions[worker] = list(pos)
        return {**self._start, "batches": batches, "positions": positions}


def resolve_datasets(shards: Union[ShardSpec, Sequence[ShardSpec]], weights: Optional[Sequence[float]]
                     ) -> tuple[list[list[str]], list[float]]:
    """Shard URLs per dataset: with ``weights``, each entry of ``shards`` is one dataset; else one dataset."""
    if weights is None:
        return [expand_shards(shards)], [1.0]
    specs = [shards] if isinstance(shards, str) else list(shards)
    if len(specs) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(specs)} datasets: give one weight per shard spec")
    return [expand_shards(s) for s in specs], [float(w) for w in weights]


def build_train_dataset(
    shards: Union[ShardSpec, Sequence[ShardSpec]],
    tokenizer: HFTokenizer,
    cfg: ClipConfig,
    *,
    batch_size: int,
    batches_per_epoch: int,
    num_workers: int = 0,
    weights: Optional[Sequence[float]] = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    rank: Optional[int] = None,
    max_consecutive_skips: int = 10_000,
    positioned: bool = False,
) -> VideoTextPipeline:
    """The training pipeline of one rank: ``ceil(batches_per_epoch / num_workers)`` batches per worker.

    It yields ``Batch``es, or with ``positioned`` the ``PositionedBatch``es an ``EpochDataLoader`` needs
    to know its data position.
    """
    datasets, weights = resolve_datasets(shards, weights)
    rank = dist_info()[0] if rank is None else rank
    ctx = StreamContext(seed, rank, 1)
    per_worker = math.ceil(batches_per_epoch / max(1, num_workers))
    return VideoTextPipeline(
        TrainSource(datasets, weights, ctx, max_empty_shards=min(max_consecutive_skips, 1000)),
        ShuffleStage(shuffle_buffer, ctx) if shuffle_buffer > 1 else None,
        RawPositionStage(ctx),
        ProcessStage(cfg, True, ctx, max_consecutive_skips),
        SamplePositionStage(ctx),
        BatchStage(batch_size, Tokenize(tokenizer, cfg.max_text_len), cfg.norm, ctx, partial=False),
        BatchPositionStage(ctx) if positioned else None,
        ctx=ctx,
        per_worker=per_worker,
        num_workers=num_workers,
    )


def build_eval_dataset(
    shards: Union[ShardSpec, Sequence[ShardSpec]],
    tokenizer: HFTokenizer,
    cfg: ClipConfig,
    *,
    batch_size: int,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> VideoTextPipeline:
    """The evaluation pipeline of one rank: its share of every sample, once, in shard order."""
    specs = [shards] if isinstance(shards, str) else list(shards)
    urls = [u for spec in specs for u in expand_shards(spec)]
    if rank is None or world_size is None:
        rank, world_size = dist_info()
    ctx = StreamContext(0, rank, world_size)
    return VideoTextPipeline(
        EvalSource(urls, ctx),
        RawPositionStage(ctx),
        ProcessStage(cfg, False, ctx, None),
        BatchStage(batch_size, Tokenize(tokenizer, cfg.max_text_len), cfg.norm, ctx, partial=True),
        ctx=ctx,
    )


def build_train_loader(shards: Union[ShardSpec, Sequence[ShardSpec]], tokenizer: HFTokenizer,
                       cfg: ClipConfig, *, batch_size: int, batches_per_epoch: int, num_workers: int = 0,
                       weights: Optional[Sequence[float]] = None, shuffle_buffer: int = 1000, seed: int = 0,
                       rank: Optional[int] = None, pin_memory: bool = False, persistent_workers: bool = False,
                       start_epoch: int = 0, max_consecutive_skips: int = 10_000,
                       resume: Optional[dict] = None) -> EpochDataLoader:
    """A DataLoader yielding training ``Batch``es: a fixed ``len()`` per epoch on every rank.

    ``shards`` is one dataset (a spec or a list of shard URLs), or, with ``weights``, a list of
    datasets (one spec each) mixed sample by sample with those weights. ``resume``: a position from
    ``EpochDataLoader.position`` to continue from (same data settings and ``num_workers``).
    """
    dataset = build_train_dataset(shards, tokenizer, cfg, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                                  num_workers=num_workers, weights=weights, shuffle_buffer=shuffle_buffer,
                                  seed=seed, rank=rank, max_consecutive_skips=max_consecutive_skips, positioned=True)
    return EpochDataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                           persistent_workers=persistent_workers, start_epoch=start_epoch, resume=resume)


def build_eval_loader(shards: Union[ShardSpec, Sequence[ShardSpec]], tokenizer: HFTokenizer, cfg: ClipConfig, *,
                      batch_size: int, num_workers: int = 0, rank: Optional[int] = None,
                      world_size: Optional[int] = None, pin_memory: bool = False,
                      persistent_workers: bool = False) -> EpochDataLoader:
    """A DataLoader yielding evaluation ``Batch``es: every sample once across ranks and workers."""
    dataset = build_eval_dataset(shards, tokenizer, cfg, batch_size=batch_size, rank=rank, world_size=world_size)
    return EpochDataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                           persistent_workers=persistent_workers)
