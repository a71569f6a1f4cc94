"""The sharded-training trainer configs (DeepSpeed ZeRO-2 / ZeRO-3, FSDP).

On CPU: each config names a strategy Lightning knows, and the strategy object builds (DeepSpeed is
installed and imports). With CUDA: each config trains the demo model for a few steps through ``vl fit``
and writes a checkpoint. Without CUDA those tests skip, saying so: DeepSpeed and FSDP shard over GPUs.
"""

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import StrategyRegistry

from test_cli import ROOT, run_vl, tiny_config

SHARDED = ["deepspeed_stage_2", "deepspeed_stage_3", "fsdp"]


def trainer_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "trainer" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_config_names_a_registered_strategy(name: str) -> None:
    cfg = trainer_config(name)
    assert cfg["strategy"] in StrategyRegistry, f"{name}.yaml: unknown strategy {cfg['strategy']!r}"
    assert cfg["precision"] == "bf16-mixed" and cfg["accelerator"] == "gpu"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_strategy_builds(stage: int) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed by `make setup`")
    strategy = StrategyRegistry.get(f"deepspeed_stage_{stage}")
    assert strategy.config["zero_optimization"]["stage"] == stage


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: DeepSpeed ZeRO and FSDP shard over GPUs")
@pytest.mark.parametrize("name", SHARDED)
def test_sharded_strategy_trains_the_demo_model(name: str, tmp_path: Path, synth_dir: dict) -> None:
    cfg = tiny_config(tmp_path, synth_dir, max_steps=3)
    out = run_vl("fit", "-c", str(cfg), "--trainer", str(ROOT / "configs" / "trainer" / f"{name}.yaml"),
                 "--trainer.devices", "1", "--trainer.max_steps", "3")
    print(out.stderr[-3000:])
    assert out.returncode == 0
    assert any((tmp_path / "checkpoints").glob("*.ckpt"))
