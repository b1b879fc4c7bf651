"""The one dispatch point for VideoGPT's hot operations.

Models call these functions and never import a kernel. :data:`REGISTRY` maps each op to its
implementations: the plain-PyTorch ``<op>_reference`` of :mod:`videogpt_fast.kernels.reference`
(backend ``torch``, and what every kernel is tested against), the Triton kernel in
``videogpt_fast.kernels`` (the top-level ``kernels/`` folder) and the CUDA op of
``videogpt_fast._C`` (``csrc/``), where they exist. :mod:`videogpt_fast.backends` picks one per
call. Inputs are validated here, once, before any implementation runs (the kernels keep only
cheap checks of their own arguments, for direct callers).

Shapes follow the package conventions: attention tensors are (B, heads, *positions, head_dim).
"""
from __future__ import annotations

import importlib
import operator
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .backends import BackendUnavailableError, cuda_usable, resolve, triton_usable
from .kernels.reference import (axial_attention_reference, blocksparse_attention_reference, code_counts,
                                codebook_nearest_reference, codebook_nearest_with_stats_reference,
                                decode_attention_reference, decode_layout_row, expand_layout, spatial_dim)

__all__ = ["Op", "REGISTRY", "backends_of", "implementation", "codebook_nearest", "codebook_nearest_with_stats",
           "code_counts", "axial_attention", "blocksparse_attention", "check_layout", "decode_attention",
           "decode_attention_backend"]


@dataclass(frozen=True)
class Op:
    """One op's implementations: ``reference`` (plain PyTorch, backend ``torch``), ``triton``
    (``"module.function"`` in ``videogpt_fast.kernels``) and ``cuda`` (the op's name in
    ``torch.ops.videogpt_fast``), the last two where they exist. ``auto``: the order in which
    backend ``auto`` tries them on CUDA tensors (the faster first, as measured in
    ``benchmarks/results``); ``auto_skips``: (backend, dtype) pairs that ``auto`` does not take
    because they measured slower than ``torch`` (a backend named explicitly still runs)."""
    reference: Callable
    triton: Optional[str] = None
    cuda: Optional[str] = None
    auto: Tuple[str, ...] = ("cuda", "triton")
    auto_skips: Tuple[Tuple[str, torch.dtype], ...] = ()

    def __post_init__(self):
        # ``backends`` comes from ``auto``: an implementation missing there would be unreachable, even by name
        implemented = {b for b in ("cuda", "triton") if getattr(self, b) is not None}
        if len(set(self.auto)) != len(self.auto) or not implemented <= set(self.auto) <= {"cuda", "triton"}:
            raise ValueError(f"Op.auto must list each implemented backend of 'cuda', 'triton' once, got {self.auto} "
                             f"(implemented: {', '.join(sorted(implemented)) or 'none'})")

    @property
    def backends(self) -> Tuple[str, ...]:
        """The backends besides ``torch`` that implement the op, in ``auto``'s order."""
        return tuple(b for b in self.auto if getattr(self, b) is not None)

    def auto_order(self, dtype: Optional[torch.dtype]) -> Tuple[str, ...]:
        """The backends ``auto`` tries for inputs of ``dtype``, in order."""
        return tuple(b for b in self.backends if (b, dtype) not in self.auto_skips)


#: op name -> its implementations. Adding a kernel adds one entry here.
REGISTRY: Dict[str, Op] = {
    # no CUDA op: the one csrc/ had until 2026-11-30 was slower than the Triton search in every timed case on
    # an H200 (benchmarks/results/nvidia-h200-2026-11-30, same runs: bf16/fp16 at N=65536 K=2048 D=256
    # 4.5-5.6x, e.g. 0.82 vs 4.60 ms; N=16384 1.4-2.5x; its fp32 N=65536 row failed the then-exact check)
    # and is not exact, so it was deleted
    "codebook_nearest": Op(codebook_nearest_reference, "codebook.codebook_nearest"),
    "codebook_nearest_with_stats": Op(codebook_nearest_with_stats_reference, "codebook.codebook_nearest_with_stats"),
    # fp32: SDPA (torch) 3.10 ms vs Triton 5.79 ms fwd+bwd on an H200 (B=16 heads=2 4x32x32 d=120,
    # benchmarks/results/nvidia-h200-2026-11-30); bf16/fp16: Triton 1.1-1.5x SDPA
    "axial_attention": Op(axial_attention_reference, "axial_attention.axial_attention",
                          auto_skips=(("triton", torch.float32),)),
    "blocksparse_attention": Op(blocksparse_attention_reference, "blocksparse_attention.blocksparse_attention"),
    # the kernel's unchecked entry: decode_attention below validates the inputs once per call
    "decode_attention": Op(decode_attention_reference,
                           "blocksparse_attention.blocksparse_decode_attention_unchecked", "decode_attention"),
}


def backends_of(op: str) -> Tuple[str, ...]:
    """The backends besides ``torch`` that implement ``op`` (a key of :data:`REGISTRY`)."""
    return REGISTRY[op].backends


def _kernel_module(name: str):
    return importlib.import_module(f"videogpt_fast.kernels.{name}")


def implementation(op: str, backend: str) -> Callable:
    """The function that runs ``op`` on ``backend`` (``torch``, ``triton`` or ``cuda``); unchecked
    inputs (the public functions below validate them)."""
    entry = REGISTRY[op]
    if backend == "torch":
        return entry.reference
    if backend == "cuda":
        return getattr(torch.ops.videogpt_fast, entry.cuda)
    module, fn = entry.triton.rsplit(".", 1)
    return getattr(_kernel_module(module), fn)


def _resolve(op: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    return resolve(op, device, backends_of(op), REGISTRY[op].auto_order(dtype))


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _require_tensors(op: str, names: str, *values) -> None:
    """TypeError unless every one of ``values`` (named ``names``, comma-separated) is a tensor."""
    for name, value in zip(names.split(", "), values):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _int_arg(op: str, name: str, value) -> int:
    """``value`` as a Python int; TypeError for a float, bool or other non-integer (e.g. 16.0)."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r} ({type(value).__name__})") from None


def _check_head_dims(op: str, q: torch.Tensor, v: torch.Tensor) -> None:
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"{op}: head dims must be >= 1, got q/k {q.shape[-1]}, v {v.shape[-1]}")


def _check_tensors(op: str, names: str, *tensors: torch.Tensor) -> None:
    """One floating dtype and one device for all of ``tensors`` (named ``names``, comma-separated)."""
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) != 1 or not tensors[0].is_floating_point():
        raise ValueError(f"{op}: {names} must share one floating dtype, got "
                         f"{', '.join(str(t.dtype) for t in tensors)}")
    if len(devices) != 1:
        raise ValueError(f"{op}: {names} must be on one device, got {', '.join(str(t.device) for t in tensors)}")


def _check_triton(op: str, module: str, dtype: torch.dtype, head_dims: Tuple[int, ...] = (),
                  block: Optional[int] = None) -> None:
    """The Triton kernel's limits (its module's ``DTYPES``, ``MAX_HEAD_DIM``, ``BLOCKS``)."""
    kernel = _kernel_module(module)
    if dtype not in kernel.DTYPES:
        raise ValueError(f"{op}: the Triton kernel takes dtype float16, bfloat16 or float32, got {dtype}")
    if head_dims and not all(1 <= d <= kernel.MAX_HEAD_DIM for d in head_dims):
        raise ValueError(f"{op}: the Triton kernel supports head dims in [1, {kernel.MAX_HEAD_DIM}], "
                         f"got {', '.join(map(str, head_dims))}")
    if block is not None and block not in kernel.BLOCKS:
        raise ValueError(f"{op}: the Triton kernel's block must be one of {kernel.BLOCKS}, got {block}")


def check_layout(layout: torch.Tensor, seq_len: int, block: int, n_head: int,
                 op: str = "blocksparse_attention") -> None:
    """Check a 0/1 block layout for sequence length ``seq_len``: (L/block, L/block) or
    (1 or n_head, L/block, L/block), ``block`` dividing ``seq_len``. Shape checks only (no device
    work, as per-call validation needs).

    Raises:
        ValueError: naming the violated constraint.
    """
    if not isinstance(layout, torch.Tensor):
        raise ValueError(f"{op}: layout must be a tensor, got {type(layout)}")
    block = _int_arg(op, "block", block)
    if seq_len < 1:
        raise ValueError(f"{op}: sequence length must be >= 1, got {seq_len}")
    if block <= 0:
        raise ValueError(f"{op}: block must be a positive int (the layout's block size), got {block}")
    if seq_len % block != 0:
        raise ValueError(f"{op}: sequence length {seq_len} is not divisible by block {block}")
    nb = seq_len // block
    if layout.dim() not in (2, 3) or layout.shape[-2:] != (nb, nb) or (layout.dim() == 3 and
                                                                      layout.shape[0] not in (1, n_head)):
        raise ValueError(f"{op}: layout must be ({nb}, {nb}) or ({n_head}, {nb}, {nb}) "
                         f"for L={seq_len}, block={block}, got {tuple(layout.shape)}")


def _check_codebook(op: str, x: torch.Tensor, codebook: torch.Tensor) -> str:
    _require_tensors(op, "x, codebook", x, codebook)
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"{op}: expected x (N, D) and codebook (K, D) with equal D, "
                         f"got shapes {tuple(x.shape)} and {tuple(codebook.shape)}")
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"{op}: codebook must have K >= 1 and D >= 1, got {tuple(codebook.shape)}")
    _check_tensors(op, "x, codebook", x, codebook)
    backend = _resolve(op, x.device, x.dtype)
    if backend == "triton":
        _check_triton(op, "codebook", x.dtype)
    return backend


def _check_attention(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, module: str,
                     block: Optional[int] = None) -> str:
    """Common floating dtype and device of q, k, v, the backend, and the kernel's limits."""
    _check_tensors(op, "q, k, v", q, k, v)
    backend = _resolve(op, q.device, q.dtype)
    if backend == "triton":
        _check_triton(op, module, q.dtype, (q.shape[-1], v.shape[-1]), block)
    return backend


# --------------------------------------------------------------------------------------------
# codebook nearest neighbour
# --------------------------------------------------------------------------------------------
def codebook_nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each row of ``x`` (squared L2, ties to the lowest
    index), as the original's ``argmin(distances)``.

    Args:
        x: (N, D) floating tensor.
        codebook: (K, D) tensor of x's dtype and device, K, D >= 1.
    Returns:
        int64 tensor (N,).
    Raises:
        ValueError: shapes, dtypes or devices that do not fit.
    """
    backend = _check_codebook("codebook_nearest", x, codebook)
    return implementation("codebook_nearest", backend)(x, codebook)


def codebook_nearest_with_stats(x: torch.Tensor, codebook: torch.Tensor):
    """:func:`codebook_nearest` plus the EMA statistics of the assignment.

    Returns:
        codes int64 (N,), counts (K,) and sums (K, D) in x's dtype (see
        :func:`~videogpt_fast.kernels.reference.codebook_nearest_with_stats_reference`); the Triton
        backend computes all three in one kernel (fp32 statistics).
    """
    backend = _check_codebook("codebook_nearest_with_stats", x, codebook)
    codes, counts, sums = implementation("codebook_nearest_with_stats", backend)(x, codebook)
    return codes, counts.to(x.dtype), sums.to(x.dtype)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def axial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """Attention along spatial axis ``dim`` of (B, heads, *spatial, d) tensors, as the original
    AxialAttention computes it. ``dim`` indexes the full tensor (negative counts from the end; the
    original's ``axial_dim=-2`` is W of (B, heads, T, H, W, d)).

    Args:
        q, k: (B, heads, *spatial, d); v: (B, heads, *spatial, dv); one floating dtype and device.
    Returns:
        (B, heads, *spatial, dv) in q's dtype.
    Raises:
        ValueError: shapes, a non-spatial ``dim``, dtypes or devices, or the Triton kernel's
            limits (fp16/bf16/fp32, head dims <= 256) when it is chosen.
    """
    _require_tensors("axial_attention", "q, k, v", q, k, v)
    dim = _int_arg("axial_attention", "dim", dim)
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"axial_attention: q, k must match and v share their leading dims, got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    spatial_dim(q, dim)
    _check_head_dims("axial_attention", q, v)
    backend = _check_attention("axial_attention", q, k, v, "axial_attention")
    return implementation("axial_attention", backend)(q, k, v, dim)


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor,
                          block: int, causal: bool = True) -> torch.Tensor:
    """Block-sparse attention over flattened positions (scale d^-0.5).

    Args:
        q, k, v: (B, heads, L, d), v (B, heads, L, dv); one floating dtype and device.
        layout: 0/1 (L/block, L/block) or (heads or 1, L/block, L/block): query block i sees key
            block j iff ``layout[..., i, j]``; as ``StridedSparsityConfig.make_layout()`` makes it.
        block: block size; L must be divisible by it (Triton: one of 16, 32, 64, 128).
        causal: additionally hide keys after the query (j > i).
    Returns:
        (B, heads, L, dv) in q's dtype; queries that see no key give zeros.
    Raises:
        ValueError: naming the violated constraint.
    """
    _require_tensors("blocksparse_attention", "q, k, v", q, k, v)
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"blocksparse_attention: shape mismatch: expected q, k (B, heads, L, d) and v "
                         f"(B, heads, L, dv) (4-d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_layout(layout, q.shape[2], block, q.shape[1])
    _check_head_dims("blocksparse_attention", q, v)
    backend = _check_attention("blocksparse_attention", q, k, v, "blocksparse_attention", block)
    return implementation("blocksparse_attention", backend)(q, k, v, layout, block, causal)


# --------------------------------------------------------------------------------------------
# decode attention: one query per (batch, head) against a KV cache
# --------------------------------------------------------------------------------------------
def _check_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                            layout: Optional[torch.Tensor], block: int) -> None:
    if q.dim() != 3 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"decode_attention: expected q (B, H, d), k and v (B, H, L, d), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1] or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"decode_attention: shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} (need k (B, H, L, d) and v (B, H, L, dv) matching q (B, H, d))")
    if pos.numel() != 1 or pos.dtype != torch.long:
        raise ValueError(f"decode_attention: pos must be a one-element int64 tensor, got dtype {pos.dtype}, "
                         f"shape {tuple(pos.shape)}")
    if not (q.device == k.device == v.device == pos.device):
        raise ValueError(f"decode_attention: q, k, v, pos must share a device, got {q.device}, {k.device}, "
                         f"{v.device}, {pos.device}")
    if pos.device.type == "cpu" and not torch.compiler.is_compiling() and not 0 <= int(pos) < k.shape[2]:
        # a device pos is not read (no sync), nor is a traced one
        raise ValueError(f"decode_attention: pos must be in [0, {k.shape[2]}) (the cache length), got {int(pos)}")
    _check_tensors("decode_attention", "q, k, v", q, k, v)
    _check_head_dims("decode_attention", q, v)
    if layout is not None:
        check_layout(layout, k.shape[2], block, q.shape[1], op="decode_attention")
        if layout.device != q.device:
            raise ValueError(f"decode_attention: layout on {layout.device} but q on {q.device}")


_DENSE_LAYOUTS: dict = {}


def _dense_decode_layout(L: int, device: torch.device):
    """(all-ones layout, block) standing for dense causal attention, for the block-sparse decode
    kernel; cached so the kernel's layout tables are built once."""
    key = (L, str(device))
    if key not in _DENSE_LAYOUTS:
        block = next((b for b in (128, 64, 32, 16) if L % b == 0), None)
        if block is None:
            raise ValueError(f"decode_attention: the Triton decode kernel needs a cache length divisible "
                             f"by 16, got {L}")
        _DENSE_LAYOUTS[key] = (torch.ones(1, L // block, L // block, dtype=torch.bool, device=device), block)
    return _DENSE_LAYOUTS[key]


@torch.library.custom_op("videogpt_fast_triton::decode_attention", mutates_args=())
def _triton_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                             layout: Optional[torch.Tensor], block: int) -> torch.Tensor:
    """The Triton block-sparse decode kernel (dense: an all-ones layout) as one opaque op, so that
    torch.compile traces a step that calls it and CUDA graphs capture it. The kernel's limits are
    checked here, outside the traced code (the other checks ran in :func:`decode_attention`)."""
    _check_triton("decode_attention", "blocksparse_attention", q.dtype, (q.shape[-1], v.shape[-1]),
                  None if layout is None else block)
    if layout is None:
        layout, block = _dense_decode_layout(k.shape[2], q.device)
    return implementation("decode_attention", "triton")(q.unsqueeze(2), k, v, layout, block, pos).squeeze(2)


@_triton_decode_attention.register_fake
def _(q, k, v, pos, layout, block):
    return q.new_empty((*q.shape[:2], v.shape[-1]))


def decode_attention_backend(device: torch.device) -> str:
    """The backend :func:`decode_attention` runs for tensors on ``device``, resolved now (a step
    that is compiled resolves it once, outside the traced code: resolution reads the
    environment and logs)."""
    return _resolve("decode_attention", device)


def _check_backend(backend: str, device: torch.device) -> str:
    """A ``backend`` passed to :func:`decode_attention`: one of torch, triton, cuda, and usable on
    ``device`` (checked in eager calls; a compiled step resolved it outside the traced code)."""
    if backend not in ("torch",) + backends_of("decode_attention"):
        raise ValueError(f"decode_attention: backend must be one of torch, "
                         f"{', '.join(backends_of('decode_attention'))} (as decode_attention_backend "
                         f"resolves it), got {backend!r}")
    if backend != "torch" and not torch.compiler.is_compiling():
        why = triton_usable(device) if backend == "triton" else cuda_usable(device, "decode_attention")
        if why is not None:
            raise BackendUnavailableError(f"decode_attention: backend {backend!r} was passed but {why}")
    return backend


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                     layout: Optional[torch.Tensor] = None, block: int = 0, *,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Attention of the query at flattened position ``pos`` over the cached keys ``0..pos``.

    Args:
        q: (B, H, d) query of the current position.
        k, v: (B, H, L, d) and (B, H, L, dv) caches (positions after ``pos`` are ignored).
        pos: one-element int64 tensor on the device (a tensor, so CUDA graphs can replay the step);
            in [0, L): a CPU ``pos`` outside raises, a device one (never read on the host, which
            would sync) gives a NaN output with every backend.
        layout: optional 0/1 block-sparse layout (L/block, L/block) or (H or 1, L/block, L/block)
            (``SparseAttention.block_layout``): keys outside the blocks of ``pos``'s layout row are
            hidden (the original's ``get_non_block_layout_row``); the row is taken on the device.
        block: the layout's block size (needed with ``layout``).
        backend: a backend already resolved by :func:`decode_attention_backend` (default: resolve now).
    Returns:
        (B, H, dv) in q's dtype.
    Raises:
        ValueError: naming the violated constraint (shapes, dtypes, devices, ``pos``, layout, block,
            an unknown ``backend``).
        TypeError: a non-tensor q, k, v or ``pos`` (a Python int ``pos`` too), a non-int ``block``.
        BackendUnavailableError: an explicit ``backend`` that cannot run on q's device.
    """
    _require_tensors("decode_attention", "q, k, v, pos", q, k, v, pos)
    backend = decode_attention_backend(q.device) if backend is None else _check_backend(backend, q.device)
    _check_decode_attention(q, k, v, pos, layout, block)
    pos = pos.reshape(1)
    if backend == "triton":
        return _triton_decode_attention(q, k, v, pos, layout, int(block))
    if backend == "cuda":
        row = None if layout is None else decode_layout_row(expand_layout(layout, q.shape[1]), pos, block, k.shape[2])
        return implementation("decode_attention", "cuda")(q, k, v, pos, row, int(block))
    return decode_attention_reference(q, k, v, pos, layout, block)
