"""videogpt_fast: a fast, faithful drop-in for VideoGPT (``import videogpt_fast as videogpt``).

Public names match the original package: :class:`VQVAE`, :class:`VideoGPT`, :func:`load_vqvae`,
:func:`load_videogpt`, :func:`load_i3d_pretrained`, :func:`download`, :class:`VideoData`. They are
imported lazily so that ``import videogpt_fast`` stays cheap. As in the original, the name
``download`` is the function even after the submodule ``videogpt_fast.download`` is imported.
Code written for the original runs unchanged through :mod:`videogpt_fast.compat`.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "VQVAE": ".vqvae",
    "VideoGPT": ".gpt",
    "load_vqvae": ".checkpoint",
    "load_videogpt": ".checkpoint",
    "load_i3d_pretrained": ".fvd",
    "download": ".checkpoint",
    "VideoData": ".data",
    "use_backend": ".backends",
    "get_backend": ".backends",
}

__all__ = sorted(_LAZY) + ["__version__"]

# The original's submodules, reachable as attributes as after the original's ``import videogpt``.
_SUBMODULES = ("attention", "data", "fvd", "gpt", "resnet", "utils", "vqvae")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'videogpt_fast' has no attribute {name!r}")


def __dir__():
    return __all__


class _Package(types.ModuleType):
    """The package's module type: importing the submodule ``videogpt_fast.download`` does not
    rebind the package attribute ``download`` (the function), as in the original ``videogpt``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "download" and isinstance(value, types.ModuleType):
            return  # the submodule stays importable through sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
