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
        eval_batch_size=6, num_workers=0, batches_per_epoch=2, num_frames=4,
    )
    cfg["trainer"].update(default_root_dir=str(tmp), check_val_every_n_epoch=1, log_every_n_steps=1, **trainer)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp)
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
