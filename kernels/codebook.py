"""VQ codebook nearest-neighbour search (and EMA statistics) in Triton.

``codebook_nearest(x, codebook)`` returns, for each row of ``x`` (N, D), the index of the nearest
row of ``codebook`` (K, D) in squared L2 distance, ties to the lowest index. Each program takes
``BLOCK_N`` rows, walks the codebook in ``BLOCK_K`` tiles (a GEMM over D in ``BLOCK_D`` steps) and
keeps a running min/argmin of ``|e|^2 - 2 x.e`` in registers: ``|x|^2`` is the same for every code
of a row and cannot change the argmin, and no N x K distance matrix ever exists in device memory.
``|e|^2`` is computed once per call (K floats).

Precision: products accumulate in fp32. fp16/bf16 inputs use the tensor cores directly (their
products are exact in fp32). fp32 inputs use ``tf32x3`` by default, which splits every operand into
two TF32 halves and keeps three of the four products: the relative error of a product is ~2^-21,
close to plain fp32 and far below the distance gaps of real data, at tensor-core speed (plain
TF32, with its 10-bit mantissa, would flip codes). ``precision="ieee"`` gives exact fp32 FMAs.

EMA statistics (per-code counts and sums, the original's ``one_hot.sum(0)`` and
``x.t() @ one_hot``): :func:`codebook_nearest_with_stats` scatters them with ``tl.atomic_add`` in
the epilogue of the search kernel, while the x tile is still in L1/L2, and
:func:`codebook_ema_stats` does the same for codes computed elsewhere. This is the same number of
fp32 atomics as ``torch.index_add_`` on CUDA (which is also atomic, hence equally order-dependent
in the last bits); the fused form saves one read of x and two launches, and both avoid the
original's one-hot GEMM (as many FLOPs as the search itself). Sums and counts are fp32 whatever the
input dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from videogpt_fast.ops import codebook_nearest_torch

from ._interpreter import interpret as _interpret

__all__ = ["codebook_nearest", "codebook_nearest_with_stats", "codebook_ema_stats",
           "reference", "ema_stats_reference"]

#: The plain-PyTorch implementation every result is checked against.
reference = codebook_nearest_torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PRECISIONS = ("tf32x3", "ieee", "tf32")


def ema_stats_reference(x: torch.Tensor, codes: torch.Tensor, n_codes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The original's formulas: ``counts = one_hot.sum(0)``, ``sums = (x.t() @ one_hot).t()``."""
    onehot = torch.nn.functional.one_hot(codes, n_codes).type_as(x)
    return onehot.sum(dim=0), (x.t() @ onehot).t()


def _search_configs():
    if _interpret():  # the CPU interpreter: one small config, so that tiny tests still loop over tiles
        return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_D": 16}, num_warps=1)]
    # (BLOCK_N, BLOCK_K, BLOCK_D, warps, stages); for sm_90 the first three compile without
    # register spills in fp32/tf32x3, the others suit fp16/bf16 (checked with ptxas -v)
    shapes = [(128, 128, 16, 8, 3), (128, 64, 32, 8, 3), (64, 64, 32, 4, 3), (128, 128, 32, 8, 3),
              (128, 128, 64, 8, 3), (64, 128, 32, 4, 4), (128, 256, 32, 8, 3)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for n, k, d, w, s in shapes]


def _stats_configs():
    if _interpret():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_D": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_N": 64, "BLOCK_D": 128}, num_warps=4),
            triton.Config({"BLOCK_N": 128, "BLOCK_D": 64}, num_warps=4)]


@triton.jit
def _nearest_kernel(x_ptr, e_ptr, esq_ptr, out_ptr, counts_ptr, sums_ptr,
                    N, K, D,
                    stride_xn, stride_xd, stride_ek, stride_ed, stride_out, stride_sk,
                    PRECISION: tl.constexpr, STATS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    best = tl.full((BLOCK_N,), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        cols64 = cols.to(tl.int64)
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            d_ok = dd < D
            xt = tl.load(x_ptr + rows[:, None] * stride_xn + dd[None, :] * stride_xd,
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            et = tl.load(e_ptr + cols64[None, :] * stride_ek + dd[:, None] * stride_ed,
                         mask=col_ok[None, :] & d_ok[:, None], other=0.0)
            acc = tl.dot(xt, et, acc, input_precision=PRECISION)
        esq = tl.load(esq_ptr + cols, mask=col_ok, other=0.0)
        dist = tl.where(col_ok[None, :], esq[None, :] - 2.0 * acc, float("inf"))
        tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_min < best  # strict: an equal distance in a later tile keeps the lower index
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg + k0, best_idx)
    tl.store(out_ptr + rows * stride_out, best_idx.to(tl.int64), mask=row_ok)
    if STATS:
        code = best_idx.to(tl.int64)
        tl.atomic_add(counts_ptr + code, tl.full((BLOCK_N,), 1.0, tl.float32), mask=row_ok)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            m = row_ok[:, None] & (dd < D)[None, :]
            xt = tl.load(x_ptr + rows[:, None] * stride_xn + dd[None, :] * stride_xd, mask=m, other=0.0)
            tl.atomic_add(sums_ptr + code[:, None] * stride_sk + dd[None, :], xt.to(tl.float32), mask=m)


_nearest = triton.autotune(configs=_search_configs(), key=["K", "D", "PRECISION"])(_nearest_kernel)
_nearest_stats = triton.autotune(configs=_search_configs(), key=["K", "D", "PRECISION"],
                                 reset_to_zero=["counts_ptr", "sums_ptr"])(_nearest_kernel)


@triton.autotune(configs=_stats_configs(), key=["D"], reset_to_zero=["counts_ptr", "sums_ptr"])
@triton.jit
def _ema_stats_kernel(x_ptr, codes_ptr, counts_ptr, sums_ptr, N, D, K,
                      stride_xn, stride_xd, stride_c, stride_sk,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < N
    code = tl.load(codes_ptr + rows * stride_c, mask=row_ok, other=0)
    tl.device_assert((code >= 0) & (code < K), "codebook_ema_stats: code out of range [0, K)")
    ok = row_ok & (code >= 0) & (code < K)  # memory safety when device asserts are compiled out
    if pid_d == 0:
        tl.atomic_add(counts_ptr + code, tl.full((BLOCK_N,), 1.0, tl.float32), mask=ok)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m = ok[:, None] & (dd < D)[None, :]
    xt = tl.load(x_ptr + rows[:, None] * stride_xn + dd[None, :] * stride_xd, mask=m, other=0.0)
    tl.atomic_add(sums_ptr + code[:, None] * stride_sk + dd[None, :], xt.to(tl.float32), mask=m)


def _check_inputs(x: torch.Tensor, codebook: torch.Tensor, precision: Optional[str]) -> str:
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"codebook_nearest: expected x (N, D) and codebook (K, D) with equal D, "
                         f"got shapes {tuple(x.shape)} and {tuple(codebook.shape)}")
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"codebook_nearest: codebook must have K >= 1 and D >= 1, got {tuple(codebook.shape)}")
    if x.dtype not in _DTYPES or codebook.dtype != x.dtype:
        raise ValueError(f"codebook_nearest: x and codebook must share one dtype of {_DTYPES}, "
                         f"got {x.dtype} and {codebook.dtype}")
    if x.device != codebook.device:
        raise ValueError(f"codebook_nearest: x on {x.device} but codebook on {codebook.device}")
    if precision is None:
        return "tf32x3" if x.dtype == torch.float32 else "tf32"
    if precision not in _PRECISIONS:
        raise ValueError(f"codebook_nearest: precision must be one of {_PRECISIONS}, got {precision!r}")
    return precision


def _check_out(out: Optional[torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(n, dtype=torch.int64, device=device)
    if out.shape != (n,) or out.dtype != torch.int64 or out.device != device:
        raise ValueError(f"codebook_nearest: out must be an int64 tensor of shape ({n},) on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def _launch(x: torch.Tensor, codebook: torch.Tensor, out: Optional[torch.Tensor], precision: Optional[str],
            stats: bool):
    prec = _check_inputs(x, codebook, precision)
    n, d = x.shape
    k = codebook.shape[0]
    out = _check_out(out, n, x.device)
    if stats:
        counts = torch.zeros(k, dtype=torch.float32, device=x.device)
        sums = torch.zeros(k, d, dtype=torch.float32, device=x.device)
    else:
        counts = sums = torch.zeros(1, dtype=torch.float32, device=x.device)  # unused
    if n == 0:
        return out, counts, sums
    esq = codebook.float().square().sum(dim=1)
    fn = _nearest_stats if stats else _nearest
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    fn[grid](x, codebook, esq, out, counts, sums, n, k, d,
             x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1), out.stride(0),
             sums.stride(0) if stats else 0, PRECISION=prec, STATS=stats)
    return out, counts, sums


def codebook_nearest(x: torch.Tensor, codebook: torch.Tensor, *, out: Optional[torch.Tensor] = None,
                     precision: Optional[str] = None) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2, ties to the lowest index) for each row of x.

    Args:
        x: (N, D) float16/bfloat16/float32, any strides.
        codebook: (K, D), same dtype and device, any strides.
        out: optional int64 (N,) tensor to write into.
        precision: dot precision for fp32 inputs: ``"tf32x3"`` (default), ``"ieee"`` or ``"tf32"``.
    Returns:
        int64 (N,). NaN inputs give unspecified codes.
    """
    return _launch(x, codebook, out, precision, stats=False)[0]


def codebook_nearest_with_stats(x: torch.Tensor, codebook: torch.Tensor, *, out: Optional[torch.Tensor] = None,
                                precision: Optional[str] = None
                                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`codebook_nearest` with the EMA statistics fused into the same kernel.

    Returns:
        codes int64 (N,), counts fp32 (K,) (rows per code), sums fp32 (K, D) (sum of the rows of x
        assigned to each code: the transpose of the original's ``x.t() @ one_hot``).
    """
    return _launch(x, codebook, out, precision, stats=True)


def codebook_ema_stats(x: torch.Tensor, codes: torch.Tensor, n_codes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts (K,) and sums (K, D), both fp32, of the rows of x (N, D) by code (N,).

    Codes must lie in [0, n_codes) (checked by a device assert when those are compiled in).
    """
    if x.dim() != 2 or codes.dim() != 1 or codes.shape[0] != x.shape[0]:
        raise ValueError(f"codebook_ema_stats: expected x (N, D) and codes (N,), got {tuple(x.shape)} "
                         f"and {tuple(codes.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"codebook_ema_stats: x dtype must be one of {_DTYPES}, got {x.dtype}")
    if codes.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"codebook_ema_stats: codes must be int32 or int64, got {codes.dtype}")
    if codes.device != x.device:
        raise ValueError(f"codebook_ema_stats: x on {x.device} but codes on {codes.device}")
    if n_codes < 1:
        raise ValueError(f"codebook_ema_stats: n_codes must be >= 1, got {n_codes}")
    n, d = x.shape
    counts = torch.zeros(n_codes, dtype=torch.float32, device=x.device)
    sums = torch.zeros(n_codes, d, dtype=torch.float32, device=x.device)
    if n == 0 or d == 0:
        return counts, sums
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
    _ema_stats_kernel[grid](x, codes, counts, sums, n, d, n_codes,
                            x.stride(0), x.stride(1), codes.stride(0), sums.stride(0))
    return counts, sums
