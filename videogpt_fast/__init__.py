"""videogpt_fast: a fast, faithful drop-in for VideoGPT (``import videogpt_fast as videogpt``).

Public names match the original package: :class:`VQVAE`, :class:`VideoGPT`, :func:`load_vqvae`,
:func:`load_videogpt`, :func:`load_i3d_pretrained`, :class:`VideoData`. They are imported lazily so
that ``import videogpt_fast`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "VQVAE": ".vqvae",
    "VideoGPT": ".gpt",
    "load_vqvae": ".checkpoint",
    "load_videogpt": ".checkpoint",
    "load_i3d_pretrained": ".fvd",
    "VideoData": ".data",
    "use_backend": ".backends",
    "get_backend": ".backends",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'videogpt_fast' has no attribute {name!r}")


def __dir__():
    return __all__
