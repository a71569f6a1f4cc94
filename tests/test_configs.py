"""Every shipped config parses and builds its model, data module and trainer (on CPU, at its real size)."""

import inspect
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Trainer

from vl.lit.cli import VLLightningCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*/*.yaml")
                 if p.parent.name in {"pretrain", "finetune", "tokenizer"})
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.precision", "32-true", "--trainer.num_nodes", "1", "--trainer.logger", "false"]


def test_there_are_configs():
    assert "configs/pretrain/demo.yaml" in CONFIGS
    assert {"configs/pretrain/violet_base.yaml", "configs/pretrain/allinone_base.yaml",
            "configs/pretrain/clip_base.yaml"} <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds(config, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = []
    if "init_from:" in (ROOT / config).read_text():  # fine-tuning starts from a checkpoint the test lacks
        extra = ["--model.init_args.init_from", "null"]
    text = (ROOT / config).read_text()
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
