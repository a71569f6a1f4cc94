"""Name -> constructor registries for every swappable part, filled at import time (as timm's).

Each model family registers its sizes as short functions::

    @VIDEO_ENCODERS.register(VideoViT)
    def vit_st_tiny(**kw) -> VideoViT:
        return build(VideoViT, dict(embed_dim=128, depth=2, num_heads=2), kw)

``Registry.create(name, **kw)`` checks every option against the constructor's signature before
building, so a typo fails with a ``ValueError`` that names the bad key, the part and the valid keys.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered name: the size function and the class whose ``__init__`` it forwards to."""

    fn: Callable[..., Any]
    cls: type | None  # None: the options are the function's own keyword parameters


class Registry:
    """Maps names to constructors for one part (``video``, ``text``, ``fusion``, ``model``)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self._entries: dict[str, Entry] = {}

    def register(self, cls: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``fn`` under its own name; ``cls`` is the class it builds."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            if fn.__name__ in self._entries:
                raise ValueError(f"{self.part} {fn.__name__!r} is registered twice")
            self._entries[fn.__name__] = Entry(fn, cls)
            return fn

        return wrap

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def valid_options(self, name: str, reserved: Iterable[str] = ()) -> list[str]:
        """Keyword options a user may pass to ``name`` (``reserved`` ones are set by the caller)."""
        entry = self._entry(name)
        target = entry.cls.__init__ if entry.cls is not None else entry.fn
        params = inspect.signature(target).parameters.values()
        keep = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        skip = {"self", *reserved}
        return sorted(p.name for p in params if p.kind in keep and p.name not in skip)

    def check_options(self, name: str, options: dict[str, Any], reserved: Iterable[str] = ()) -> None:
        """Raise ``ValueError`` naming the first unknown key in ``options``."""
        valid = self.valid_options(name, reserved)
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"unknown {self.part} option {key!r} for {self.part} {name!r}; valid options: "
                    f"{', '.join(valid)}"
                )

    def create(self, name: str, *, reserved: dict[str, Any] | None = None, **options: Any) -> Any:
        """Build ``name`` with user ``options`` (checked) and caller-set ``reserved`` options."""
        reserved = reserved or {}
        self.check_options(name, options, reserved)
        return self._entry(name).fn(**options, **reserved)

    def get(self, name: str) -> Callable[..., Any]:
        """The registered function for ``name`` (``ValueError`` listing the registered names if unknown)."""
        return self._entry(name).fn

    def _entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.part} {name!r}; registered {self.part}s: {', '.join(self.names())}"
            )
        return self._entries[name]


def build(cls: Callable[..., T], defaults: dict[str, Any], overrides: dict[str, Any]) -> T:
    """``cls(**defaults)`` with ``overrides`` taking precedence: the body of every size function."""
    return cls(**{**defaults, **overrides})


VIDEO_ENCODERS = Registry("video")
TEXT_ENCODERS = Registry("text")
FUSIONS = Registry("fusion")
MODELS = Registry("model")
