"""Just-in-time build of the CUDA extension ``videogpt_fast._C`` from ``csrc/``.

``pip install`` builds the extension when a CUDA toolkit and a CUDA build of torch are present (see
``setup.py``). Where it was not built, :func:`load` compiles the same sources with
:func:`torch.utils.cpp_extension.load` (cached in ``$TORCH_EXTENSIONS_DIR``), registers the module as
``videogpt_fast._C`` and makes :func:`videogpt_fast.backends.cuda_extension` see it, so that backend
``cuda`` and ``auto`` select its op (``torch.ops.videogpt_fast.decode_attention``).
"""
from __future__ import annotations

import glob
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Optional

import torch

from . import backends

__all__ = ["load", "sources", "csrc_dir", "why_unbuildable"]

log = logging.getLogger(__name__)
MODULE_NAME = "videogpt_fast._C"
JIT_NAME = "videogpt_fast_C"  # a valid identifier: the name PYBIND11_MODULE gives the module


def csrc_dir() -> Path:
    """The ``csrc/`` folder (``$VIDEOGPT_FAST_CSRC`` or next to the package in a source checkout)."""
    env = os.environ.get("VIDEOGPT_FAST_CSRC")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "csrc"


def sources() -> List[str]:
    """The extension's C++/CUDA sources."""
    d = csrc_dir()
    return sorted(glob.glob(str(d / "*.cpp"))) + sorted(glob.glob(str(d / "*.cu")))


def why_unbuildable() -> Optional[str]:
    """None if :func:`load` can build the extension here, else the reason it cannot."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME to a toolkit with nvcc)"
    if not sources():
        return f"no sources in {csrc_dir()} (a source checkout is needed; set VIDEOGPT_FAST_CSRC)"
    return None


def load(verbose: bool = False, extra_cuda_cflags: Optional[List[str]] = None) -> ModuleType:
    """Return ``videogpt_fast._C``, JIT-compiling ``csrc/`` when it is not installed.

    Raises:
        RuntimeError: when the extension is not installed and cannot be built here (no CUDA build of
            torch, no device, no toolkit or no sources), with the reason.
    """
    ext = backends.cuda_extension()
    if ext is not None:
        return ext
    why = why_unbuildable()
    if why is not None:
        raise RuntimeError(f"cannot build the CUDA extension {MODULE_NAME}: {why}")
    from torch.utils import cpp_extension

    flags = ["-O3", "--use_fast_math", "-lineinfo"] + list(extra_cuda_cflags or [])
    log.info("building %s from %s (first build takes a few minutes)", MODULE_NAME, csrc_dir())
    module = cpp_extension.load(name=JIT_NAME, sources=sources(), extra_cflags=["-O3"],
                                extra_cuda_cflags=flags, verbose=verbose)
    sys.modules[MODULE_NAME] = module
    backends.cuda_extension.cache_clear()
    if backends.cuda_extension() is None or not hasattr(torch.ops.videogpt_fast, "decode_attention"):
        raise RuntimeError(f"{MODULE_NAME} was built but its ops are not registered under torch.ops.videogpt_fast")
    return module
