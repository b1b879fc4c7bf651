"""Backend selection: the one switch between plain PyTorch, Triton kernels and the CUDA extension.

``VIDEOGPT_FAST_BACKEND`` (environment) or :func:`use_backend` (context manager) sets one of

* ``auto``   - the fastest implementation available for the tensor's device (default);
* ``torch``  - plain PyTorch, runs everywhere;
* ``triton`` - Triton kernels (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``);
* ``cuda``   - the compiled extension ``videogpt_fast._C`` for the ops it has (decode attention,
  codebook search); the ops it does not have (axial and block-sparse attention, the fused codebook
  statistics) run as under ``auto``, said once per op at INFO level.

An explicitly requested backend that cannot run an op it implements raises
:class:`BackendUnavailableError`; there is never a silent fallback. Which implementation ran is
logged at DEBUG level on the logger ``videogpt_fast.backends``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import threading
from typing import Iterator, Optional

import torch

from .kernels._interpreter import interpret as triton_interpret

BACKENDS = ("auto", "torch", "triton", "cuda")
ENV_VAR = "VIDEOGPT_FAST_BACKEND"
log = logging.getLogger(__name__)
_local = threading.local()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op on this input."""


def _validate(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: {ENV_VAR} must be one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The backend in force: the innermost :func:`use_backend`, else ``$VIDEOGPT_FAST_BACKEND``,
    else ``auto``."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return _validate(os.environ.get(ENV_VAR, "auto"))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the enclosed code with backend ``name`` (one of :data:`BACKENDS`)."""
    name = _validate(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton is importable (it need not have a GPU: see :func:`triton_interpret`)."""
    try:
        importlib.import_module("triton")
        return True
    except Exception:  # ImportError, or a broken install raising at import
        return False


@functools.lru_cache(maxsize=None)
def cuda_extension():
    """The compiled extension module ``videogpt_fast._C``, or None when it was not built."""
    try:
        return importlib.import_module("videogpt_fast._C")
    except ImportError:
        return None


def triton_usable(device: torch.device) -> Optional[str]:
    """None if Triton kernels can run on ``device``, else the reason they cannot."""
    if not triton_available():
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpret():
            return None
        return f"Triton kernels need a CUDA tensor (got device {device}); set TRITON_INTERPRET=1 to run them on CPU"
    # the interpreter reads host memory: a meta (or other) tensor failed deep inside it
    return f"Triton kernels need a CUDA tensor, or a CPU one under TRITON_INTERPRET=1 (got device {device})"


def cuda_usable(device: torch.device, op: str) -> Optional[str]:
    """None if the CUDA extension implements ``op`` and can run on ``device``, else why not."""
    ext = cuda_extension()
    if ext is None:
        return ("the CUDA extension videogpt_fast._C is not built (install with a CUDA toolkit and "
                "VIDEOGPT_FAST_BUILD_CUDA=1, or call videogpt_fast.csrc_build.load())")
    if device.type != "cuda":
        return f"the CUDA extension needs a CUDA tensor (got device {device})"
    if not hasattr(torch.ops.videogpt_fast, op):
        return f"the CUDA extension has no op {op!r}"
    return None


_SAID: set = set()  # ops whose backend-cuda delegation was logged


def _auto(op: str, device: torch.device, available: tuple) -> str:
    """``auto``'s choice: on CUDA tensors the first usable of ``available`` (in its order, the op's
    preference), else torch."""
    if device.type == "cuda":
        for backend in available:
            why = triton_usable(device) if backend == "triton" else cuda_usable(device, op)
            if why is None:
                return backend
    return "torch"


def resolve(op: str, device: torch.device, available: tuple, auto_order: Optional[tuple] = None) -> str:
    """Pick the implementation of ``op`` for a tensor on ``device``.

    ``available`` lists the backends that implement ``op`` (besides ``torch``, which always does),
    in the op's order of preference. ``auto`` takes the first usable of ``auto_order`` (default
    ``available``; an op leaves out a backend measured slower than torch for the inputs' dtype) on
    CUDA tensors, else torch; ``cuda`` does the
    same for ops the extension lacks. A named backend that cannot run an op it implements raises
    :class:`BackendUnavailableError`.
    """
    if auto_order is not None and not set(auto_order) <= set(available):
        raise ValueError(f"resolve({op!r}): auto_order {auto_order} names a backend outside available {available}")
    wanted = get_backend()
    if wanted == "auto":
        chosen = _auto(op, device, available if auto_order is None else auto_order)
    elif wanted == "torch":
        chosen = "torch"
    elif wanted == "cuda" and "cuda" not in available:
        chosen = _auto(op, device, available if auto_order is None else auto_order)
        if op not in _SAID:
            _SAID.add(op)
            log.info("backend cuda: the CUDA extension has no %s; it runs on %s (as under auto)", op, chosen)
    else:
        if wanted not in available:
            raise BackendUnavailableError(f"backend {wanted!r} has no implementation of {op}; "
                                          f"available: torch, {', '.join(available) or 'none'}")
        why = triton_usable(device) if wanted == "triton" else cuda_usable(device, op)
        if why is not None:
            raise BackendUnavailableError(f"{ENV_VAR}={wanted} requested for {op} but {why}")
        chosen = wanted
    # not while torch.compile traces: a logging call there is a graph break in every op call
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("%s: backend %s (requested %s, device %s)", op, chosen, wanted, device)
    return chosen
