"""Config files as vl reads them, without importing torch or Lightning: a file may override a base file
(``base: _base_/retrieval.yaml``) and set ``vars`` its sections use (``resolve_config_bases``). LightningCLI
parses the merged mapping (vl.lit.cli); `vl`'s checks that run before Lightning loads (vl.cli) read the same."""

from __future__ import annotations

import os
import re
from copy import deepcopy
from pathlib import Path
from typing import Any, Sequence

BASE_KEY = "base"  # a config's own key: the file it overrides, relative to the config (a base may have a base)
VARS_KEY = "vars"  # a config's values for ``${vars.NAME}`` in its sections (e.g. inside a list it need not repeat)
MISSING = "???"  # a value a base leaves to the configs that use it (OmegaConf's mark for a mandatory value)
_VAR = re.compile(r"\$\{vars\.([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigBaseError(ValueError):
    """A config's ``base`` or ``vars`` is wrong: a missing file, a cycle, an unknown variable, a value left unset."""


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory when it is below it."""
    try:
        shown = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if shown.startswith("..") else shown


def _read_mapping(path: Path) -> dict[str, Any] | None:
    """The YAML mapping in ``path``, read by OmegaConf's loader (jsonargparse's omegaconf mode reads configs
    with it: ``1e-5`` is a float) with ``${...}`` interpolations left as text; None when it is not a mapping."""
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # YAML syntax, OmegaConf's own checks
        raise ConfigBaseError(f"{_shown(path)}: not a readable YAML config: {' '.join(str(e).split())}") from e
    return loaded if isinstance(loaded, dict) else None


def merge_config(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``: mappings merge key by key, recursively; anything else, lists included,
    replaces the base's value whole (a child that writes ``trainer.callbacks`` writes the whole list; to change
    one value inside a base's list, the base interpolates a ``vars`` entry there). A mapping whose
    ``class_path`` the override changes is replaced whole too: the base's ``init_args`` belong to another class.
    Neither argument is modified."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return deepcopy(override)
    if "class_path" in base and "class_path" in override and base["class_path"] != override["class_path"]:
        return deepcopy(override)
    merged = deepcopy(base)
    for key, value in override.items():
        merged[key] = merge_config(base[key], value) if key in base else deepcopy(value)
    if "class_path" in merged:  # first, as written by hand and by --print_config, even when a base lacks it
        merged = {"class_path": merged.pop("class_path"), **merged}
    return merged


def _merged_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """``path``'s mapping over its base's (and theirs), with the files read, config first."""
    chain = (*chain, path)
    config = _read_mapping(path)
    if config is None:
        raise ConfigBaseError(f"{_shown(path)}: a config file must be a YAML mapping (model:, data:, trainer:, ...)")
    if BASE_KEY not in config:
        return config, (path,)
    base_name = config.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name:
        raise ConfigBaseError(f"{_shown(path)}: {BASE_KEY}: {base_name!r} must name one YAML file, relative to "
                              f"this file (e.g. {BASE_KEY}: _base_/retrieval.yaml)")
    base_path = (path.parent / base_name).resolve()
    if base_path in chain:
        loop = " -> ".join(_shown(p) for p in (*chain[chain.index(base_path):], base_path))
        raise ConfigBaseError(f"{_shown(path)}: {BASE_KEY}: {base_name} makes a cycle of bases: {loop}")
    if not base_path.is_file():
        raise ConfigBaseError(f"{_shown(path)}: {BASE_KEY}: {base_name}: no such file ({_shown(base_path)})")
    base, files = _merged_with_bases(base_path, chain)
    return merge_config(base, config), (path, *files)


def _substitute_vars(value: Any, variables: dict[str, Any], where: str, key: str = "") -> Any:
    """``value`` with each ``${vars.NAME}`` replaced: a string that is one reference takes the variable's value
    (null, a number), one that embeds references takes their text. A value left ``???`` is an error."""
    if isinstance(value, dict):
        return {k: _substitute_vars(v, variables, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_vars(v, variables, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value == MISSING:
        raise ConfigBaseError(f"{where}: {key} must be set (it is {MISSING}, a value each config gives)")
    for name in _VAR.findall(value):
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise ConfigBaseError(f"{where}: {key}: ${{vars.{name}}} is not set (vars: {known})")
    whole = _VAR.fullmatch(value)
    if whole:
        return _substitute_vars(deepcopy(variables[whole.group(1)]), variables, where, key)
    return _VAR.sub(lambda m: str(variables[m.group(1)]), value)


def describe_config_files(files: Sequence[Path]) -> str:
    """``a.yaml with bases _base_/qa.yaml, _base_/finetune.yaml``: a config and the bases merged into it."""
    bases = f" with bases {', '.join(_shown(f) for f in files[1:])}" if len(files) > 1 else ""
    return _shown(files[0]) + bases


def resolve_config_bases(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config in ``path`` as LightningCLI is to parse it, when the file has a ``base`` or ``vars``;
    None when it has neither (or is no readable YAML mapping): jsonargparse then reads the file itself, as
    for any config, and reports its problems.

    A fine-tuning config overrides only what differs from a shared file (``configs/finetune/_base_/``):
    ``base: _base_/retrieval.yaml`` names it, relative to the config; a base may have its own base (a chain,
    merged from the far end); a cycle, a missing file or an unset ``???`` value is a ConfigBaseError naming
    the files. Merging is ``merge_config``: mappings key by key, lists whole. jsonargparse alone cannot do
    this: a second ``-c`` file replaces each nested section (``trainer.logger``...) that it names.

    ``vars`` holds values the sections use as ``${vars.NAME}``, e.g. the ModelCheckpoint's ``monitor`` inside
    the base's ``trainer.callbacks`` list, which a config sets in one line without repeating the list. They
    are substituted here and ``vars`` and ``base`` are dropped; every other ``${...}`` (such as
    ``${trainer.default_root_dir}``) is left for LightningCLI's omegaconf mode, which resolves it over the
    merged config, so a config that changes ``trainer.default_root_dir`` moves its logs and checkpoints."""
    resolved = _resolve_config_bases(Path(path))
    return None if resolved is None else resolved[0]


def _resolve_config_bases(path: Path) -> tuple[dict[str, Any], tuple[Path, ...]] | None:
    """``resolve_config_bases``, with the files merged (the config first, then its base, the base's base)."""
    try:
        config = _read_mapping(path) if path.is_file() else None
    except ConfigBaseError:  # not YAML: jsonargparse says so, with its own message
        return None
    if config is None or (BASE_KEY not in config and VARS_KEY not in config):
        return None
    merged, files = _merged_with_bases(path.resolve(), ())
    where = describe_config_files(files)
    variables = merged.pop(VARS_KEY, None) or {}
    if not isinstance(variables, dict):
        raise ConfigBaseError(f"{where}: {VARS_KEY} must be a mapping of NAME: value")
    return _substitute_vars(merged, variables, where), files


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a config file gives LightningCLI, its bases merged in (``resolve_config_bases``); what
    tests and scripts read instead of ``yaml.safe_load``, which would see only the file's own lines.
    ``${...}`` interpolations other than ``${vars.NAME}`` stay unresolved."""
    resolved = resolve_config_bases(path)
    if resolved is not None:
        return resolved
    loaded = _read_mapping(Path(path))
    if loaded is None:
        raise ConfigBaseError(f"{path}: a config file must be a YAML mapping")
    return loaded
