"""Every shipped config parses and builds its model, data module and trainer (on CPU, at its real size).
Base files (configs/finetune/_base_/, and any file named _*.yaml) are not runnable configs: they are built
through the configs that start from them (tests/test_config_bases.py checks the merging)."""

import inspect
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Trainer

from vl.lit.cli import VLLightningCLI, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*/*.yaml")
                 if p.parent.name in {"pretrain", "finetune", "tokenizer"} and not p.name.startswith("_"))
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.precision", "32-true", "--trainer.num_nodes", "1", "--trainer.logger", "false"]


def test_there_are_configs():
    assert "configs/pretrain/demo.yaml" in CONFIGS
    assert {"configs/pretrain/violet_base.yaml", "configs/pretrain/allinone_base.yaml",
            "configs/pretrain/clip_base.yaml"} <= set(CONFIGS)
    assert len([c for c in CONFIGS if c.startswith("configs/finetune/")]) == 15
    assert not [c for c in CONFIGS if "_base_" in c]


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds(config, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = []
    merged = load_config(ROOT / config)  # with its base merged in: a fine-tuning config's own lines lack init_from
    if (merged.get("model", {}).get("init_args") or {}).get("init_from"):  # a checkpoint the test lacks
        extra = ["--model.init_args.init_from", "null"]
    text = (ROOT / config).read_text() + yaml.safe_dump(merged, width=10**9)  # its lines, then its base's
    named = re.findall(r"(/weights/[^\s'\"]+)", text) + re.findall(r"answer_vocab:\s*([^\s#]+)", text)
    missing = [w for w in named if w != "null" and not (ROOT / w).exists()]
    if missing:  # configs that name the user's weights or prepared data: they must fail clearly, not download
        with pytest.raises((ValueError, FileNotFoundError), match="never downloads|not found|not a file|No such file"):
            VLLightningCLI(args=["-c", config, *CPU, *extra], run=False)
        return
    cli = VLLightningCLI(args=["-c", config, *CPU, *extra], run=False)
    params = sum(p.numel() for p in cli.model.parameters())
    print(f"{config}: {type(cli.model).__name__} with {params / 1e6:.1f}M parameters, "
          f"{type(cli.datamodule).__name__}")
    assert params > 0
    assert cli.trainer is not None


@pytest.mark.parametrize("trainer", sorted((ROOT / "configs" / "trainer").glob("*.yaml")), ids=lambda p: p.stem)
def test_trainer_configs_name_trainer_arguments(trainer):
    """Each trainer file merges into a run's trainer section: every key must be a Trainer argument
    (checked by name: most of these files need GPUs to instantiate)."""
    accepted = set(inspect.signature(Trainer.__init__).parameters)
    keys = set(yaml.safe_load(trainer.read_text()))
    assert keys and keys <= accepted, f"not Trainer arguments: {sorted(keys - accepted)}"
