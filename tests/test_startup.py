"""`vl` answers before loading what it does not need: help, a misspelled command, section or trainer option
and a missing config never import torch or Lightning; `vl fit` prints its first line before importing them.
No wall-clock assertions: what is checked is which modules a command loaded, and in which order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "gradio", "faiss", "deepspeed", "pycocoevalcap", "transformers", "torchvision")

PROBE = """
import sys
from vl.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # argparse's --help of a tool
    code = e.code
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print("EXIT", code)
print("HEAVY", ",".join(heavy))
""" % (HEAVY,)


def probe(*args: str) -> tuple[int, list[str], str]:
    """`vl ARGS` in a fresh interpreter: (exit status, heavy top-level modules it imported, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in out.stdout.splitlines()
                 if line.startswith(("EXIT", "HEAVY")))
    assert "EXIT" in lines, out.stderr[-2000:]
    return int(lines["EXIT"]), [m for m in lines["HEAVY"].split(",") if m], out.stderr


@pytest.mark.parametrize("args", [("--help",), ("data", "--help"), ("data", "synth", "--help"),
                                  ("data", "shards", "--help"), ("data", "inspect", "--help"),
                                  ("index", "--help"), ("data", "vq-targets", "--help")])
def test_help_imports_nothing_heavy(args):
    code, heavy, _ = probe(*args)
    assert code == 0 and heavy == []


@pytest.mark.parametrize("args, message", [
    (("fitt",), "unknown command 'fitt' (did you mean fit?)"),
    (("fit", "-c", "configs/pretrain/demo.yaml", "--trainr.max_steps", "3"),
     "unrecognized arguments: --trainr.max_steps (did you mean --trainer.max_steps?)"),
    (("fit", "-c", "configs/pretrain/demo.yaml", "--trainer.max_stpes", "3"),
     "unrecognized arguments: --trainer.max_stpes (did you mean --trainer.max_steps?)"),
    (("fit", "-c", "configs/pretrain/dmeo.yaml"), "-c configs/pretrain/dmeo.yaml: no such file"),
    (("fit", "-c", "configs/pretrain/demo.yaml", "--trainer", "configs/trainer/cpuu.yaml"),
     "--trainer configs/trainer/cpuu.yaml: no such file"),
    (("test", "-c", "configs/pretrain/demo.yaml", "--overwrite"), "--overwrite is an option of `vl fit`"),
    (("validate", "--ckpt_pth", "x.ckpt"), "unrecognized arguments: --ckpt_pth (did you mean --ckpt_path?)"),
])
def test_mistakes_found_without_a_model_are_reported_before_importing_torch(args, message):
    code, heavy, err = probe(*args)
    assert code == 2 and heavy == [], err
    assert message in err
    assert "vl [options]" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2 or args == ("fitt",)  # `vl fitt` also prints the command list


def test_precheck_lets_valid_command_lines_through(monkeypatch):
    """Everything LightningCLI accepts must pass the early check (it only rejects what cannot parse)."""
    from vl.cli import precheck

    monkeypatch.chdir(ROOT)
    valid = [
        ("fit", ["-c", "configs/pretrain/demo.yaml", "--trainer.max_steps", "-1", "--model.init_args.optim.lr",
                 "-0.1", "--overwrite", "--print_config=skip_null", "--trainer.callbacks+=x", "--seed_everything", "1",
                 "--data.init_args.root", "data/x", "--trainer.logger.init_args.save_dir", "runs/x"]),
        ("fit", ["--config", "{trainer: {max_steps: 1}}", "--model.help", "vl.lit.PretrainModule"]),
        ("fit", ["--trainer=configs/trainer/cpu.yaml", "--ckpt_path=last", "--weights_only", "false"]),
        ("test", ["-c", "configs/pretrain/demo.yaml", "--ckpt_path", "x.ckpt", "--verbose", "false"]),
        ("predict", ["-c", "configs/pretrain/demo.yaml", "--return_predictions", "false"]),
        ("fit", ["--help"]),
    ]
    for command, args in valid:
        assert precheck(command, args) is None, (command, args)


def test_fit_prints_its_first_line_before_importing_torch():
    """`-X importtime` writes one line per module to stderr as its import finishes: the "loading" line must
    come before the first of torch's. The run is stopped there, so nothing trains."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "vl.cli", "fit", "-c",
                             "configs/pretrain/demo.yaml", "--trainer.max_steps", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    order = []
    try:
        for line in proc.stderr:
            if line.startswith("vl fit: loading configs/pretrain/demo.yaml"):
                order.append("first line")
            elif line.startswith("import time:") and line.split("|")[-1].strip().split(".")[0] == "torch":
                order.append("torch")  # the first module of torch whose import finished
                break
    finally:
        proc.kill()
        proc.wait()
    assert order == ["first line", "torch"]


def test_startup_bench_runs_and_writes_json(tmp_path):
    out = tmp_path / "startup.json"
    run = subprocess.run([sys.executable, "scripts/bench/startup.py", "--repeat", "1", "--no-baselines", "--only",
                          "help", "typo_command", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    import json

    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"help", "typo_command"}
    assert rows["help"]["exit_status"] == 0 and rows["typo_command"]["exit_status"] == 2
    assert rows["help"]["median_s"] > 0 and "median s" in run.stdout


# ---- model and data keys, once a run has recorded their classes' options (vl.known_options) ----------------


@pytest.fixture()
def recorded(tmp_path, monkeypatch):
    """A fresh option cache holding the records a first `vl` run leaves (the shipped modules' option trees)."""
    from vl import known_options

    monkeypatch.setenv("VL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    known_options.record([])
    assert set(known_options.recorded_trees()) == set(known_options.KNOWN_CLASSES)
    return known_options


@pytest.mark.parametrize("args, message", [
    (("fit", "-c", "configs/pretrain/demo.yaml", "--model.init_args.optim.lrr", "1"),
     "unrecognized arguments: --model.init_args.optim.lrr (did you mean --model.init_args.optim.lr?)"),
    (("fit", "-c", "configs/pretrain/demo.yaml", "--model.optim.lrr", "1"),
     "unrecognized arguments: --model.optim.lrr (did you mean --model.optim.lr?)"),
    (("fit", "-c", "configs/pretrain/demo.yaml", "--data.init_args.batch_sze", "4"),
     "unrecognized arguments: --data.init_args.batch_sze (did you mean --data.init_args.batch_size?)"),
    (("test", "-c", "configs/finetune/msrvtt_retrieval.yaml", "--model.init_args.zzz", "1"),
     "unrecognized arguments: --model.init_args.zzz (vl.tasks.RetrievalModule has no such option)"),
])
def test_model_and_data_key_mistakes_are_found_before_importing_torch(recorded, args, message):
    code, heavy, err = probe(*args)
    assert code == 2 and heavy == [], err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_a_config_files_unknown_key_is_found_before_importing_torch(recorded, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f"base: {ROOT / 'configs/pretrain/demo.yaml'}\nmodel:\n  init_args:\n    optim:\n      lrr: 1\n")
    code, heavy, err = probe("fit", "-c", str(config))
    assert code == 2 and heavy == [], err
    assert "model.init_args.optim.lrr is not an option of vl.lit.PretrainModule" in err
    assert "(did you mean model.init_args.optim.lr?)" in err


def test_every_key_of_every_shipped_config_passes_the_recorded_check(recorded):
    """No false alarm: each config's own model/data keys, all given again on the command line, pass; keys
    under an option whose keys are free (a dict such as ``video``) are not judged."""
    from vl.cli import precheck
    from vl.config import load_config

    configs = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base_" not in p.parts)
    assert len(configs) > 15
    checked = 0
    for path in configs:
        config = load_config(path)
        args = ["-c", str(path.relative_to(ROOT))]
        for section in ("model", "data"):
            stack = [([], ((config.get(section) or {}).get("init_args") or {}))]
            while stack:
                prefix, mapping = stack.pop()
                for key, value in mapping.items():
                    if isinstance(value, dict):
                        stack.append(([*prefix, key], value))
                    else:
                        args += [f"--{section}.init_args.{'.'.join([*prefix, key])}", "1"]
                        checked += 1
        assert precheck("fit", args) is None, path
    assert checked > 100
    assert precheck("fit", ["-c", "configs/pretrain/demo.yaml", "--model.init_args.video.anything", "1"]) is None


def test_records_follow_the_source(tmp_path):
    """Records are keyed by a fingerprint of the source files and versions: an edit or an upgrade makes
    them unused, not wrong."""
    from vl.known_options import source_fingerprint

    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "m.py"
    module.write_text("x = 1\n")
    roots, versions = [("pkg", tmp_path / "pkg")], {"lightning": "2.0"}
    before = source_fingerprint(roots, versions)
    assert source_fingerprint(roots, versions) == before
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = source_fingerprint(roots, versions)
    (tmp_path / "pkg" / "new.py").write_text("")
    added = source_fingerprint(roots, versions)
    upgraded = source_fingerprint(roots, {"lightning": "2.1"})
    assert len({before, touched, added, upgraded}) == 4


def test_help_text_is_recorded_then_replayed_without_importing_torch(recorded):
    from vl.cli import _help_recorded

    def fake_cli() -> None:  # what LightningCLI's --help does: print, then exit 0
        print("usage: vl fit [-h] [-c CONFIG] (recorded)")
        raise SystemExit(0)

    assert _help_recorded("fit", fake_cli) == 0
    code, heavy, _ = probe("fit", "--help")
    assert code == 0 and heavy == []
