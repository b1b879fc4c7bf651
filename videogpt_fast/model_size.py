"""How big a model its hyper-parameters describe, found before it is built.

A VQ-VAE with ``n_res_layers=10**6`` or a prior with ``layers=10**8`` takes hours to build even on the
meta device (one Python module per layer), and one with ``n_hiddens=10**8`` exhausts memory when it is
built for real. :func:`estimated_params` counts the parameters of a copy with one and two repeated
layers on the meta device (no memory, milliseconds) and extrapolates linearly, which is exact because
the repeated layers are identical. :func:`check_model_memory` compares that with the memory of the
device the model is built on.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Callable, Optional

import torch

__all__ = ["estimated_params", "memory_bytes", "check_model_memory", "out_of_memory_message",
           "report_out_of_memory"]

#: bytes per parameter while training in fp32 with Adam: weights, gradients, two moment buffers
TRAIN_BYTES_PER_PARAM = 16


def _count(build: Callable[[argparse.Namespace], torch.nn.Module], args: argparse.Namespace) -> int:
    with torch.device("meta"):
        model = build(args)
    return sum(t.numel() for t in model.state_dict().values())


def estimated_params(build: Callable[[argparse.Namespace], torch.nn.Module], args: argparse.Namespace,
                     layers_attr: str) -> int:
    """Number of values in the state dict of ``build(args)``, built only with ``args.<layers_attr>``
    set to 1 and 2 (on the meta device) and extrapolated to its real value. Errors of ``build``
    (invalid hyper-parameters) propagate."""
    n = getattr(args, layers_attr)
    if not isinstance(n, int) or n <= 2:
        return _count(build, args)
    one, two = copy.copy(args), copy.copy(args)
    setattr(one, layers_attr, 1)
    setattr(two, layers_attr, 2)
    c1, c2 = _count(build, one), _count(build, two)
    return c1 + (n - 1) * (c2 - c1)


def memory_bytes(device: str = "auto") -> Optional[int]:
    """Total memory of ``device`` (``auto``/``cuda[:N]``: that GPU when CUDA is available, else the
    machine's RAM); None when it cannot be told."""
    if device != "cpu" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if device.startswith("cuda:") else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_memory(n_params: int, what: str, flags: str, device: str = "auto",
                       bytes_per_param: int = TRAIN_BYTES_PER_PARAM) -> None:
    """ValueError when ``n_params`` parameters (``bytes_per_param`` each) exceed ``device``'s memory;
    the message names the model (``what``), the sizes and the ``flags`` that set them."""
    total = memory_bytes(device)
    need = n_params * bytes_per_param
    if total is not None and need > total:
        raise ValueError(f"{what} would have {n_params:,} parameters, {need / 2**30:.1f} GiB with gradients and "
                         f"optimiser state, more than the {total / 2**30:.1f} GiB of memory of this device: lower "
                         f"{flags}")


def out_of_memory_message(e: BaseException) -> Optional[str]:
    """A one-line message when ``e`` is an allocation failure (``MemoryError``, CUDA
    ``OutOfMemoryError``, the CPU allocator's ``can't allocate memory`` RuntimeError), else None."""
    text = str(e)
    if not (isinstance(e, (MemoryError, torch.OutOfMemoryError))
            or (isinstance(e, RuntimeError) and "can't allocate memory" in text)):
        return None
    first = " ".join(text.split()).split(". ")[0][:200] or type(e).__name__
    return (f"out of memory ({first}): lower --batch_size, --resolution, --sequence_length or the model size "
            "flags")


def report_out_of_memory(e: BaseException, prog: str) -> int:
    """For a command's ``main``: print ``PROG: error: out of memory (...)`` on stderr and return the
    exit status 2 when ``e`` is an allocation failure; re-raise ``e`` otherwise."""
    message = out_of_memory_message(e)
    if message is None:
        raise e
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
