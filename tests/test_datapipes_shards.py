"""Shard lists (braces, globs, pipe:, fsspec URLs), video2dataset's layout, dataset mixing, epochs."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from conftest import good_sample, write_tar
from fsspec.implementations.memory import MemoryFileSystem

from datapipes.pipeline import ClipConfig, build_eval_loader, build_train_loader
from datapipes.shards import expand_shards, mix_streams

CFG = ClipConfig(num_frames=4, size=32, max_text_len=8)


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b.keys]


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> dict:
    """Three shards of 2 samples each: keys s{shard}k{i}."""
    out = tmp_path_factory.mktemp("small")
    paths = [write_tar(out / f"part-{s:03d}.tar", [good_sample(f"s{s}k{i}") for i in range(2)]) for s in range(3)]
    return {"dir": out, "paths": paths, "keys": sorted(f"s{s}k{i}" for s in range(3) for i in range(2))}


def test_expand_braces_globs_lists_and_separators(small_shards):
    d, paths = small_shards["dir"], small_shards["paths"]
    assert expand_shards(f"{d}/part-{{000..002}}.tar") == paths
    assert expand_shards(f"{d}/part-*.tar") == paths
    assert expand_shards(f"{paths[0]}::{d}/part-{{001..002}}.tar") == paths
    assert expand_shards([paths[2], paths[0]]) == [paths[2], paths[0]]
    assert expand_shards("pipe:cat x.tar") == ["pipe:cat x.tar"]
    assert expand_shards("https://host/a-{0..1}.tar") == ["https://host/a-0.tar", "https://host/a-1.tar"]


def test_bad_shard_lists_fail_at_start(small_shards, tokenizer):
    d = small_shards["dir"]
    with pytest.raises(ValueError, match="empty"):
        expand_shards([])
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_shards(f"{d}/nothing-*.tar")
    with pytest.raises(FileNotFoundError, match="1 of 4 shards do not exist"):
        expand_shards(f"{d}/part-{{000..003}}.tar")
    with pytest.raises(FileNotFoundError):
        build_train_loader(f"{d}/missing.tar", tokenizer, CFG, batch_size=2, batches_per_epoch=1)
    with pytest.raises(ValueError):
        build_eval_loader([], tokenizer, CFG, batch_size=2)


def test_unknown_remote_protocol_fails_at_start():
    with pytest.raises(ImportError, match="pipe:"):
        expand_shards("nosuchproto://bucket/a.tar")


def test_pipe_command_shards(small_shards, tokenizer):
    url = f"pipe:cat {small_shards['paths'][1]}"
    assert _keys(build_eval_loader(url, tokenizer, CFG, batch_size=4)) == ["s1k0", "s1k1"]


def test_failing_pipe_is_counted_not_fatal(small_shards, tokenizer):
    loader = build_eval_loader([small_shards["paths"][0], "pipe:exit 3"], tokenizer, CFG, batch_size=8)
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == ["s0k0", "s0k1"]
    skipped = Counter()
    for b in batches:
        skipped.update(b.skipped)
    assert skipped["empty_shard"] + skipped["shard_read_error"] >= 1


def test_fsspec_memory_urls_and_globs(small_shards, tokenizer):
    fs = fsspec.filesystem("memory")
    for p in small_shards["paths"]:
        fs.pipe(f"/bucket/{Path(p).name}", Path(p).read_bytes())
    try:
        urls = expand_shards("memory://bucket/part-*.tar")
        assert len(urls) == 3 and all(u.startswith("memory://") and u.endswith(f"/bucket/part-{i:03d}.tar")
                                      for i, u in enumerate(urls))
        assert sorted(_keys(build_eval_loader(urls, tokenizer, CFG, batch_size=4))) == small_shards["keys"]
    finally:
        fs.rm("/bucket", recursive=True)


class FakeS3(MemoryFileSystem):
    """An in-memory stand-in for s3fs: the s3:// path goes through fsspec like a real bucket would."""

    protocol = ("s3", "s3a")
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        for prefix in ("s3://", "s3a://"):
            path = path[len(prefix):] if path.startswith(prefix) else path
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return "s3://" + name.lstrip("/")


def test_s3_urls_go_through_fsspec(small_shards, tokenizer, monkeypatch):
    import importlib

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "s3", FakeS3)
    fs = FakeS3()
    for p in small_shards["paths"]:
        fs.pipe(f"bucket/data/{Path(p).name}", Path(p).read_bytes())
    urls = expand_shards("s3://bucket/data/part-{000..002}.tar")
    assert urls[0] == "s3://bucket/data/part-000.tar"
    assert sorted(_keys(build_eval_loader(urls, tokenizer, CFG, batch_size=4))) == small_shards["keys"]
    assert expand_shards("s3://bucket/data/*.tar") == urls  # remote glob


def test_http_urls_from_a_local_server(small_shards, tokenizer, tmp_path):
    pytest.importorskip("aiohttp")
    for p in small_shards["paths"]:
        shutil.copy(p, tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        loader = build_eval_loader(f"{base}/part-{{000..002}}.tar", tokenizer, CFG, batch_size=4)
        assert sorted(_keys(loader)) == small_shards["keys"]
        missing = list(build_eval_loader(f"{base}/part-000.tar::{base}/gone.tar", tokenizer, CFG, batch_size=4))
        assert sum(b.skipped.get("shard_open_error", 0) for b in missing) == 1  # a 404 is counted
    finally:
        server.shutdown()
        server.server_close()


def test_video2dataset_layout_loads_unchanged(v2d_shards, tokenizer):
    batches = list(build_eval_loader(v2d_shards["pattern"], tokenizer, CFG, batch_size=3))
    assert [k for b in batches for k in b.keys] == v2d_shards["keys"]
    assert sum(b.skipped.get("status_not_success", 0) for b in batches) == len(v2d_shards["failed"]) == 2
    assert batches[0].texts[0] == "clip number 000000000"
    assert batches[0].meta[0]["url"].startswith("https://")
    glob_keys = _keys(build_eval_loader(f"{v2d_shards['dir']}/*.tar", tokenizer, CFG, batch_size=3))
    assert glob_keys == v2d_shards["keys"]  # the _stats.json files beside the shards are not read


def test_mix_streams_follows_weights():
    def endless(tag):
        while True:
            yield {"tag": tag}

    draws = [s["tag"] for s, _ in zip(mix_streams([endless("a"), endless("b")], [0.7, 0.3], seed=0), range(4000))]
    assert abs(draws.count("a") / 4000 - 0.7) < 0.03
    with pytest.raises(ValueError, match="one weight per dataset"):
        next(mix_streams([endless("a")], [0.5, 0.5], seed=0))


def test_weighted_datasets_in_the_train_loader(tmp_path, tokenizer):
    a = write_tar(tmp_path / "a.tar", [good_sample(f"a{i}") for i in range(4)])
    b = write_tar(tmp_path / "b.tar", [good_sample(f"b{i}") for i in range(4)])
    loader = build_train_loader([a, b], tokenizer, CFG, weights=[0.8, 0.2], batch_size=10, batches_per_epoch=12,
                                shuffle_buffer=20)
    keys = _keys(loader)
    assert len(keys) == 120
    assert 0.65 < sum(k.startswith("a") for k in keys) / len(keys) < 0.95
    with pytest.raises(ValueError, match="2 weights for 1 datasets"):
        build_train_loader(a, tokenizer, CFG, weights=[0.5, 0.5], batch_size=2, batches_per_epoch=1)


@pytest.mark.parametrize("persistent", [False, True])
def test_train_epochs_have_fixed_length_and_new_draws(small_shards, tokenizer, persistent):
    loader = build_train_loader(small_shards["paths"], tokenizer, CFG, batch_size=3, batches_per_epoch=5,
                                num_workers=2, seed=1, persistent_workers=persistent)
    assert len(loader) == 6  # 5 rounded up to a multiple of the 2 workers
    epochs = [[tuple(b.keys) for b in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [6, 6]
    assert all(len(keys) == 3 for e in epochs for keys in e)  # no partial batch in training
    assert epochs[0] != epochs[1]  # a new epoch draws a new stream, with or without persistent workers
    again = build_train_loader(small_shards["paths"], tokenizer, CFG, batch_size=3, batches_per_epoch=5,
                               num_workers=2, seed=1, persistent_workers=persistent)
    assert [tuple(b.keys) for b in again] == epochs[0]  # same seed, same stream


def test_random_caption_in_training(tmp_path, tokenizer):
    import json

    captions = [f"caption number {i}" for i in range(5)]
    sample = good_sample("multi")
    sample["json"] = json.dumps({"captions": captions}).encode()
    shard = write_tar(tmp_path / "m.tar", [sample])
    loader = build_train_loader(shard, tokenizer, CFG, batch_size=4, batches_per_epoch=5, shuffle_buffer=1)
    drawn = [c for b in loader for c in b.texts]
    assert set(drawn) <= set(captions) and len(set(drawn)) >= 3
    assert all(b.references == [captions] * 4 and b.text_video_index is None for b in loader)


def test_keys_with_dots_load(tmp_path, tokenizer):
    """`a.b.mp4`: the key is the name minus the longest known extension, not the text before the first dot."""
    samples = [good_sample("clip.v2", caption="a dotted key"), good_sample("plain"),
               good_sample("videos/2021.05.01.take.3", caption="a dated key")]
    samples.append({"__key__": "notes.v1", "xyz": b"unknown extension"})  # no known suffix: webdataset's split
    shard = write_tar(tmp_path / "dots.tar", samples)
    batches = list(build_eval_loader(shard, tokenizer, CFG, batch_size=8))
    keys = [k for b in batches for k in b.keys]
    assert keys == ["clip.v2", "plain", "videos/2021.05.01.take.3"]
    captions = {k: c for b in batches for k, c in zip(b.keys, b.texts)}
    assert captions["clip.v2"] == "a dotted key" and captions["videos/2021.05.01.take.3"] == "a dated key"
    skipped = Counter()
    for b in batches:
        skipped.update(b.skipped)
    assert skipped == {"no_video": 1}  # the member with an unknown extension is counted, not lost


def test_member_without_extension_is_counted(tmp_path, tokenizer):
    import io
    import tarfile

    shard = tmp_path / "noext.tar"
    write_tar(shard, [good_sample("ok")])
    data = shard.read_bytes()
    with tarfile.open(shard, "w") as tar:  # the good sample, then a file with no extension
        with tarfile.open(fileobj=io.BytesIO(data)) as src:
            for member in src.getmembers():
                tar.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    batches = list(build_eval_loader(str(shard), tokenizer, CFG, batch_size=8))
    assert [k for b in batches for k in b.keys] == ["ok"]
    assert sum(b.skipped.get("bad_file_name", 0) for b in batches) == 1


@pytest.mark.parametrize("spec", ["", "  ", "DIR", ["DIR"], ["SHARD", ""]])
def test_directory_or_empty_spec_is_a_one_line_error(small_shards, tokenizer, spec):
    """A folder or an empty string is refused at start, in one line naming the spec."""
    d, shard = str(small_shards["dir"]), small_shards["paths"][0]
    is_folder = "DIR" in str(spec)

    def fill(s: str) -> str:
        return s.replace("DIR", d).replace("SHARD", shard)

    spec = [fill(s) for s in spec] if isinstance(spec, list) else fill(spec)
    with pytest.raises(ValueError) as info:
        build_train_loader(spec, tokenizer, CFG, batch_size=2, batches_per_epoch=1)
    message = str(info.value)
    assert "\n" not in message and repr(spec) in message
    assert ("directory" in message) == is_folder and ("empty" in message) != is_folder
