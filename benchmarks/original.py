"""The original ``videogpt`` package (wilson1yan/VideoGPT) as a benchmark implementation.

Used only when the user has it installed (this repo never installs it: its PyTorch-Lightning 1.3
pin does not install on current stacks). Each builder returns the original's module holding the
same weights as ours, so a case can run ``original`` beside ``reference`` and the fast paths on
the same inputs; :func:`add_original` records why not when the package (or, for block-sparse
attention, DeepSpeed) is missing.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

import torch

from videogpt_fast.utils import as_namespace

_CACHE: dict = {}


def original_package() -> Tuple[Optional[ModuleType], Optional[str]]:
    """``(videogpt, None)`` when the original package imports, else ``(None, reason)``."""
    if "pkg" not in _CACHE:
        try:
            pkg = importlib.import_module("videogpt")
            for sub in ("attention", "vqvae", "gpt"):
                importlib.import_module(f"videogpt.{sub}")
            _CACHE["pkg"] = (pkg, None)
        except Exception as e:  # ImportError, or its own imports (Lightning, scikit-video) failing
            _CACHE["pkg"] = (None, f"the original videogpt package is not importable ({type(e).__name__}: {e})")
    return _CACHE["pkg"]


def add_original(case: Any, build: Callable[[ModuleType], Callable[[], Any]]) -> None:
    """Add ``case.impls['original'] = build(videogpt)``, or record in ``case.skipped`` why not."""
    pkg, why = original_package()
    if pkg is None:
        case.skipped["original"] = why
        return
    try:
        case.impls["original"] = build(pkg)
    except Exception as e:  # e.g. DeepSpeed's sparse ops missing: say so in the results
        case.skipped["original"] = f"{type(e).__name__}: {e}"


def bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn`` with its arguments fixed (a case implementation takes none)."""
    return lambda: fn(*args)


def vqvae(pkg: ModuleType, ours: torch.nn.Module) -> torch.nn.Module:
    """The original VQVAE with ``ours``' weights, on its device and in its train/eval mode."""
    model = pkg.vqvae.VQVAE(as_namespace(ours.args, copy=True))
    model.load_state_dict(ours.state_dict(), strict=True)
    model.codebook._need_init = bool(ours.codebook._need_init)
    return model.to(next(ours.parameters()).device).train(ours.training)


def videogpt(pkg: ModuleType, ours: torch.nn.Module) -> torch.nn.Module:
    """The original VideoGPT with ``ours``' weights. Its constructor loads the VQ-VAE with
    ``VQVAE.load_from_checkpoint(args.vqvae)``, which Lightning 2.x refuses for its 1.3
    checkpoints: for the call, that classmethod hands over the original VQVAE built by
    :func:`vqvae` with the same weights (``args.vqvae`` names an existing file so the constructor
    takes that branch and downloads nothing)."""
    args = as_namespace(ours.args, copy=True)
    twin = vqvae(pkg, ours.vqvae)
    args.vqvae = __file__
    cls = pkg.vqvae.VQVAE
    own = cls.__dict__.get("load_from_checkpoint")
    cls.load_from_checkpoint = classmethod(lambda c, *a, **k: twin)
    try:
        model = pkg.gpt.VideoGPT(args)
    finally:
        if own is None:
            del cls.load_from_checkpoint
        else:
            cls.load_from_checkpoint = own
    model.load_state_dict(ours.state_dict(), strict=True)
    model.vqvae.codebook._need_init = False
    return model.to(next(ours.parameters()).device).train(ours.training)


def axial_attention(pkg: ModuleType, n_dim: int, dim: int) -> Callable[..., torch.Tensor]:
    """``f(q, k, v)``: the original AxialAttention along ``dim`` of (B, heads, *spatial, d)."""
    module = pkg.attention.AxialAttention(n_dim, dim - 2)
    return lambda q, k, v: module(q, k, v, None, None)


def sparse_attention(pkg: ModuleType, shape, heads: int, block: int) -> Callable[..., torch.Tensor]:
    """``f(q, k, v)``: the original SparseAttention (causal, strided layout; needs DeepSpeed's
    sparse-attention ops, which this raises about when they do not import)."""
    module = pkg.attention.SparseAttention(tuple(shape), heads, True, block=block)
    module.get_ops()
    return lambda q, k, v: module(q.unflatten(2, tuple(shape)), k.unflatten(2, tuple(shape)),
                                  v.unflatten(2, tuple(shape)), None, None).flatten(2, -2)


def codebook_search(pkg: ModuleType, e: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> codes``: the original Codebook.forward in eval mode on (N, D) inputs laid out as
    its (B, D, T, H, W) latents (it also computes the lookup and commitment loss, as it always does)."""
    cb = pkg.vqvae.Codebook(e.shape[0], e.shape[1]).to(device=e.device, dtype=e.dtype).eval()
    cb.embeddings.data.copy_(e)
    cb._need_init = False
    return lambda x: cb(x.t().reshape(1, x.shape[1], x.shape[0], 1, 1))["encodings"].flatten()
