"""What `vl` knows of its classes' options without importing them: recorded by a command that loaded them,
read by the next command before torch loads.

A model or data key (``--model.init_args.optim.lrr``) can only be checked against the class's signature,
which takes PyTorch, Lightning and the model code to import (7 CPU seconds on a small machine, 16 without
their cached bytecode). So every `vl fit|validate|test|predict` that has loaded them records, once, the
option tree of each vl class it could run (``record``): the nested keys jsonargparse accepts under
``init_args``, where a mapping of keys is closed (a dataclass, a class signature) and a value such as a
dict-typed option or a list is open (any key may follow). The next command line is checked against it in
a fraction of a second (``unknown_key``); `vl fit --help` text is kept the same way (``cached_help``).

Everything is keyed by a fingerprint of vl's and datapipes' source files (path, size, modification time)
and of jsonargparse's and Lightning's versions, so an edit or an upgrade makes the records unused rather
than wrong; a class outside vl is never recorded (its source is not in the fingerprint) and is checked by
the full parse only. Records live in ``$VL_CACHE_DIR``, else ``$XDG_CACHE_HOME/vl``, else ``~/.cache/vl``;
deleting them costs only speed. Nothing here may fail a command: an unreadable or unwritable cache is
ignored.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

# A node of an option tree: a dict of child name -> node for a closed mapping of keys, None for a value
# whose keys (if any) are not known in advance.
Tree = Optional[dict]

RECORDED_PACKAGES = ("vl.", "datapipes.")  # classes whose source the fingerprint covers
# The classes every run records beside the ones its command line names: the pretraining and task modules
# and the data module, so the first mistake in any shipped config is found at once.
KNOWN_CLASSES = (
    "vl.lit.PretrainModule",
    "vl.lit.VideoTextDataModule",
    "vl.tasks.RetrievalModule",
    "vl.tasks.QAModule",
    "vl.tasks.MultipleChoiceModule",
    "vl.tasks.CaptioningModule",
)
STRUCTURAL = ("class_path", "init_args", "dict_kwargs", "help")  # a section's own keys, not the class's options


def cache_dir() -> Path:
    given = os.environ.get("VL_CACHE_DIR")
    if given:
        return Path(given)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "vl"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A hash that changes whenever a recorded option or help text could: vl's and datapipes' source files
    and the versions of jsonargparse and Lightning (``source_fingerprint``)."""
    from importlib import metadata

    roots = []
    for package in ("vl", "datapipes"):
        spec = importlib.util.find_spec(package)
        roots += [(package, Path(p)) for p in ((spec.submodule_search_locations or []) if spec is not None else [])]
    versions = {}
    for dist in ("jsonargparse", "lightning"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    return source_fingerprint(roots, versions)


def source_fingerprint(roots: Sequence[tuple[str, Path]], versions: dict[str, str]) -> str:
    """A hash of each ``.py`` file's relative path, size and modification time under the (name, folder)
    ``roots``, and of ``versions``."""
    digest = hashlib.sha256()
    for name, root in roots:
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            digest.update(f"{name}/{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for dist, version in sorted(versions.items()):
        digest.update(f"{dist}=={version}\n".encode())
    return digest.hexdigest()[:16]


def _options_file() -> Path:
    return cache_dir() / f"options-{fingerprint()}.json"


def _write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` via a temporary file in the same folder (concurrent ranks never see half a file);
    records of other fingerprints of the same kind are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    kind = path.name.split("-", 1)[0]
    for old in path.parent.glob(f"{kind}-*"):
        if fingerprint() not in old.name:
            old.unlink(missing_ok=True)


def recorded_trees() -> dict[str, Tree]:
    """class path -> option tree, as recorded under the current fingerprint; empty when none is."""
    try:
        loaded = json.loads(_options_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def option_tree(class_path: str) -> Tree:
    """The keys jsonargparse accepts under ``init_args`` of ``class_path``, built as LightningCLI builds a
    subclass's arguments (same signature resolution, ``**kwargs`` followed into the calls they feed)."""
    from jsonargparse import ArgumentParser, Namespace

    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "init_args", fail_untyped=False, sub_configs=True)

    def tree(value: Any) -> Tree:
        if isinstance(value, Namespace) and "class_path" not in value:  # a nested class may change: open
            return {key: tree(child) for key, child in vars(value).items()}
        return None

    return tree(parser.get_defaults().init_args)


def record(class_paths: Iterable[Optional[str]]) -> None:
    """Record the option trees of ``class_paths`` (those of vl's packages) and of ``KNOWN_CLASSES`` that the
    current fingerprint has no record of. Called after a command that has loaded Lightning; never raises."""
    try:
        trees = recorded_trees()
        wanted = [c for c in dict.fromkeys([*(c for c in class_paths if c), *KNOWN_CLASSES])
                  if c.startswith(RECORDED_PACKAGES) and c not in trees]
        if not wanted:
            return
        for class_path in wanted:
            try:
                trees[class_path] = option_tree(class_path)
            except Exception:  # a class that is not there: the full parse has said so
                continue
        _write_atomically(_options_file(), json.dumps(trees, sort_keys=True))
    except Exception:  # a read-only home, a full disk: the cache only saves time
        return


def unknown_key(tree: Tree, parts: Sequence[str]) -> Optional[tuple[int, list[str]]]:
    """Where ``parts`` (``["optim", "lrr"]``) leaves ``tree``: (index of the first unknown part, the names
    allowed there), or None when every part is known or reaches an open value."""
    node = tree
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        if part not in node:
            return i, sorted(node)
        node = node[part]
    return None


def suggest_key(parts: Sequence[str], index: int, allowed: Sequence[str]) -> Optional[str]:
    """``parts`` with its unknown part ``index`` replaced by the closest allowed name, dotted; None if none is close."""
    close = difflib.get_close_matches(parts[index], list(allowed), n=1, cutoff=0.6)
    return ".".join([*parts[:index], close[0]]) if close else None


def _help_file(command: str) -> Path:
    columns = shutil.get_terminal_size().columns  # argparse wraps help to the terminal's width
    return cache_dir() / f"help-{fingerprint()}-{command}-{columns}.txt"


def cached_help(command: str) -> Optional[str]:
    """The text `vl COMMAND --help` printed under the current fingerprint and terminal width, if recorded."""
    try:
        return _help_file(command).read_text(encoding="utf-8") or None
    except OSError:
        return None


def record_help(command: str, text: str) -> None:
    try:
        _write_atomically(_help_file(command), text)
    except Exception:
        return
