"""Every command and snippet of README.md runs as written, so README cannot drift from the code.

The commands are read from README.md when the test runs: every line of its ```bash blocks (continuation
lines joined, comments dropped), every ```python block, and the `$ ` transcripts of its ```text blocks (run,
and their output compared with the README's). Each one is

- run here, verbatim, in a workspace folder laid out as a checkout after `make demo` (``configs/``,
  ``scripts/`` and ``.venv`` of this checkout, ``data/synth`` = the session's tiny synthetic shards, the
  demo checkpoint trained for one step by the `vl fit` / `vl test` lines of the Makefile's demo recipe,
  ``captions.txt`` and a ``videos/`` folder), with tiny settings appended where a command would run long
  (``TINY``); or
- a `vl data` line, run by ``tests/test_readme_data.py``; or
- listed in ``SKIPPED`` with the reason it cannot run here (a GPU, the network, a real benchmark, a server).

A README command that is none of these fails ``test_every_readme_command_is_covered``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import encode_indexed_clip
from test_readme_data import readme_commands as readme_data_commands
from vl.cli import main as vl_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

# Commands that cannot run in a CPU test, each with the reason (exact text as the README has it, continuation
# lines joined by one space).
SKIPPED: dict[str, str] = {
    "make demo": "the whole demo (about 7 minutes); its pieces run here: the Makefile's `vl fit` and `vl test` "
                 "lines at tiny settings, README's `vl index`, `vl predict` and `vl data` lines",
    "make test": "the whole test suite",
    "vl fit -c configs/pretrain/violet_base.yaml --trainer configs/trainer/deepspeed_stage_2.yaml":
        "DeepSpeed needs CUDA; tests/test_pretrain_configs.py runs violet_base on the CPU at tiny size",
    "vl fit -c configs/pretrain/violet_base.yaml --data.init_args.train_shards '/data/webvid/{00000..09999}.tar'":
        "8 GPUs, WebVid and the base weights; tests/test_pretrain_configs.py runs violet_base on the CPU at tiny size",
    "vl fit -c configs/pretrain/clip_base.yaml --trainer configs/trainer/deepspeed_stage_2.yaml":
        "DeepSpeed needs CUDA; tests/test_pretrain_configs.py runs clip_base on the CPU at tiny size",
    "python -m scripts.prepare.msrvtt --annotations ~/msrvtt/annotations --videos ~/msrvtt/videos "
    "--out data/msrvtt --shards data/msrvtt/shards":
        "needs the MSR-VTT release; tests/test_prepare.py runs the converters on fixtures in its layout",
    "scripts/finetune/msrvtt.sh runs/pretrain/checkpoints/last.ckpt --trainer configs/trainer/ddp.yaml":
        "needs MSR-VTT shards and GPUs (DDP)",
    "vl demo --index runs/demo/index": "serves the Gradio app until stopped; tests/test_app_browser.py drives it",
    "make app": "serves the Gradio app until stopped (`vl demo` on the demo's index)",
}

# Appended to a `vl` subcommand so that it runs in seconds on the tiny workspace.
TINY: dict[str, list[str]] = {
    "fit": ["--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0", "--data.init_args.batch_size", "4",
            "--data.init_args.num_workers", "0"],
    "test": ["--data.init_args.num_workers", "0"],
    "predict": ["--data.init_args.num_workers", "0"],
}


@dataclass
class Command:
    kind: str  # "shell" (a ```bash line), "python" (a ```python block) or "transcript" (a `$ ` line of ```text)
    text: str
    expected: str = ""  # a transcript's output as the README shows it


def readme_commands(text: str | None = None) -> list[Command]:
    """The commands of README.md's fenced code blocks, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S):
        if lang == "python":
            commands.append(Command("python", body))
        elif lang in ("bash", "sh", "shell", "console"):
            for line in body.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                if tokens:
                    commands.append(Command("shell", _strip_comment(line)))
        else:  # text blocks: listings, except `$ command` transcripts with their output
            lines = body.splitlines()
            for i, line in enumerate(lines):
                if line.startswith("$ "):
                    output = []
                    for nxt in lines[i + 1:]:
                        if nxt.startswith("$ ") or not nxt.strip():
                            break
                        output.append(nxt)
                    commands.append(Command("transcript", line[2:].strip(), "\n".join(output)))
    return commands


def _strip_comment(line: str) -> str:
    """A shell line without its trailing comment and with single spaces (quotes kept)."""
    out, quote = [], None
    for ch in line:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return " ".join("".join(out).split())


def makefile_demo_pieces() -> list[str]:
    """The `vl fit` and `vl test` lines of the Makefile's demo recipe, with its variables filled in."""
    text = MAKEFILE.read_text()
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe, "the Makefile lost its demo target"
    pieces = []
    for line in recipe.group(1).splitlines():
        line = line.strip().split("||")[-1].strip()  # `test -f ... || $(VL) fit ...`: the command itself
        line = line.replace("$(VL)", "vl").replace("$(DEMO_DATA)", "data/synth").replace("$(DEMO_RUN)", "runs/demo")
        if line.startswith(("vl fit ", "vl test ")):
            pieces.append(line)
    assert [p.split()[1] for p in pieces] == ["fit", "test"], pieces
    return pieces


def covered_by_data_test(command: Command) -> bool:
    return command.kind == "shell" and command.text.startswith("vl data ")


def runnable_here(command: Command) -> bool:
    """Commands this file knows how to run."""
    if command.kind in ("python", "transcript"):
        return True
    return command.text.startswith(("vl ", ".venv/bin/python scripts/"))


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) > 10, commands
    data_lines = {_strip_comment(line) for line in readme_data_commands()}
    uncovered = []
    for command in commands:
        if command.text in SKIPPED:
            continue
        if covered_by_data_test(command):
            assert command.text in data_lines, f"{command.text} is not among tests/test_readme_data.py's lines"
            continue
        if not runnable_here(command):
            uncovered.append(command.text)
    assert not uncovered, ("README commands that no test runs: run them in tests/test_readme.py or list them in "
                           f"SKIPPED with the reason: {uncovered}")
    stale = set(SKIPPED) - {c.text for c in commands}
    assert not stale, f"SKIPPED names commands README no longer has: {sorted(stale)}"


def test_the_extractor_reads_continuations_comments_and_transcripts():
    text = ("```bash\nvl a --x 1 \\\n    --y 'p/*.tar'   # note\n\n# only a comment\n```\n"
            "```text\n$ vl b\nvl b: error: x\n\nnot a command\n```\n```python\nprint(1)\n```\n")
    assert readme_commands(text) == [Command("shell", "vl a --x 1 --y 'p/*.tar'"),
                                     Command("transcript", "vl b", "vl b: error: x"), Command("python", "print(1)\n")]


# -- running them -----------------------------------------------------------------------------------------
def run_vl(argv: list[str], capsys) -> tuple[int, str, str]:
    """`vl ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        code = vl_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def workspace(tmp_path, synth_dir, monkeypatch, capsys):
    """A folder laid out as a checkout after `make demo` (tiny), as the working directory."""
    for name in ("configs", "scripts", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synth").symlink_to(synth_dir["dir"], target_is_directory=True)
    (tmp_path / "captions.txt").write_text("a red square moves from left to right\na blue circle grows bigger\n")
    (tmp_path / "videos" / "cats").mkdir(parents=True)
    (tmp_path / "videos" / "cats" / "001.mp4").write_bytes(encode_indexed_clip())
    (tmp_path / "videos" / "002.mp4").write_bytes(encode_indexed_clip(num_frames=12))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for piece in makefile_demo_pieces():  # make demo's training and evaluation, at tiny settings
        argv = shlex.split(piece)
        code, out, err = run_vl(argv[1:] + TINY.get(argv[1], []), capsys)
        assert code == 0, f"{piece}\n{err[-3000:]}"
    assert (tmp_path / "runs" / "demo" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "demo").rglob("test_metrics.json"))
    return tmp_path


def check_output(command: Command, ws: Path, out: str) -> None:
    """What a command must have produced, beyond exiting 0."""
    argv = shlex.split(command.text)
    if argv[:2] == ["vl", "predict"]:
        pred = ws / "runs" / "demo" / "predictions"
        video = np.load(pred / "video_embeddings.npy")
        keys = [json.loads(line)["key"] for line in (pred / "video_embeddings.jsonl").read_text().splitlines()]
        assert video.shape[0] == len(keys) > 0 and np.allclose(np.linalg.norm(video, axis=1), 1.0, atol=1e-4)
        if "--data.init_args.predict_videos" in argv:
            assert keys == ["002", "cats/001"]
        if "--data.init_args.predict_texts" in argv:
            texts = [json.loads(line)["text"] for line in (pred / "text_embeddings.jsonl").read_text().splitlines()]
            assert texts[-2:] == ["a red square moves from left to right", "a blue circle grows bigger"]
    elif argv[:2] == ["vl", "index"]:
        out_dir = ws / argv[argv.index("--out") + 1]
        assert (out_dir / "videos.faiss").is_file() and (out_dir / "config.json").is_file()


@pytest.mark.slow
def test_readme_commands_run_as_written(workspace, capsys):
    ws = workspace
    ran = []
    for command in readme_commands():
        if command.text in SKIPPED or covered_by_data_test(command):
            continue
        assert runnable_here(command), command.text  # test_every_readme_command_is_covered says which
        if command.kind == "transcript":
            argv = shlex.split(command.text)
            code, out, err = run_vl(argv[1:], capsys)
            assert code != 0 or command.expected == "", command.text
            got = "\n".join(line for line in err.splitlines() if line.startswith(f"{argv[0]} {argv[1]}:"))
            assert got == command.expected, f"{command.text}: README shows\n{command.expected}\nthe command prints\n{err}"
        elif command.kind == "python":
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(command.text, "README.md", "exec"), {"__name__": "__readme__"})
            if "Searcher" in command.text:
                lines = buffer.getvalue().splitlines()
                assert len(lines) == 5 and all(line.split()[2].startswith("data/synth/") or "/" in line for line in lines), lines
        elif command.text.startswith("vl "):
            argv = shlex.split(command.text)
            code, out, err = run_vl(argv[1:] + TINY.get(argv[1], []), capsys)
            assert code == 0, f"{command.text}\n" + "\n".join(l for l in err.splitlines() if "error" in l.lower() and "Logging error" not in l)[-3000:]
            check_output(command, ws, out)
        else:  # .venv/bin/python scripts/...: a process of its own, in the workspace
            argv = shlex.split(command.text)
            result = subprocess.run(argv, cwd=ws, capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert result.returncode == 0, f"{command.text}\n{result.stderr[-3000:]}"
        ran.append(command.text.splitlines()[0])
    print("ran:", *ran, sep="\n  ")
    assert any(r.startswith("vl predict") for r in ran) and any(r.startswith("vl index") for r in ran)
