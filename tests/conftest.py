"""Shared test fixtures: a tokenizer, tiny synthetic shards, clips that encode their frame index, and
shards in video2dataset's layout or full of faults. Everything is written once per session, small."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `vl` records its classes' options in a cache (vl.known_options); the suite keeps its own, never the user's.
if "VL_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["VL_CACHE_DIR"] = tempfile.mkdtemp(prefix="vl-test-cache-")
# The same floating-point kernels on every x86-64 machine: PyTorch picks its vectorised kernels, MKL its
# BLAS code path and oneDNN its JIT kernels by the CPU's instruction set, so an AVX-512 machine and an
# AVX2 one round differently and a few hundred training steps of the quality tests end in different
# models. Pinned to AVX2 (every x86-64 CPU of the last ten years has it; on AMD EPYC with AVX-512 the
# pinned kernels ran as fast). Set before torch is imported; subprocesses and data workers inherit it.
if platform.machine().lower() in {"x86_64", "amd64"}:
    for _name, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        os.environ.setdefault(_name, _value)

LEVEL0, LEVEL_STEP = 16, 7  # frame i of an indexed clip is uniform grey at LEVEL0 + LEVEL_STEP * i


def encode_indexed_clip(num_frames: int = 24, fps: int = 8, width: int = 64, height: int = 48) -> bytes:
    """An mp4 whose frame i is uniform grey ``LEVEL0 + LEVEL_STEP * i``, so decoded frames reveal their index."""
    from datapipes.synth import encode_mp4

    if LEVEL0 + LEVEL_STEP * (num_frames - 1) > 255:
        raise ValueError("too many frames to encode their index as a grey level")
    levels = LEVEL0 + LEVEL_STEP * np.arange(num_frames)
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)
    return encode_mp4(np.ascontiguousarray(frames), fps)


def frame_index(frame: np.ndarray) -> int:
    """The index an indexed clip's frame encodes (frame: (H, W, 3) uint8 or (3, H, W) float in [0, 255])."""
    return int(round((float(np.asarray(frame).mean()) - LEVEL0) / LEVEL_STEP))


@contextlib.contextmanager
def noisy_padded_tokens(encoder, seed: int):
    """Context: ``encoder.forward_features`` adds large noise to the tokens of padded frames, as if the
    encoder put anything there; a result that ignores padded frames (pooling, fusion, losses) cannot change.
    The noise comes from its own generator (``seed``), so the global RNG (VTM negatives, MLM masking)
    draws the same either way."""
    import torch

    real = encoder.forward_features

    def forward_features(video, mask=None, frame_mask=None):
        tokens = real(video, mask, frame_mask)
        keep = encoder.token_keep(frame_mask, mask)
        if keep is None:
            return tokens
        noise = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(seed)) * 10.0
        return torch.where(keep[..., None], tokens, tokens + noise)

    encoder.forward_features = forward_features
    try:
        yield
    finally:
        del encoder.forward_features


def jpeg_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    """A small random JPEG."""
    from PIL import Image

    arr = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def save_as_dall_e_pickle(encoder, path: Path | str) -> None:
    """torch.save a ``vl.models.dalle.DalleEncoder`` as OpenAI's encoder.pkl is pickled: its classes named from
    the ``dall_e`` package (stand-in modules while saving; the classes and ``sys.modules`` restored after)."""
    import sys
    import types

    import torch

    from vl.models import dalle

    package, enc_mod, utils_mod = (types.ModuleType(n) for n in ("dall_e", "dall_e.encoder", "dall_e.utils"))
    enc_mod.Encoder, enc_mod.EncoderBlock, utils_mod.Conv2d = dalle.DalleEncoder, dalle.DalleEncoderBlock, dalle.DalleConv2d
    renames = ((dalle.DalleEncoder, "dall_e.encoder", "Encoder"), (dalle.DalleEncoderBlock, "dall_e.encoder", "EncoderBlock"),
               (dalle.DalleConv2d, "dall_e.utils", "Conv2d"))
    original = [(cls, cls.__module__, cls.__qualname__) for cls, _, _ in renames]
    saved = {n: sys.modules.get(n) for n in ("dall_e", "dall_e.encoder", "dall_e.utils")}
    try:
        sys.modules.update({"dall_e": package, "dall_e.encoder": enc_mod, "dall_e.utils": utils_mod})
        for cls, module, name in renames:
            cls.__module__, cls.__qualname__ = module, name
        torch.save(encoder, path)
    finally:
        for cls, module, name in original:
            cls.__module__, cls.__qualname__ = module, name
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_tar(path: Path | str, samples: list[dict]) -> str:
    """Write samples ``{"__key__", ext: bytes|str}`` to one tar with webdataset's TarWriter; returns the path."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def good_sample(key: str, caption: str = "a grey clip gets brighter", **meta) -> dict:
    """A valid sample with an indexed clip, caption and metadata."""
    return {"__key__": key, "mp4": encode_indexed_clip(), "txt": caption,
            "json": json.dumps({"status": "success", **meta}).encode()}


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged MiniLM WordPiece tokenizer (offline)."""
    from vl.models.hub import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> dict:
    """Tiny synthetic shards: 48 train clips in 3 shards, 12 val, 12 test (8 frames of 32x32 at 8 fps)."""
    from datapipes.synth import SynthConfig, write_synth

    out = tmp_path_factory.mktemp("synth")
    info = write_synth(str(out), {"train": 48, "val": 12, "test": 12}, SynthConfig(frames=8, size=32, fps=8),
                       maxcount=16, workers=1, progress=False)
    return {"dir": str(out), **{k: v["path"] for k, v in info["splits"].items()}}


@pytest.fixture(scope="session")
def indexed_clip() -> Callable[..., bytes]:
    """``encode_indexed_clip`` as a fixture."""
    return encode_indexed_clip


@pytest.fixture(scope="session")
def v2d_shards(tmp_path_factory) -> dict:
    """Shards as video2dataset writes them: ``{shard:05d}.tar`` with 9-digit keys, ``_stats.json`` beside,
    ffprobe metadata in ``video_metadata`` and failed downloads present as json (+txt) without mp4."""
    out = tmp_path_factory.mktemp("v2d")
    clip = encode_indexed_clip(width=64, height=48)
    expected, failed = [], []
    for shard in range(2):
        samples = []
        for i in range(5):
            key = f"{shard:05d}{i:04d}"
            meta = {"url": f"https://example.com/{key}.mp4", "key": key, "caption": f"clip number {key}",
                    "status": "success", "error_message": None}
            if i == 2:
                meta.update(status="failed_to_download", error_message="HTTP Error 404: Not Found")
                samples.append({"__key__": key, "txt": meta["caption"], "json": json.dumps(meta).encode()})
                failed.append(key)
                continue
            meta["video_metadata"] = {"streams": [{"codec_type": "video", "width": 64, "height": 48}],
                                      "format": {"duration": "3.0"}}
            samples.append({"__key__": key, "mp4": clip, "txt": meta["caption"], "json": json.dumps(meta).encode()})
            expected.append(key)
        write_tar(out / f"{shard:05d}.tar", samples)
        (out / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 5, "successes": 4, "failed_to_download": 1}))
    return {"dir": str(out), "pattern": str(out / "{00000..00001}.tar"), "keys": expected, "failed": failed}


FAULTS = {
    # key -> skip reason counted by the pipeline (None: usable)
    "corrupt": "decode_error",
    "zerobyte": "empty_file",
    "nocaption": "no_caption",
    "badutf8": "bad_text_encoding",
    "failed": "status_not_success",
    "novideo": "no_video",
    "badjson": "bad_metadata",
    "short": None,  # 3 frames where 8 are asked for: padded, frame_mask marks the padding
    "imageasvideo": None,  # JPEG bytes in KEY.mp4: read as a 1-frame clip (skipped with allow_images=False)
}


@pytest.fixture(scope="session")
def fault_shards(tmp_path_factory) -> dict:
    """A shard holding one sample per fault of ``FAULTS`` plus 3 good ones, a truncated shard, a good shard."""
    out = tmp_path_factory.mktemp("faults")
    ok = {"status": "success"}
    samples = [
        good_sample("good0"),
        {"__key__": "corrupt", "mp4": os.urandom(4000), "txt": "noise", "json": json.dumps(ok).encode()},
        {"__key__": "zerobyte", "mp4": b"", "txt": "nothing", "json": json.dumps(ok).encode()},
        {"__key__": "nocaption", "mp4": encode_indexed_clip(), "json": json.dumps(ok).encode()},
        {"__key__": "badutf8", "mp4": encode_indexed_clip(), "txt": b"caf\xe9 \xff\xfe", "json": json.dumps(ok).encode()},
        {"__key__": "failed", "json": json.dumps({"status": "failed_to_download", "error_message": "404"}).encode()},
        {"__key__": "novideo", "txt": "a caption without video", "json": json.dumps(ok).encode()},
        {"__key__": "badjson", "mp4": encode_indexed_clip(), "txt": "x", "json": b"{not json"},
        {"__key__": "short", "mp4": encode_indexed_clip(num_frames=3), "txt": "three frames", "json": json.dumps(ok).encode()},
        {"__key__": "imageasvideo", "mp4": jpeg_bytes(), "txt": "a still", "json": json.dumps(ok).encode()},
        good_sample("good1"),
        good_sample("good2"),
    ]
    faults = write_tar(out / "faults-000000.tar", samples)
    good = write_tar(out / "good-000000.tar", [good_sample(f"g{i}") for i in range(4)])
    full = write_tar(out / "full.tar", [good_sample(f"t{i}") for i in range(6)])
    data = Path(full).read_bytes()
    truncated = out / "truncated-000000.tar"
    truncated.write_bytes(data[: len(data) * 2 // 3])  # cuts the 5th sample's mp4 in the middle
    os.remove(full)
    return {"faults": faults, "good": good, "truncated": str(truncated), "dir": str(out)}


# `make test` runs files on two workers (`-n 2 --dist loadfile --no-loadscope-reorder`), handing them out in
# collection order (xdist would otherwise order files by their number of tests). The files that train models
# for minutes go first, so that the short files fill in behind them instead of the long ones starting last
# and leaving one worker idle at the end.
LONGEST_FIRST = ("test_tasks_quality.py", "test_temporal.py", "test_quality.py", "test_cli.py", "test_readme.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file, and of the other files, is kept
