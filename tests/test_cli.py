"""The `vl` command end to end: help, config errors, a short `vl fit` on tiny shards, then resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "pretrain" / "demo.yaml"


def run_vl(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "vl.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_config(tmp: Path, synth: dict, **trainer) -> Path:
    """demo.yaml pointed at the tiny session shards, with every output under `tmp`."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["data"]["init_args"].update(
        root=None, train_shards=synth["train"], val_shards=synth["val"], test_shards=synth["test"], batch_size=4,
        eval_batch_size=6, num_workers=0, batches_per_epoch=2, num_frames=4, frame_size=32,
    )
    cfg["trainer"].update(default_root_dir=str(tmp), check_val_every_n_epoch=1, log_every_n_steps=1, **trainer)
    # sparse on every step: a final dense phase, a share of max_steps, would start at another step in a run cut
    # short by a smaller max_steps than in the run it is compared with
    cfg["model"]["init_args"]["objectives"]["token_sparsity"]["dense_final_steps"] = 0
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp)
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp / "checkpoints")
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_help_lists_every_command():
    out = run_vl("--help")
    assert out.returncode == 0
    for command in ("fit", "validate", "test", "predict", "data"):
        assert f"  {command} " in out.stdout


def test_unknown_command_fails():
    out = run_vl("fitt")
    assert out.returncode == 2 and "unknown command 'fitt'" in out.stderr


def test_misspelled_config_key_names_the_key(tmp_path, synth_dir):
    cfg = yaml.safe_load(tiny_config(tmp_path, synth_dir).read_text())
    cfg["model"]["init_args"]["optim"]["lrr"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = run_vl("fit", "-c", str(bad))
    print(out.stderr)
    assert out.returncode == 2
    assert "lrr" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3


def test_wrong_type_names_the_key(tmp_path, synth_dir):
    out = run_vl("fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--trainer.max_steps", "many")
    print(out.stderr)
    assert out.returncode == 2
    assert "max_steps" in out.stderr and "Traceback" not in out.stderr


def test_misspelled_cli_override_names_the_key(tmp_path, synth_dir):
    out = run_vl("fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--trainer.max_stpes", "3")
    assert out.returncode == 2 and "max_stpes" in out.stderr and "Traceback" not in out.stderr


def test_unknown_model_option_names_the_key(tmp_path, synth_dir):
    out = run_vl("fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--model.init_args.video", "{temporl: divided}")
    print(out.stderr[-2000:])
    assert out.returncode != 0
    assert "temporl" in out.stderr


@pytest.mark.timeout(900)
def test_fit_then_resume_continues_the_step(tmp_path, synth_dir):
    cfg = tiny_config(tmp_path, synth_dir, max_steps=4)
    first = run_vl("fit", "-c", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert "vl_model_config" in ckpt and ckpt["vl_preprocess"]["num_frames"] == 4
    assert "val/t2v_R@1" in first.stdout + first.stderr or any(tmp_path.rglob("metrics.csv"))

    second = run_vl("fit", "-c", str(cfg), "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint" in second.stdout + second.stderr
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {6}, "the optimiser state must continue, not restart"
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6

    tested = run_vl("test", "-c", str(cfg), "--ckpt_path", str(last))
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test: text-to-video retrieval over 12 clips" in tested.stdout + tested.stderr
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    assert 0.0 <= metrics["t2v_R@1"] <= 100.0 and metrics["t2v_chance_R@1"] == pytest.approx(100 / 12)
    rows = [json.loads(line) for line in next(tmp_path.rglob("test_predictions.jsonl")).read_text().splitlines()]
    assert len(rows) >= 12 and {"caption", "video", "rank", "top"} <= set(rows[0])
    assert all(1 <= r["rank"] <= 12 and r["caption"] for r in rows)


def vl_in_process(capsys, *args: str) -> tuple[int, str]:
    """`vl ARGS` in this process (no 20 s interpreter start): (exit status, stderr)."""
    from vl.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def no_traceback(err: str) -> bool:
    """No traceback in `err` but those of logging handlers left writing to an earlier test's closed capture."""
    return err.count("Traceback (most recent call last)") == err.count("--- Logging error ---")


def train_rows(run: Path) -> list[tuple[int, str, str]]:
    """(step, epoch, train/loss) of every logged training step in `run`'s metrics.csv files."""
    import csv

    rows = []
    for path in sorted(run.rglob("metrics.csv")):
        rows += [(int(r["step"]), r["epoch"], r["train/loss"]) for r in csv.DictReader(path.open()) if r.get("train/loss")]
    return rows


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, synth_dir, capsys):
    """Stopped inside an epoch and resumed with --ckpt_path last: the same steps, epochs, losses (dropout
    included) and final weights as one uninterrupted run."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(full, synth_dir)), "--trainer.max_steps", "5")
    assert code == 0, err[-2000:]
    cfg = str(tiny_config(cut, synth_dir))
    assert vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "3")[0] == 0  # 3 = epoch 1's first batch
    code, err = vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert code == 0, err[-2000:]

    expected, resumed = train_rows(full), train_rows(cut)
    assert [r[0] for r in expected] == [0, 1, 2, 3, 4]
    assert resumed == expected  # step column, epoch and loss of every step
    weights = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for run in (full, cut)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=1e-6, msg=name)


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, synth_dir, capsys):
    code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--ckpt_path", "last",
                              "--trainer.max_steps", "1")
    assert code == 1
    assert "--ckpt_path last: no last.ckpt in" in err and "leave out --ckpt_path" in err
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # nothing trained


def test_a_checkpoint_recording_earlier_option_names_still_evaluates(tmp_path, synth_dir, capsys):
    """`vl test --ckpt_path` restores a checkpoint's hyper-parameters as the module's arguments: a checkpoint
    that records options under earlier names (``text.pool_type``; a retrieval task's top-level
    ``vtm_weight``) evaluates as the same checkpoint under today's names."""
    from vl.lit.checkpoint import recorded_hparams

    cfg = tiny_config(tmp_path, synth_dir)
    code, err = vl_in_process(capsys, "fit", "-c", str(cfg), "--trainer.max_steps", "1",
                              "--model.init_args.text.pooling", "mean")  # recorded as the config says it
    assert code == 0, err
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["text"]["pooling"] == "mean"
    old = dict(ckpt)
    text = {("pool_type" if k == "pooling" else k): v for k, v in ckpt["hyper_parameters"]["text"].items()}
    old["hyper_parameters"] = {**ckpt["hyper_parameters"], "text": text}
    old["vl_model_config"] = {**ckpt["vl_model_config"], "text": {**ckpt["vl_model_config"]["text"]}}
    old["vl_model_config"]["text"]["pool_type"] = old["vl_model_config"]["text"].pop("pooling")
    torch.save(old, tmp_path / "old.ckpt")

    results = []
    for name in ("last.ckpt", "old.ckpt"):
        path = tmp_path / "checkpoints" / name if name == "last.ckpt" else tmp_path / name
        code, err = vl_in_process(capsys, "test", "-c", str(cfg), "--ckpt_path", str(path))
        assert code == 0, err
        results.append(json.loads(max(tmp_path.rglob("test_metrics.json"), key=lambda p: p.stat().st_mtime).read_text()))
    assert results[0] == results[1]

    retrieval = {"vtc_weight": 1.0, "vtm_weight": 0.5, "vtm_hard_fraction": 0.25, "text": {"pool_type": "cls"},
                 "fusion": {"pool": "mean", "depth": 2}, "optim": {"lr": 1e-4}}
    assert recorded_hparams(retrieval) == {"objectives": {"vtc": 1.0, "vtm": 0.5, "vtm_hard_fraction": 0.25},
                                           "text": {"pooling": "cls"}, "fusion": {"pooling": "mean", "depth": 2},
                                           "optim": {"lr": 1e-4}}


@pytest.mark.parametrize("command", ["test", "validate"])
def test_evaluation_without_weights_is_an_error(tmp_path, synth_dir, capsys, command):
    code, err = vl_in_process(capsys, command, "-c", str(tiny_config(tmp_path, synth_dir)))
    assert code == 1
    assert f"`vl {command}` needs trained weights: give --ckpt_path" in err and "init_from" in err
    assert not list(tmp_path.rglob("test_metrics.json"))


def test_checkpoint_problems_are_one_line_errors(tmp_path, synth_dir, capsys, monkeypatch):
    """Overrides the checkpoint would replace, missing, truncated and non-checkpoint files: one line each
    (`vl: error: ...`) naming the option or the file, no traceback unless VL_DEBUG=1."""
    cfg = str(tiny_config(tmp_path, synth_dir))
    assert vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "1")[0] == 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    truncated, text = tmp_path / "cut.ckpt", tmp_path / "notes.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    text.write_text("not a checkpoint\n")
    cases = {
        ("--ckpt_path", str(last), "--model.init_args.embed_dim", "64"): "--model.init_args.embed_dim 64 cannot apply",
        ("--ckpt_path", str(last), "--model.init_args.video", "{temporal: joint}"): "--model.init_args.video",
        ("--ckpt_path", str(last), "--model.init_args.model", "vl_base"): "--model.init_args.model 'vl_base'",
        ("--ckpt_path", str(tmp_path / "missing.ckpt")): f"checkpoint not found: {tmp_path / 'missing.ckpt'}",
        ("--ckpt_path", str(truncated)): f"{truncated} is a truncated or damaged checkpoint",
        ("--ckpt_path", str(text)): f"{text} is not a checkpoint",
    }
    for args, message in cases.items():
        code, err = vl_in_process(capsys, "test", "-c", cfg, *args)
        errors = [line for line in err.splitlines() if line.startswith("vl: error:")]
        assert code == 1 and len(errors) == 1 and message in errors[0], (args, err[-1500:])
        assert no_traceback(err) and "weights_only" not in err
    monkeypatch.setenv("VL_DEBUG", "1")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        vl_in_process(capsys, "test", "-c", cfg, "--ckpt_path", str(text))


def test_user_errors_are_one_line(tmp_path, synth_dir, capsys):
    cfg = str(tiny_config(tmp_path, synth_dir))
    cases = {
        ("--model.init_args.optim.lr", "-0.1"): "model.init_args.optim.lr must be > 0, got -0.1",
        ("--data.init_args.train_shards", str(tmp_path / "nope-{0..3}.tar")): "4 of 4 shards do not exist",
    }
    for args, message in cases.items():
        code, err = vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "1", *args)
        errors = [line for line in err.splitlines() if line.startswith("vl: error:")]
        assert code == 1 and len(errors) == 1 and message in errors[0], (args, err[-1500:])
        assert no_traceback(err)


def test_misspelled_nested_option_is_named_in_full(tmp_path, synth_dir, capsys):
    code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(tmp_path, synth_dir)),
                              "--model.init_args.optim.lrr", "0.1")
    assert code == 2
    assert "unrecognized arguments: --model.init_args.optim.lrr" in err


def test_usage_documents_vl_debug():
    from vl.cli import _usage

    assert "VL_DEBUG=1" in _usage()


def test_a_callback_the_cli_adds_is_not_added_twice(tmp_path, synth_dir):
    """A config that lists ``vl.lit.SkipCounter`` (which the CLI adds to every run) gets one, not two: two
    would count every skip twice and print the summary twice."""
    from vl.lit.cli import VLLightningCLI
    from vl.lit.data import SkipCounter

    path = tiny_config(tmp_path, synth_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "vl.lit.SkipCounter"})
    path.write_text(yaml.safe_dump(cfg))
    cli = VLLightningCLI(args=["-c", str(path)], run=False)
    assert sum(isinstance(cb, SkipCounter) for cb in cli.trainer.callbacks) == 1
    (tmp_path / "plain").mkdir()
    plain = VLLightningCLI(args=["-c", str(tiny_config(tmp_path / "plain", synth_dir))], run=False)
    assert sum(isinstance(cb, SkipCounter) for cb in plain.trainer.callbacks) == 1


def test_a_run_prints_no_dependency_advertisements_or_deprecations(tmp_path, synth_dir, capsys, caplog):
    """Lightning's "💡 Tip: ... litlogger / litmodels" lines and the FutureWarning of its own use of torch's
    deprecated LeafSpec say nothing about the user's run: a run shows neither. Other messages still pass."""
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--trainer.max_steps", "2")
    assert code == 0, err[-2000:]
    assert "Tip" not in caplog.text and "Tip" not in err
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert "max_steps=2" in caplog.text  # Lightning's own notices about the run are kept


# ---- runs that would overwrite checkpoints, random weights, GPU configs on CPU, help ------------------


def test_a_new_run_does_not_overwrite_an_earlier_runs_checkpoints(tmp_path, synth_dir, capsys, caplog):
    """A checkpoint folder that holds checkpoints: a new run (no --ckpt_path) stops before training with one
    line naming --overwrite and leaves the files alone; with --overwrite it deletes them and trains. A run
    shorter than its validation interval says in one line that no ranked checkpoint exists yet, without
    Lightning's "monitored key not found" or "directory is not empty" warnings."""
    import logging
    import warnings

    cfg = str(tiny_config(tmp_path, synth_dir))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    earlier = folder / "best-step=480.ckpt"
    earlier.write_bytes(b"an earlier run's checkpoint")
    code, err = vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "1")
    errors = [line for line in err.splitlines() if line.startswith("vl: error:")]
    assert code == 1 and len(errors) == 1 and no_traceback(err), err[-2000:]
    assert f"{folder} holds the checkpoints of an earlier run (best-step=480.ckpt)" in errors[0]
    assert "--overwrite" in errors[0] and "--ckpt_path last" in errors[0]
    assert earlier.read_bytes() == b"an earlier run's checkpoint" and not (folder / "last.ckpt").exists()

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        code, err = vl_in_process(capsys, "fit", "-c", cfg, "--trainer.max_steps", "1", "--overwrite")
    assert code == 0, err[-2000:]
    assert not earlier.exists() and "deleted 1 checkpoint(s) of an earlier run" in err
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 1
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "monitored key" in m or "exists and is not empty" in m], messages
    assert caplog.text.count("no validation ran before step 1") == 1


def test_random_weights_are_announced_unless_the_config_says_so(capsys):
    from vl.lit.cli import warn_random_weights
    from vl.lit.pretrain import PretrainModule

    module = PretrainModule(model="vl_tiny")
    warn_random_weights(module, {"init_args": {"model": "vl_tiny"}})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vl: warning: the video encoder (vit_st_tiny) and text encoder")
    assert "start from random weights" in err[0] and "--model.init_args.video.pretrained" in err[0]

    explicit = {"model": "vl_tiny", "video": {"pretrained": None}, "text": {"pretrained": None}}
    warn_random_weights(module, {"init_args": explicit})
    warn_random_weights(module, {"init_args": {"model": "vl_tiny", "init_from": "pretrained.ckpt"}})
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_a_gpu_config_on_a_cpu_machine_says_what_to_pass(tmp_path, synth_dir, capsys):
    code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(tmp_path, synth_dir)), "--trainer.accelerator", "gpu")
    errors = [line for line in err.splitlines() if line.startswith("vl: error:")]
    assert code == 1 and len(errors) == 1 and no_traceback(err), err[-2000:]
    assert "trainer.accelerator: gpu" in errors[0] and "--trainer configs/trainer/cpu.yaml" in errors[0]
    assert (ROOT / "configs" / "trainer" / "cpu.yaml").is_file()


def test_fit_help_says_where_the_model_and_data_options_are(capsys):
    from vl.cli import main

    assert main(["fit", "--help"]) == 0  # LightningCLI's exit is caught to record the text (vl.known_options)
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "`vl fit -c CONFIG --print_config` prints every key of a config" in flat
    assert "--model.help CLASS" in flat and "--overwrite" in flat and "[options]" not in out


def test_typo_errors_name_the_subcommand_and_how_to_see_the_options(tmp_path, synth_dir, capsys):
    code, err = vl_in_process(capsys, "fit", "-c", str(tiny_config(tmp_path, synth_dir)),
                              "--model.init_args.optim.lrr", "0.1")
    lines = [line for line in err.splitlines() if not line.startswith("vl fit: loading")]
    assert code == 2 and len(lines) == 2, err
    assert lines[0] == ("vl fit: error: unrecognized arguments: --model.init_args.optim.lrr "
                        "(did you mean --model.init_args.optim.lr?)")
    assert "--print_config" in lines[1] and "[options]" not in err


# ---- progress: totals where they are knowable --------------------------------------------------------


def test_shard_samples_are_counted_from_tar_headers(synth_dir, tmp_path):
    from datapipes.shards import expand_shards
    from datapipes.shards import count_samples, count_shard_samples

    counts = count_samples(expand_shards(synth_dir["train"]))
    assert [(c.samples, c.media) for c in counts] == [(16, 16)] * 3
    gz = tmp_path / "x.tar.gz"
    gz.write_bytes(b"\x1f\x8b")
    assert count_shard_samples(str(gz)) is None and count_shard_samples("s3://bucket/x.tar") is None
    assert count_samples([synth_dir["val"].replace("{000000..000000}", "000000"), str(gz)]) is None


@pytest.mark.parametrize("num_workers, eval_batch_size", [(0, 5), (2, 5), (2, 4)])
def test_eval_bar_total_is_the_number_of_batches_the_loader_yields(synth_dir, num_workers, eval_batch_size):
    """The counted total equals the batches the evaluation loader really yields: 1 val shard of 12 clips
    split by sample across workers, and 3 train shards of 16 split by shard."""
    from types import SimpleNamespace

    from vl.lit.callbacks import eval_batches
    from vl.lit.data import VideoTextDataModule

    dm = VideoTextDataModule(val_shards=synth_dir["val"], test_shards=synth_dir["train"], num_frames=2,
                             frame_size=32, eval_batch_size=eval_batch_size, num_workers=num_workers,
                             persistent_workers=False, pin_memory=False)
    trainer = SimpleNamespace(datamodule=dm, global_rank=0, world_size=1)
    dm.trainer = None
    for split, loader in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        expected = eval_batches(trainer, split)
        assert expected is not None and expected == sum(1 for _ in loader()), split


def test_steps_bounded_runs_show_no_negative_epoch_total():
    """`max_epochs` -1 (a run bounded by max_steps, as the tokenizer configs are): "Epoch 0", not "Epoch 0/-2"."""
    from types import SimpleNamespace

    from vl.lit.callbacks import VLProgressBar

    bar = VLProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=8)
    assert bar._get_train_description(3).strip() == "Epoch 3/7"


def test_index_progress_total_counts_shard_samples_and_files(synth_dir, tmp_path):
    from vl.search.index import _total_items
    from vl.search.sources import find_units

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(b"")
    assert _total_items(find_units([synth_dir["train"], str(videos)])) == 48 + 2
