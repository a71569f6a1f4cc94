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

This module imports neither torch nor Lightning: `vl --help`, the tools' dispatch and the mistakes that
need no model (an unknown command, a config file that does not exist, a misspelled section or trainer
option) answer in a fraction of a second. A misspelled model or data key, on the command line or in a
config file, and `vl fit --help` are answered as fast once any earlier command has loaded the classes and
recorded their options (vl.known_options); the first time, they wait for the full parse.
`vl fit|validate|test|predict` print their first line before loading PyTorch and Lightning, which takes
most of their start-up.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vl import known_options

LIGHTNING_COMMANDS = {
    "fit": "train a model (pretraining or fine-tuning) from a config",
    "validate": "run the validation loop once and print its metrics",
    "test": "evaluate a checkpoint on the test split; prints metrics, writes metrics JSON and predictions",
    "predict": "run the predict loop",
}

# name -> (module with a `main(argv) -> int`, one-line help). Imported only when used, so `vl fit` does
# not pay for Gradio or FAISS.
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("vl.tools.data", "write, inspect and synthesise WebDataset shards (`vl data --help`)"),
    "index": ("vl.search.cli", "embed a folder or shards of videos into a FAISS search index (`vl index --help`)"),
    "demo": ("vl.search.app", "serve a search index in a Gradio app (`vl demo --index INDEX`)"),
}

# `vl fit --overwrite`: start afresh in a checkpoint folder that holds an earlier run's checkpoints (vl's own
# option, taken out of the command line before LightningCLI parses it, so no saved config.yaml carries it).
OVERWRITE = "--overwrite"


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
        "  vl fit -c configs/pretrain/demo.yaml --overwrite           # start over, deleting the run's checkpoints",
        "  vl test -c configs/pretrain/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt",
        "  vl fit -c configs/pretrain/demo.yaml --print_config        # every model, data and trainer option",
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


# ---- checks of a Lightning command line that need no import of torch or Lightning ---------------------

SECTIONS = ("trainer", "model", "data")  # config sections (vl runs LightningCLI without optimizer sections)
COMMON_OPTIONS = ("-c", "--config", "--print_config", "--seed_everything", "-h", "--help")
SECTION_KEYS = ("class_path", "dict_kwargs", "help")  # --model.KEY that are not the class's own options
SKIPPED_ARGUMENTS = {"self", "model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule"}


@functools.lru_cache(maxsize=1)
def _trainer_signatures() -> Optional[dict[str, set[str]]]:
    """Argument names of Lightning's ``Trainer.__init__`` and of ``fit``/``validate``/``test``/``predict``,
    read from its source without importing it; None when the source cannot be found or read."""
    spec = importlib.util.find_spec("lightning")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pytorch" / "trainer" / "trainer.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
            wanted = ("__init__", *LIGHTNING_COMMANDS)
            if not all(m in methods for m in wanted):
                return None
            return {m: {a.arg for a in methods[m].args.args + methods[m].args.kwonlyargs} - SKIPPED_ARGUMENTS
                    for m in wanted}
    return None


def _looks_like_file(value: str) -> bool:
    """A config value that names a YAML/JSON file (not inline YAML such as ``{max_steps: 1}``)."""
    return value.endswith((".yaml", ".yml", ".json")) and not any(c in value for c in "{}\n: ")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def read_configs(args: Sequence[str]) -> dict[str, dict]:
    """The mapping of each ``-c`` file that exists, its bases merged in (``vl.config.load_config``), by the
    path as given. Raises ConfigBaseError for a config whose base is wrong, OSError/ValueError for one that
    cannot be read."""
    from vl.config import load_config

    configs = {}
    for i, token in enumerate(args):
        key, eq, inline = token.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        if key in ("-c", "--config") and _looks_like_file(value) and os.path.isfile(value) and value not in configs:
            configs[value] = load_config(value)
    return configs


def section_classes(args: Sequence[str], configs: Optional[dict[str, dict]] = None) -> dict[str, Optional[str]]:
    """The class path the command line gives ``model`` and ``data``, in order: each ``-c`` file's
    ``class_path`` (``configs``, default ``read_configs(args)``), ``--model CLASS``, ``--model.class_path
    CLASS``; None where it is not a plain class path (a file or inline YAML given as ``--model``) or no file
    says."""
    configs = read_configs(args) if configs is None else configs
    found: dict[str, Optional[str]] = {"model": None, "data": None}
    for i, token in enumerate(args):
        key, eq, inline = token.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        if key in ("-c", "--config") and value in configs:
            for section in found:
                part = configs[value].get(section)
                if isinstance(part, dict) and isinstance(part.get("class_path"), str):
                    found[section] = part["class_path"]
                elif part is not None and not isinstance(part, dict):
                    found[section] = None
        for section in found:
            if key in (f"--{section}", f"--{section}.class_path"):
                found[section] = value if value.replace(".", "").replace("_", "").isalnum() else None
    return found


def _misspelled(tree: Any, parts: Sequence[str]) -> Optional[tuple[str, Optional[str]]]:
    """For a key (``parts``) that leaves the option ``tree``: (the key up to its first unknown part, the
    closest known key or None), both dotted; None when the key is known or reaches an open value."""
    miss = known_options.unknown_key(tree, parts)
    if miss is None:
        return None
    index, allowed = miss
    return ".".join(parts[:index + 1]), known_options.suggest_key(parts, index, allowed)


def _config_key_error(path: str, config: dict, trees: dict, classes: dict[str, Optional[str]]) -> Optional[str]:
    """A one-line error for a model/data key of config ``path`` (its mapping ``config``) that its class lacks."""
    for section in ("model", "data"):
        part = config.get(section)
        if not isinstance(part, dict) or not isinstance(part.get("init_args"), dict):
            continue
        class_path = part.get("class_path") if isinstance(part.get("class_path"), str) else classes[section]
        if class_path not in trees:
            continue
        stack: list[tuple[list[str], Any]] = [([], part["init_args"])]
        while stack:
            prefix, mapping = stack.pop()
            for name in mapping:
                parts = [*prefix, str(name)]
                wrong = _misspelled(trees[class_path], parts)
                if wrong is not None:
                    hint = f" (did you mean {section}.init_args.{wrong[1]}?)" if wrong[1] else ""
                    return f"{path}: {section}.init_args.{wrong[0]} is not an option of {class_path}{hint}"
                if isinstance(mapping[name], dict):
                    stack.append((parts, mapping[name]))
    return None


def precheck(command: str, args: Sequence[str]) -> Optional[str]:
    """A one-line error for the mistakes in ``vl COMMAND ARGS`` found before torch and Lightning load: a
    config file that does not exist or whose base is wrong, an unknown option or section, an unknown trainer
    option, and a model or data key (on the command line or in a ``-c`` file) that its class lacks, once a
    run has recorded that class's options (vl.known_options); None when none is found (the full parse, after
    loading Lightning, checks everything: keys, types, values)."""
    signatures = _trainer_signatures()
    if signatures is None:
        return None
    from vl.config import ConfigBaseError

    try:
        configs = read_configs(args)
    except ConfigBaseError as e:
        return str(e)
    except (OSError, ValueError):  # not YAML: the full parse says so, with jsonargparse's message
        configs = {}
    classes = section_classes(args, configs)
    trees = known_options.recorded_trees() if any(classes.values()) else {}
    options = [*COMMON_OPTIONS, *(f"--{a}" for a in sorted(signatures[command])), *(f"--{s}" for s in SECTIONS)]
    if command == "fit":
        options.append(OVERWRITE)
    trainer_keys = sorted(signatures["__init__"]) + ["help"]
    for i, token in enumerate(args):
        if not token.startswith("-") or token == "-" or token[1:2].isdigit() or token[1:2] == ".":
            continue  # a value (negative numbers included)
        if token == "--":
            break
        key, eq, inline = token.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        section, dot, rest = key[2:].partition(".")
        if dot and section in SECTIONS:
            name = rest.split(".")[0].rstrip("+")
            if section == "trainer" and name not in trainer_keys:
                return (f"unrecognized arguments: {key}"
                        + _suggest(name, trainer_keys).replace("(did you mean ", "(did you mean --trainer."))
            parts = [p.rstrip("+") for p in rest.split(".")]
            if section in ("model", "data") and classes[section] in trees and parts[0] not in SECTION_KEYS:
                shorthand = parts[0] != "init_args"  # --model.lr means --model.init_args.lr
                wrong = _misspelled(trees[classes[section]], parts if shorthand else parts[1:])
                if wrong is not None:
                    prefix = f"--{section}." if shorthand else f"--{section}.init_args."
                    hint = (f" (did you mean {prefix}{wrong[1]}?)" if wrong[1]
                            else f" ({classes[section]} has no such option)")
                    return f"unrecognized arguments: {key}{hint}"
            continue
        if dot:  # a misspelled section: --trainr.max_steps
            close = difflib.get_close_matches(section, SECTIONS, n=1, cutoff=0.6)
            hint = f" (did you mean --{close[0]}.{rest}?)" if close else f" (sections: {', '.join(SECTIONS)})"
            return f"unrecognized arguments: {key}{hint}"
        if key == OVERWRITE and command != "fit":
            return f"{OVERWRITE} is an option of `vl fit` (it starts a run afresh in a folder of old checkpoints)"
        if key not in options and not (key.startswith("--") and sum(o.startswith(key) for o in options) == 1):
            return f"unrecognized arguments: {key}" + _suggest(key, options)
        if key in ("-c", "--config", "--trainer") and _looks_like_file(value) and not os.path.isfile(value):
            return f"{key} {value}: no such file"
        if key in ("-c", "--config") and trees and value in configs:
            error = _config_key_error(value, configs[value], trees, classes)
            if error is not None:
                return error
    return None


def _configs(args: Sequence[str]) -> list[str]:
    """The config files named by ``-c``/``--config``."""
    found = []
    for i, token in enumerate(args):
        if token in ("-c", "--config") and i + 1 < len(args):
            found.append(args[i + 1])
        elif token.startswith("--config="):
            found.append(token.split("=", 1)[1])
    return found


def run_lightning(args: list[str], from_sys_argv: bool = False) -> int:
    """Run ``vl COMMAND ARGS`` (``args[0]`` is the command) with LightningCLI; returns an exit status.
    ``from_sys_argv``: ``args`` are the process's own arguments (LightningCLI then reads them from
    ``sys.argv``, as it prefers)."""
    command, rest = args[0], args[1:]
    error = precheck(command, rest)
    if error is not None:
        print(f"vl {command}: error: {error}", file=sys.stderr)
        print(f"vl {command}: `vl {command} --help` lists the options; `vl {command} -c CONFIG --print_config` "
              f"shows every key of a config with its value", file=sys.stderr)
        return 2
    help_only = rest in (["-h"], ["--help"])
    if help_only:
        text = known_options.cached_help(command)
        if text is not None:
            sys.stdout.write(text)
            return 0
    overwrite = OVERWRITE in rest
    rest = [a for a in rest if a != OVERWRITE]
    configs = _configs(rest)
    print(f"vl {command}: loading {', '.join(configs) if configs else 'PyTorch and Lightning'} ...",
          file=sys.stderr, flush=True)

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from vl.lit.cli import VLLightningCLI
    from vl.lit.safety import NonFiniteLossError

    if from_sys_argv:
        sys.argv[1:] = [command, *rest]
    try:
        if help_only:
            return _help_recorded(command, lambda: VLLightningCLI(args=None if from_sys_argv else [command, *rest]))
        VLLightningCLI(args=None if from_sys_argv else [command, *rest], overwrite=overwrite)
    except (*USER_ERRORS, NonFiniteLossError, MisconfigurationException) as e:
        if os.environ.get("VL_DEBUG", "") not in ("", "0"):
            raise
        print(f"vl: error: {one_line(e)} (VL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:  # Lightning and the model code are loaded now: record their options for the next command line
        try:
            named = list(section_classes(rest).values())
        except Exception:
            named = []
        known_options.record(named)
    return 0


def _help_recorded(command: str, run: Callable[[], object]) -> int:
    """Run LightningCLI's ``--help`` (``run``), print its text and record it (vl.known_options.record_help)."""
    import contextlib
    import io

    captured = io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(captured):
        try:
            run()
        except SystemExit as e:
            code = e.code
    text = captured.getvalue()
    sys.stdout.write(text)
    if code in (0, None) and text:
        known_options.record_help(command, text)
    return int(code or 0) if isinstance(code, (int, type(None))) else 1


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
        return run_lightning(args, from_sys_argv=argv is None)
    print(_usage(), file=sys.stderr)
    commands = [*LIGHTNING_COMMANDS, *TOOL_COMMANDS]
    print(f"\nerror: unknown command {command!r}{_suggest(command, commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
