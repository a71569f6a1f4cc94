"""Configs that override a base file (`base: _base_/retrieval.yaml`, vl.lit.cli.resolve_config_bases): every
fine-tuning config is a short override of configs/finetune/_base_/, and the merging keeps a base's siblings,
replaces lists whole, and reports a cycle, a missing file or an unset value in one line naming the files.

The 15 fine-tuning configs were checked, when they became overrides, to give `--print_config` output identical
to that of the fully written-out files they replaced; the tests below check the facts that keep it so."""

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from vl.lit.cli import ConfigBaseError, VLLightningCLI, load_config, merge_config, resolve_config_bases

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = sorted((ROOT / "configs" / "finetune").glob("*.yaml"))
BASES = sorted((ROOT / "configs" / "finetune" / "_base_").glob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_there_are_finetune_configs_and_bases():
    assert len(FINETUNE) == 15
    assert {p.name for p in BASES} == {"finetune.yaml", "retrieval.yaml", "qa.yaml", "caption.yaml", "mc.yaml"}


@pytest.mark.parametrize("config", FINETUNE, ids=lambda p: p.stem)
def test_finetune_config_is_a_short_override(config):
    own = yaml.safe_load(config.read_text())
    assert own["base"].startswith("_base_/") and (config.parent / own["base"]).is_file()
    assert len(config.read_text().splitlines()) < 40
    assert "callbacks" not in own["trainer"] and "logger" not in own["trainer"]  # lists stay in the base
    assert config.read_text().count("runs/finetune/") <= 3  # the run folder: written once (and in the header's Run: lines)

    merged = load_config(config)
    assert "base" not in merged and "vars" not in merged
    trainer = merged["trainer"]
    assert trainer["default_root_dir"] == f"runs/finetune/{config.stem}"
    assert [c["class_path"].rsplit(".", 1)[1] for c in trainer["callbacks"]] == ["ModelCheckpoint", "LearningRateMonitor"]
    assert [c["init_args"]["save_dir"] for c in trainer["logger"]] == ["${trainer.default_root_dir}"] * 2
    checkpoint = trainer["callbacks"][0]["init_args"]
    assert checkpoint["dirpath"] == "${trainer.default_root_dir}/checkpoints"
    # best.ckpt follows a validation metric exactly when the benchmark has a validation split
    has_val = merged["data"]["init_args"].get("val_shards") is not None
    assert (checkpoint["monitor"] is not None) == has_val, checkpoint
    assert checkpoint["mode"] == ("max" if has_val else "min")
    assert merged["model"]["class_path"].startswith("vl.tasks.")


@pytest.mark.parametrize("base", BASES, ids=lambda p: p.stem)
def test_base_files_are_not_runnable_configs(base):
    """A base leaves the run folder unset (`???`): run alone, it is an error naming the key."""
    with pytest.raises(ConfigBaseError, match=r"trainer\.default_root_dir must be set"):
        load_config(base)


def test_print_config_shows_the_merged_config(capsys):
    out = io.StringIO()
    with pytest.raises(SystemExit), redirect_stdout(out):
        VLLightningCLI(args=["fit", "-c", str(ROOT / "configs/finetune/msrvtt_retrieval.yaml"), "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    assert "base" not in printed and "vars" not in printed
    assert printed["model"]["class_path"] == "vl.tasks.RetrievalModule"  # from _base_/retrieval.yaml
    assert printed["data"]["init_args"]["shuffle_buffer"] == 2000  # from _base_/finetune.yaml
    assert printed["trainer"]["max_epochs"] == 5  # the config's own
    checkpoint = printed["trainer"]["callbacks"][0]["init_args"]
    assert checkpoint["monitor"] == "val/t2v_R@1" and checkpoint["mode"] == "max"
    assert checkpoint["dirpath"] == "runs/finetune/msrvtt_retrieval/checkpoints"  # interpolated after merging
    assert [lg["init_args"]["save_dir"] for lg in printed["trainer"]["logger"]] == ["runs/finetune/msrvtt_retrieval"] * 2


def test_a_second_config_still_overrides_the_first(tmp_path):
    """`vl fit -c FINETUNE -c MORE`: the second file changes one trainer key; the merged first keeps the rest."""
    more = write(tmp_path, "more.yaml", "trainer:\n  max_epochs: 2\n")
    out = io.StringIO()
    with pytest.raises(SystemExit), redirect_stdout(out):
        VLLightningCLI(args=["fit", "-c", str(ROOT / "configs/finetune/msvd_qa.yaml"), "-c", str(more), "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    assert printed["trainer"]["max_epochs"] == 2
    assert printed["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/accuracy"
    assert printed["model"]["init_args"]["num_answers"] == 1000


def test_a_child_overriding_one_nested_key_keeps_the_bases_siblings(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  class_path: a.B\n  init_args:\n    x: 1\n    optim: {lr: 0.1, wd: 0.02}\n"
                                 "trainer:\n  max_epochs: 10\n  devices: 1\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel:\n  init_args:\n    optim: {lr: 1e-5}\n"
                                          "trainer:\n  max_epochs: 3\n")
    merged = load_config(child)
    assert merged == {"model": {"class_path": "a.B", "init_args": {"x": 1, "optim": {"lr": 1e-5, "wd": 0.02}}},
                      "trainer": {"max_epochs": 3, "devices": 1}}
    assert isinstance(merged["model"]["init_args"]["optim"]["lr"], float)  # read as jsonargparse's omegaconf mode reads it


def test_a_list_in_the_child_replaces_the_bases_list(tmp_path):
    write(tmp_path, "base.yaml", "trainer:\n  callbacks:\n    - class_path: A\n    - class_path: B\n"
                                 "  default_root_dir: runs/x\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrainer:\n  callbacks:\n    - class_path: C\n")
    assert load_config(child)["trainer"] == {"callbacks": [{"class_path": "C"}], "default_root_dir": "runs/x"}


def test_a_changed_class_path_replaces_the_bases_init_args():
    base = {"class_path": "a.A", "init_args": {"only_a": 1}}
    assert merge_config(base, {"class_path": "b.B", "init_args": {"b": 2}}) == {"class_path": "b.B", "init_args": {"b": 2}}
    assert merge_config(base, {"init_args": {"b": 2}}) == {"class_path": "a.A", "init_args": {"only_a": 1, "b": 2}}
    assert base == {"class_path": "a.A", "init_args": {"only_a": 1}}  # not modified


def test_chains_vars_and_interpolations(tmp_path):
    """A base of a base; ``${vars.NAME}`` substituted (typed when whole, as text when embedded); other
    interpolations left for LightningCLI's omegaconf mode."""
    write(tmp_path, "_base_/root.yaml", "vars: {monitor: null, mode: min}\ntrainer:\n  default_root_dir: ???\n"
                                        "  callbacks:\n    - init_args: {monitor: '${vars.monitor}', mode: '${vars.mode}',"
                                        " dirpath: '${trainer.default_root_dir}/ck', note: 'by ${vars.monitor}'}\n")
    write(tmp_path, "_base_/kind.yaml", "base: root.yaml\nseed_everything: 1\n")
    child = write(tmp_path, "run.yaml", "base: _base_/kind.yaml\ntrainer:\n  default_root_dir: runs/r\n"
                                        "vars: {monitor: val/acc, mode: max}\n")
    plain = write(tmp_path, "plain.yaml", "base: _base_/kind.yaml\ntrainer:\n  default_root_dir: runs/p\n")
    args = load_config(child)["trainer"]["callbacks"][0]["init_args"]
    assert args == {"monitor": "val/acc", "mode": "max", "dirpath": "${trainer.default_root_dir}/ck", "note": "by val/acc"}
    assert load_config(plain)["trainer"]["callbacks"][0]["init_args"]["monitor"] is None
    assert load_config(plain)["seed_everything"] == 1
    assert resolve_config_bases(write(tmp_path, "nobase.yaml", "trainer: {max_epochs: 1}\n")) is None  # read as before


@pytest.mark.parametrize("files, config, match", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "a.yaml",
     r"b\.yaml: base: a\.yaml makes a cycle of bases: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"),
    ({"a.yaml": "base: a.yaml\n"}, "a.yaml", r"a\.yaml: base: a\.yaml makes a cycle"),
    ({"a.yaml": "base: _base_/missing.yaml\n"}, "a.yaml", r"a\.yaml: base: _base_/missing\.yaml: no such file"),
    ({"a.yaml": "base: [x.yaml]\n"}, "a.yaml", r"a\.yaml: base: \['x\.yaml'\] must name one YAML file"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "x: [1\n"}, "a.yaml", r"b\.yaml: not a readable YAML config"),
    ({"a.yaml": "vars: {}\ntrainer: {callbacks: [{monitor: '${vars.monitr}'}]}\n"}, "a.yaml",
     r"a\.yaml: trainer\.callbacks\[0\]\.monitor: \$\{vars\.monitr\} is not set"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "trainer:\n  default_root_dir: ???\n"}, "a.yaml",
     r"a\.yaml with bases .*b\.yaml: trainer\.default_root_dir must be set"),
])
def test_base_errors_name_the_files(tmp_path, files, config, match):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(ConfigBaseError, match=match):
        load_config(tmp_path / config)


def vl_errors(capsys, *args: str) -> tuple[int, list[str]]:
    """`vl ARGS` in this process: (exit status, its lines on stderr but the "loading ..." line, which a
    mistake found before loading Lightning does not print)."""
    from vl.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("vl fit:") and not line.startswith("vl fit: loading ")]


def test_base_errors_are_one_line_from_the_cli(tmp_path, capsys):
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    a = write(tmp_path, "a.yaml", "base: b.yaml\n")
    code, lines = vl_errors(capsys, "fit", "-c", str(a))
    assert code == 2
    assert lines[0].startswith("vl fit: error: ") and "makes a cycle of bases" in lines[0] and "a.yaml" in lines[0]
    assert len(lines) == 2  # the error, then where to see the options


def test_a_bad_key_in_a_config_with_a_base_names_the_key_and_the_files(tmp_path, capsys):
    config = write(tmp_path, "run.yaml", f"base: {ROOT / 'configs/finetune/_base_/qa.yaml'}\n"
                                         "trainer:\n  max_epoch: 3\n  default_root_dir: runs/x\n")
    code, lines = vl_errors(capsys, "fit", "-c", str(config))
    assert code == 2
    assert "max_epoch" in lines[0] and "run.yaml with bases" in lines[0] and "_base_/qa.yaml" in lines[0]


@pytest.mark.parametrize("config", ["configs/pretrain/demo.yaml", "configs/finetune/msrvtt_retrieval.yaml"])
def test_command_line_values_reach_the_config_interpolations(config, tmp_path):
    """`--trainer.default_root_dir X` moves the logs and checkpoints that interpolate it, and a data option
    that the model interpolates (`num_frames`, both forms `--k v` and `--k=v`) reaches the model."""
    frames = 6
    assert load_config(ROOT / config)["data"]["init_args"].get("num_frames") != frames  # the override changes it
    out = io.StringIO()
    with pytest.raises(SystemExit), redirect_stdout(out):
        VLLightningCLI(args=["fit", "-c", str(ROOT / config), "--trainer.default_root_dir", str(tmp_path / "run"),
                             f"--data.init_args.num_frames={frames}", "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    trainer = printed["trainer"]
    assert trainer["default_root_dir"] == str(tmp_path / "run")
    assert trainer["callbacks"][0]["init_args"]["dirpath"] == str(tmp_path / "run" / "checkpoints")
    assert [lg["init_args"]["save_dir"] for lg in trainer["logger"]] == [str(tmp_path / "run")] * 2
    assert printed["data"]["init_args"]["num_frames"] == frames
    if printed["model"]["init_args"].get("video") is not None:  # fine-tuning takes it from init_from
        assert printed["model"]["init_args"]["video"]["num_frames"] == frames
