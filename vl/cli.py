"""The `vl` command: LightningCLI's fit/validate/test/predict plus the project's own tools.

    vl fit -c configs/pretrain/demo.yaml --trainer.max_steps 10
    vl data synth --out data/synth
    vl --help

Configs are YAML in LightningCLI's `class_path`/`init_args` form, parsed in omegaconf mode so `${...}`
interpolation works. A key may name another YAML file (`trainer: ../trainer/cpu.yaml`), resolved relative
to the file that names it, so a new run overrides only what differs. Unknown keys and wrong types exit
with status 2 and one line naming the key. Other errors a user can fix (a missing shard or checkpoint, a
file that is not a checkpoint, a bad setting) exit with status 1 and one line; `VL_DEBUG=1` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from typing import Callable, Sequence

LIGHTNING_COMMANDS = {
    "fit": "train a model (pretraining or fine-tuning) from a config",
    "validate": "run the validation loop once and print its metrics",
    "test": "evaluate a checkpoint on the test split; prints metrics, writes metrics JSON and predictions",
    "predict": "run the predict loop",
}

# name -> (module with a `main(argv) -> int`, one-line help). Imported only when used, so `vl fit` does
# not pay for Gradio or FAISS.
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("datapipes.cli", "write, inspect and synthesise WebDataset shards (`vl data --help`)"),
    "index": ("vl.search.cli", "embed a folder or shards of videos into a FAISS search index (`vl index --help`)"),
    "demo": ("vl.search.app", "serve a search index in a Gradio app (`vl demo --index INDEX`)"),
}


def _usage() -> str:
    lines = ["usage: vl <command> [options]", "", "Training (LightningCLI; `vl <command> --help` lists every option):"]
    lines += [f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Tools:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in TOOL_COMMANDS.items()]
    lines += [
        "",
        "Examples:",
        "  vl fit -c configs/pretrain/demo.yaml --trainer.max_steps 5",
        "  vl fit -c configs/pretrain/demo.yaml --ckpt_path last      # resume",
        "  vl test -c configs/pretrain/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt",
        "",
        "Errors are one line; set VL_DEBUG=1 for the full traceback (VL_DEBUG=1 vl fit ...).",
    ]
    return "\n".join(lines)


def _tool_main(name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(TOOL_COMMANDS[name][0])
    return module.main


# Errors with a message that says what to fix: shown as one line (the traceback with VL_DEBUG=1).
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, pickle.UnpicklingError)


def one_line(error: BaseException) -> str:
    """``error`` as one line: its type and message, whitespace collapsed; for an error that jsonargparse
    wrapped while building a class, the error the class raised; for an error re-raised from a DataLoader
    worker, the original error's last line rather than the worker's traceback."""
    while isinstance(error.__cause__, USER_ERRORS) and "Does not validate against" in str(error):
        error = error.__cause__
    text = str(error)
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
        return " ".join(text.split())
    return f"{type(error).__name__}: {' '.join(text.split())}"


def run_lightning(argv: list[str] | None) -> int:
    """Parse `argv` (None: sys.argv) with LightningCLI and run the subcommand; returns an exit status."""
    from vl.lit.cli import VLLightningCLI
    from vl.lit.safety import NonFiniteLossError

    try:
        VLLightningCLI(args=argv)
    except (*USER_ERRORS, NonFiniteLossError) as e:
        if os.environ.get("VL_DEBUG", "") not in ("", "0"):
            raise
        print(f"vl: error: {one_line(e)} (VL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vl` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command = args[0]
    if command in TOOL_COMMANDS:
        return int(_tool_main(command)(args[1:]) or 0)
    if command in LIGHTNING_COMMANDS:
        return run_lightning(None if argv is None else args)
    print(_usage(), file=sys.stderr)
    print(f"\nerror: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
