"""Rank and worker splitting: evaluation covers every sample exactly once over 2 ranks x 2 workers;
training ranks run the same number of batches on different streams."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import good_sample, write_tar

from datapipes.pipeline import ClipConfig, build_eval_loader, build_train_loader

CFG = ClipConfig(num_frames=2, size=32, max_text_len=8)


def _shards(out: Path, num_shards: int, per_shard: int) -> tuple[list[str], list[str]]:
    paths, keys = [], []
    for s in range(num_shards):
        samples = [good_sample(f"s{s}i{i}") for i in range(per_shard)]
        paths.append(write_tar(out / f"ddp-{num_shards}-{s:03d}.tar", samples))
        keys += [x["__key__"] for x in samples]
    return paths, keys


@pytest.mark.parametrize("num_shards,per_shard", [(6, 3), (2, 7)], ids=["split-by-shard", "split-by-sample"])
def test_eval_covers_every_sample_once_over_2_ranks_x_2_workers(tmp_path, tokenizer, num_shards, per_shard):
    paths, keys = _shards(tmp_path, num_shards, per_shard)
    seen, per_rank = Counter(), []
    for rank in range(2):
        loader = build_eval_loader(paths, tokenizer, CFG, batch_size=2, num_workers=2, rank=rank, world_size=2)
        rank_keys = [k for b in loader for k in b.keys]
        per_rank.append(rank_keys)
        seen.update(rank_keys)
    assert sorted(seen) == sorted(keys) and set(seen.values()) == {1}
    assert all(len(k) >= len(keys) // 4 for k in per_rank)  # every rank did a fair share


def test_train_ranks_stay_in_step_on_different_streams(tmp_path, tokenizer):
    paths, _ = _shards(tmp_path, 3, 4)
    bad = write_tar(tmp_path / "bad.tar", [{"__key__": f"x{i}", "mp4": b"", "txt": "x"} for i in range(4)])
    streams = []
    for rank in range(2):
        loader = build_train_loader(paths + [bad], tokenizer, CFG, batch_size=3, batches_per_epoch=4,
                                    num_workers=2, rank=rank, shuffle_buffer=4)
        batches = list(loader)
        assert len(batches) == len(loader) == 4  # the same on every rank, skips or not
        streams.append([k for b in batches for k in b.keys])
    assert streams[0] != streams[1]


def _ddp_rank(rank: int, world: int, init_file: str, shards: list[str], tokenizer, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loader = build_eval_loader(shards, tokenizer, CFG, batch_size=2, num_workers=2)  # rank from the group
        keys = [k for b in loader for k in b.keys]
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, keys)
        if rank == 0:
            Path(out_dir, "keys.json").write_text(json.dumps(gathered))
    finally:
        torch.distributed.destroy_process_group()


def test_eval_split_under_a_real_process_group(tmp_path, tokenizer):
    paths, keys = _shards(tmp_path, 5, 3)
    args = (2, str(tmp_path / "init"), paths, tokenizer, str(tmp_path))
    # fork: the ranks start in a second instead of re-importing torch and transformers
    torch.multiprocessing.start_processes(_ddp_rank, args=args, nprocs=2, join=True, start_method="fork")
    gathered = json.loads((tmp_path / "keys.json").read_text())
    assert len(gathered) == 2 and all(gathered)
    flat = [k for rank_keys in gathered for k in rank_keys]
    assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))
