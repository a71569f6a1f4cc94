"""DDP on CPU (gloo, 2 processes): the contrastive loss gathered across ranks equals the single-process
loss on the same global batch, and so do the parameter gradients after DDP's averaging."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vl.objectives import VTCLoss, caption_keys

WORLD = 2
GLOBAL_BATCH = 8
DIM = 6


def _inputs():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    text = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    w_v = torch.randn(DIM, DIM, generator=g)
    w_t = torch.randn(DIM, DIM, generator=g)
    return video, text, w_v, w_t


# Multi-positive VTC: clips 0 and 5 (on different ranks) share a caption; clip 6 lists clip 2's among its own.
TEXTS = ["a cat", "a dog", "a bird", "a fish", "a cow", "a cat", "a fox", "an owl"]
REFERENCES = [[t] for t in TEXTS[:6]] + [["a fox", "a bird", "a big bird"], ["an owl"]]


def _loss_and_grads(video, text, w_v, w_t, part=slice(None), multi_positive=False):
    w_v = w_v.clone().requires_grad_(True)
    w_t = w_t.clone().requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)
    keys = caption_keys(TEXTS[part], REFERENCES[part]) if multi_positive else None
    out = VTCLoss()(F.normalize(video[part] @ w_v, dim=-1), F.normalize(text[part] @ w_t, dim=-1), scale, keys)
    out["vtc_loss"].backward()
    return out["vtc_loss"].detach(), w_v.grad, w_t.grad


def _worker(rank: int, port: int, results, multi_positive: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        video, text, w_v, w_t = _inputs()
        part = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        loss, g_v, g_t = _loss_and_grads(video, text, w_v, w_t, part, multi_positive)
        for g in (g_v, g_t):  # what DDP does to parameter gradients
            dist.all_reduce(g)
            g /= WORLD
        results[rank] = (loss, g_v, g_t)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("multi_positive", [False, True], ids=["clip_loss", "multi_positive"])
def test_vtc_gathered_across_ranks_equals_single_process(multi_positive):
    ref_loss, ref_gv, ref_gt = _loss_and_grads(*_inputs(), multi_positive=multi_positive)
    if multi_positive:  # the cross-rank duplicate matters: without keys the loss differs
        assert not torch.allclose(ref_loss, _loss_and_grads(*_inputs())[0])
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results, multi_positive), nprocs=WORLD, join=True)
    assert sorted(results.keys()) == list(range(WORLD))
    for rank in range(WORLD):
        loss, g_v, g_t = results[rank]
        print(f"rank {rank}: loss {loss.item():.6f} vs single process {ref_loss.item():.6f}")
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_v, ref_gv, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_t, ref_gt, rtol=1e-4, atol=1e-6)
