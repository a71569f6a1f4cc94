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
code = main(sys.argv[1:])
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


def test_help_imports_nothing_heavy():
    code, heavy, _ = probe("--help")
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
