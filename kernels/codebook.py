"""VQ codebook nearest-neighbour search (and EMA statistics) in Triton, exact to float64.

``codebook_nearest(x, codebook)`` returns, for each row of ``x`` (N, D), the index of the nearest
row of ``codebook`` (K, D) in squared L2 distance, ties to the lowest index: **exactly the float64
argmin** of the given inputs (fp32, bf16 or fp16), computed in two stages inside one kernel:

1. *Candidate search on the tensor cores.* Each program takes ``BLOCK_N`` rows, walks the codebook
   in ``BLOCK_K`` tiles (a GEMM over D in ``BLOCK_D`` steps) and keeps, per row, the ``TOPK``
   smallest approximate scores ``s~_k = |e_k|^2 - 2 (x.e_k)~`` with their codes, in registers
   (``|x|^2`` is the same for every code of a row; no N x K matrix exists in memory). fp32 inputs
   use TF32 products (``precision="tf32"``, default), fp16/bf16 inputs their own tensor-core
   products.
2. *Exact re-check.* The kept candidates' distances ``sum_d (x_d - e_kd)^2`` are recomputed in
   float64 and the smallest (lowest index on ties) wins. The candidate list is **certified** when
   its last score exceeds the best by more than twice the rounding bound below; every code that
   can be the true argmin then is in the list. A row that is not certified (near-ties of more than
   ``TOPK`` codes, duplicated codes) is searched again over all K codes in float64, in the same
   kernel: rare, and still exact.

Rounding bound (per row; proof in the comments of :func:`dot_error_bound`): with
``c = p (1 + g) + g``, ``g = n u / (1 - n u)``, ``u = 2^-22`` (fp32 accumulation, 2x margin over
the tensor cores' truncating 2^-23), ``n = D`` (3D for tf32x3) and the per-product operand error
``p`` = ``2 * 2^-11 + 2^-22`` for TF32 (operands rounded to 11 significant bits), ``4 * 2^-22`` for
tf32x3, 0 for ieee fp32 and for fp16/bf16 inputs (products exact in fp32),

    |s~_k - s_k| <= tau = 2 c |x| E + 2^-22 (E^2 + 2 (1 + c) |x| E),   E = max_k |e_k|,

and a candidate list is certified when ``s~_(TOPK) > s~_(1) + 2 tau``. For N(0, 1) data at
D = 256, TF32 gives ``2 tau ~ 1.2`` against score gaps of ~10 near the minimum: a handful of rows
in 10^4 fall back to the full float64 scan. Float64 itself decides ties only up to its own
rounding (~D 2^-53 relative), where "the float64 argmin" is what this kernel computes.

EMA statistics (per-code counts and sums, the original's ``one_hot.sum(0)`` and
``x.t() @ one_hot``): :func:`codebook_nearest_with_stats` scatters them with ``tl.atomic_add`` in
the epilogue of the search kernel, while the x tile is still in L1/L2 (the VQ-VAE's training step
calls it through ``ops.codebook_nearest_with_stats``), and :func:`codebook_ema_stats` does the
same for codes computed elsewhere. fp32 atomics are order-dependent in the last bits, like
``torch.index_add_`` on CUDA. Sums and counts are fp32 whatever the input dtype.

Launch configs: one per (shape, dtype) from :func:`_config` (see :mod:`.tuning`);
:func:`compiled_variants` lists them.

Bound at the paper's size (N=65,536, K=2,048, D=256, H200 ceilings of
``shared/gpu/2026-11-29-H200``): 2NKD = 68.7 GFLOP; fp32 inputs in TF32 on the tensor cores
(half the bf16 rate, ~380 TFLOP/s) take >= 0.18 ms, bf16/fp16 (~760 TFLOP/s) >= 0.09 ms; the
bytes (67 MB of x, 2 MB codebook) take 0.016 ms at 4.15 TB/s: compute-bound. The re-check adds
N * TOPK * D float64 multiply-adds (67 M, < 0.01 ms at the fp64 rate). Measured: the previous
single-stage kernel (fp32, tf32x3) ran N=16,384 K=1,024 in 0.231 ms on H200; this kernel is not
measured on GPU.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._interpreter import interpret as _interpret
from .tuning import Launcher, arch

__all__ = ["codebook_nearest", "codebook_nearest_with_stats", "codebook_ema_stats", "compiled_variants",
           "dot_error_bound", "DTYPES"]

#: Input dtypes the kernels take (checked by ``videogpt_fast.ops``). The plain-PyTorch references
#: are ``reference.codebook_nearest_reference`` (the original's formula in the input dtype),
#: ``reference.codebook_nearest_reference_float64`` (the exact answer this kernel returns) and
#: ``reference.codebook_stats_reference`` / ``codebook_stats_reference_onehot``.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PRECISIONS = ("tf32", "tf32x3", "ieee")
_U_ACC = 2.0 ** -22
_PRODUCT_ERR = {"tf32": 2 * 2.0 ** -11 + 2.0 ** -22, "tf32x3": 4 * 2.0 ** -22, "ieee": 0.0}


def dot_error_bound(d: int, dtype: torch.dtype, precision: str = "tf32") -> float:
    """``c`` with ``|(x.e)~ - x.e| <= c sum_i |x_i e_i| <= c |x| |e|`` for the candidate search's
    dot products of length ``d`` (inputs of ``dtype``, fp32 inputs in ``precision``).

    Each product of operands rounded to TF32 (unit roundoff 2^-11) is within
    ``(2 u + u^2) |x_i e_i|`` of the exact one and exact in fp32; summing n fp32 terms (in any order,
    rounding to nearest or truncating) adds at most ``g sum |terms|`` with ``g = n u' / (1 - n u')``
    (Higham, Accuracy and Stability, Lemma 3.1), here u' = 2^-22. tf32x3 splits each operand in a
    TF32 pair (the low part rounded, 2^-22 relative) and drops the low*low product (3 * 2^-22 in
    all, bounded by 4 * 2^-22), summing 3n terms. fp16/bf16 products are exact in fp32.
    """
    p = _PRODUCT_ERR[precision] if dtype == torch.float32 else 0.0
    n = d * (3 if dtype == torch.float32 and precision == "tf32x3" else 1)
    if n * _U_ACC >= 0.5:
        raise ValueError(f"codebook search: D={d} is too large for the rounding bound (D < 2^20 needed)")
    g = n * _U_ACC / (1 - n * _U_ACC)
    return p * (1 + g) + g


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _insert(v0, v1, v2, v3, i0, i1, i2, i3, m, im):
    """Insert score m (code im) into each row's ascending list v0..v3 (equal scores go after)."""
    c0 = m < v0
    c1 = m < v1
    c2 = m < v2
    c3 = m < v3
    n3 = tl.where(c2, v2, tl.where(c3, m, v3))
    j3 = tl.where(c2, i2, tl.where(c3, im, i3))
    n2 = tl.where(c1, v1, tl.where(c2, m, v2))
    j2 = tl.where(c1, i1, tl.where(c2, im, i2))
    n1 = tl.where(c0, v0, tl.where(c1, m, v1))
    j1 = tl.where(c0, i0, tl.where(c1, im, i1))
    return tl.where(c0, m, v0), n1, n2, n3, tl.where(c0, im, i0), j1, j2, j3


@triton.jit
def _sq_dist(x64, e_ptr, code, dd, m, stride_ek, stride_ed):
    """sum over this D tile of (x - e[code])^2 in float64, one value per row."""
    e = tl.load(e_ptr + code.to(tl.int64)[:, None] * stride_ek + dd[None, :] * stride_ed, mask=m, other=0.0)
    t = e.to(tl.float64) - x64
    return tl.sum(t * t, 1)


@triton.jit
def _pick(best_d, best_i, dist, code, valid):
    """Keep (dist, code) where it is smaller, or equal with a lower code."""
    better = valid & ((dist < best_d) | ((dist == best_d) & (code < best_i)))
    return tl.where(better, dist, best_d), tl.where(better, code, best_i)


@triton.jit
def _full_scan_row(x_ptr, e_ptr, row, K, D, stride_xn, stride_xd, stride_ek, stride_ed,
                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Exact float64 argmin (lowest index on ties) of one row over all K codes."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    best_d = tl.min(tl.full([BLOCK_K], float("inf"), tl.float64), 0)
    best_k = tl.min(tl.zeros([BLOCK_K], tl.int32), 0)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        acc = tl.zeros([BLOCK_K], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            d_ok = dd < D
            xr = tl.load(x_ptr + row * stride_xn + dd * stride_xd, mask=d_ok, other=0.0).to(tl.float64)
            acc += _sq_dist(xr[None, :], e_ptr, cols, dd, col_ok[:, None] & d_ok[None, :], stride_ek, stride_ed)
        acc = tl.where(col_ok, acc, float("inf"))
        m, a = tl.min(acc, 0, return_indices=True, return_indices_tie_break_left=True)
        better = m < best_d
        best_k = tl.where(better, a + k0, best_k)
        best_d = tl.where(better, m, best_d)
    return best_k


@triton.jit
def _nearest_kernel(x_ptr, e_ptr, esq_ptr, emax_ptr, out_ptr, counts_ptr, sums_ptr, unsure_ptr,
                    N, K, D, c_dot,
                    stride_xn, stride_xd, stride_ek, stride_ed, stride_out, stride_sk,
                    PRECISION: tl.constexpr, STATS: tl.constexpr, TOPK: tl.constexpr, REFINE: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    local = tl.arange(0, BLOCK_N)
    rows = (pid * BLOCK_N + local).to(tl.int64)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    inf = float("inf")
    v0 = tl.full((BLOCK_N,), inf, tl.float32)
    v1 = v0
    v2 = v0
    v3 = v0
    i0 = tl.zeros((BLOCK_N,), tl.int32)
    i1 = i0
    i2 = i0
    i3 = i0
    # stage 1: the TOPK smallest approximate scores |e|^2 - 2 x.e per row, tensor-core products
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
        dist = tl.where(col_ok[None, :], esq[None, :] - 2.0 * acc, inf)
        for j in tl.static_range(TOPK):
            m, a = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
            v0, v1, v2, v3, i0, i1, i2, i3 = _insert(v0, v1, v2, v3, i0, i1, i2, i3, m, a + k0)
            if j + 1 < TOPK:
                dist = tl.where(offs_k[None, :] == a[:, None], inf, dist)
    best_i = i0
    if REFINE:
        # stage 2: float64 distances of the candidates; the row norm for the rounding bound
        d0_ = tl.zeros((BLOCK_N,), tl.float64)
        d1_ = d0_
        d2_ = d0_
        d3_ = d0_
        xsq = d0_
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            m2 = row_ok[:, None] & (dd < D)[None, :]
            x64 = tl.load(x_ptr + rows[:, None] * stride_xn + dd[None, :] * stride_xd, mask=m2,
                          other=0.0).to(tl.float64)
            xsq += tl.sum(x64 * x64, 1)
            d0_ += _sq_dist(x64, e_ptr, i0, dd, m2, stride_ek, stride_ed)
            d1_ += _sq_dist(x64, e_ptr, i1, dd, m2, stride_ek, stride_ed)
            if TOPK > 2:
                d2_ += _sq_dist(x64, e_ptr, i2, dd, m2, stride_ek, stride_ed)
                d3_ += _sq_dist(x64, e_ptr, i3, dd, m2, stride_ek, stride_ed)
        best_d = tl.where(v0 < inf, d0_, inf)
        best_d, best_i = _pick(best_d, best_i, d1_, i1, v1 < inf)
        if TOPK > 2:
            best_d, best_i = _pick(best_d, best_i, d2_, i2, v2 < inf)
            best_d, best_i = _pick(best_d, best_i, d3_, i3, v3 < inf)
            last = v3
        else:
            last = v1
        emax = tl.sqrt(tl.load(emax_ptr))
        xn = tl.sqrt(xsq)
        tau = 2.0 * c_dot * xn * emax + 2.384185791015625e-07 * (emax * emax + 2.0 * (1.0 + c_dot) * xn * emax)
        unsure = row_ok & (last.to(tl.float64) <= v0.to(tl.float64) + 2.0 * tau)
        # rows whose list may miss a near-tie: exact float64 scan over all codes, one row at a time
        n_unsure = tl.sum(unsure.to(tl.int32), 0)
        rank = tl.cumsum(unsure.to(tl.int32), 0) - 1
        for r in range(0, n_unsure):
            sel = unsure & (rank == r)
            row = pid.to(tl.int64) * BLOCK_N + tl.sum(tl.where(sel, local, 0), 0)
            found = _full_scan_row(x_ptr, e_ptr, row, K, D, stride_xn, stride_xd, stride_ek, stride_ed,
                                   BLOCK_K, BLOCK_D)
            best_i = tl.where(sel, found, best_i)
        tl.atomic_add(unsure_ptr, n_unsure)
    tl.store(out_ptr + rows * stride_out, best_i.to(tl.int64), mask=row_ok)
    if STATS:
        code = best_i.to(tl.int64)
        tl.atomic_add(counts_ptr + code, tl.full((BLOCK_N,), 1.0, tl.float32), mask=row_ok)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            m = row_ok[:, None] & (dd < D)[None, :]
            xt = tl.load(x_ptr + rows[:, None] * stride_xn + dd[None, :] * stride_xd, mask=m, other=0.0)
            tl.atomic_add(sums_ptr + code[:, None] * stride_sk + dd[None, :], xt.to(tl.float32), mask=m)


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


# --------------------------------------------------------------------------------------------
# configs: one per (shape, dtype); VIDEOGPT_FAST_AUTOTUNE=1 sweeps the lists below
# --------------------------------------------------------------------------------------------
def _cfg(n, k, d, w, s):
    return {"BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d, "num_warps": w, "num_stages": s}


# (BLOCK_N, BLOCK_K, BLOCK_D, warps, stages) per candidate-search precision, for sm_80+. The
# fp32/tf32x3 and "ieee" tiles are the previous sweep's spill-free ones (ptxas -v, sm_90, without the
# JIT's specialisation); aot_check with it (2026-11-30, N=65536, K=2048, D=256): tf32 246-250
# registers, tf32x3 230, 16-bit 190-244 (96 KB of shared memory, was 32 KB: the aligned loads now
# go through cp.async into the 3-stage pipeline), no spills; "ieee" 168 registers and 4 bytes of
# spill. None of them has been timed on a GPU yet (a tuning session should refill this table).
_TABLE = {
    "tf32": _cfg(128, 128, 32, 8, 3),
    "tf32x3": _cfg(128, 128, 16, 8, 3),
    "ieee": _cfg(64, 64, 32, 4, 2),
    "half": _cfg(128, 128, 64, 8, 3),
}
_SWEEP = [_cfg(*c) for c in [(128, 128, 16, 8, 3), (128, 64, 32, 8, 3), (64, 64, 32, 4, 3), (128, 128, 32, 8, 3),
                             (128, 128, 64, 8, 3), (64, 128, 32, 4, 4), (128, 256, 32, 8, 3)]]
_STATS_SWEEP = [{"BLOCK_N": 64, "BLOCK_D": 128, "num_warps": 4, "num_stages": 2},
                {"BLOCK_N": 128, "BLOCK_D": 64, "num_warps": 4, "num_stages": 2}]


def _config(n: int, dtype: torch.dtype, precision: str, device: torch.device) -> dict:
    if _interpret() or device.type != "cuda":  # small tiles, so that tiny tests still loop over tiles
        return _cfg(16, 16, 32, 1, 1)
    cfg = dict(_TABLE["half" if dtype != torch.float32 else precision])
    if arch(device) < 80:   # pre-Ampere: no TF32/bf16 tensor cores and less shared memory
        cfg.update(BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2)
    if n <= 64 * 132:       # small N: smaller row tiles so that every SM gets a program
        cfg.update(BLOCK_N=64)
    return cfg


def _topk(dtype: torch.dtype, precision: str) -> int:
    """Candidates kept per row: 4 where the bound is wide (TF32 operands), else 2."""
    return 4 if dtype == torch.float32 and precision == "tf32" else 2


_search = Launcher(_nearest_kernel, _SWEEP, key=["K", "D", "PRECISION", "STATS", "TOPK"],
                   reset_to_zero=["counts_ptr", "sums_ptr", "unsure_ptr"])
_stats = Launcher(_ema_stats_kernel, _STATS_SWEEP, key=["D"], reset_to_zero=["counts_ptr", "sums_ptr"])


def compiled_variants(n: int, k: int, d: int, dtype: torch.dtype, *, stats: bool = False,
                      precision: Optional[str] = None,
                      device: torch.device = torch.device("cuda")) -> Dict[str, List[dict]]:
    """The launch configs (tile sizes, warps, stages, TOPK) that :func:`codebook_nearest` (or,
    ``stats=True``, :func:`codebook_nearest_with_stats`) compiles for x (n, d) and a codebook
    (k, d) of ``dtype``, by kernel name. One config per kernel, unless ``VIDEOGPT_FAST_AUTOTUNE=1``."""
    prec = _resolve_precision(dtype, precision)
    meta = dict(PRECISION=prec, STATS=stats, TOPK=_topk(dtype, prec))
    return {"codebook_search": [dict(c, TOPK=meta["TOPK"]) for c in
                                _search.candidates(_config(n, dtype, prec, device), meta)]}


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def _resolve_precision(dtype: torch.dtype, precision: Optional[str]) -> str:
    if precision is None:
        return "tf32"
    if precision not in _PRECISIONS:
        raise ValueError(f"codebook_nearest: precision must be one of {_PRECISIONS}, got {precision!r}")
    return precision if dtype == torch.float32 else "tf32"   # ignored for fp16/bf16 operands


def _check_out(out: Optional[torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(n, dtype=torch.int64, device=device)
    if out.shape != (n,) or out.dtype != torch.int64 or out.device != device:
        raise ValueError(f"codebook_nearest: out must be an int64 tensor of shape ({n},) on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def _launch(x: torch.Tensor, codebook: torch.Tensor, out: Optional[torch.Tensor], precision: Optional[str],
            stats: bool, refine: bool = True, unsure: Optional[torch.Tensor] = None):
    """Search (and statistics). ``refine=False`` returns the raw tensor-core argmin (tests only);
    ``unsure`` (int32 (1,)) receives the number of rows that took the full float64 scan."""
    prec = _resolve_precision(x.dtype, precision)
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
    if unsure is None:
        unsure = torch.zeros(1, dtype=torch.int32, device=x.device)
    elif unsure.shape != (1,) or unsure.dtype != torch.int32 or unsure.device != x.device:
        raise ValueError(f"codebook_nearest: unsure must be an int32 tensor of shape (1,) on {x.device}, "
                         f"got {unsure.dtype} {tuple(unsure.shape)} on {unsure.device}")
    esq64 = codebook.double().square().sum(dim=1)
    emax = esq64.max().reshape(1)            # stays on the device: no host sync
    topk = _topk(x.dtype, prec)
    meta = dict(PRECISION=prec, STATS=stats, TOPK=topk, REFINE=refine)
    _search(lambda c: (triton.cdiv(n, c["BLOCK_N"]),),
            (x, codebook, esq64.float(), emax, out, counts, sums, unsure, n, k, d, dot_error_bound(d, x.dtype, prec),
             x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1), out.stride(0),
             sums.stride(0) if stats else 0),
            meta, _config(n, x.dtype, prec, x.device))
    return out, counts, sums


def codebook_nearest(x: torch.Tensor, codebook: torch.Tensor, *, out: Optional[torch.Tensor] = None,
                     precision: Optional[str] = None, unsure: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2, ties to the lowest index) for each row of x:
    exactly the float64 argmin (``reference.codebook_nearest_reference_float64``) for finite inputs.

    Args:
        x: (N, D) float16/bfloat16/float32, any strides.
        codebook: (K, D), same dtype and device, any strides; K >= 1, D < 2^20 (x and codebook
            are checked by ``videogpt_fast.ops.codebook_nearest``, not here).
        out: optional int64 (N,) tensor to write into.
        precision: candidate-search products for fp32 inputs: ``"tf32"`` (default, fastest),
            ``"tf32x3"`` or ``"ieee"``; the result is the same, only the speed differs.
        unsure: optional int32 (1,) tensor on x's device (diagnostics): the number of rows whose
            candidate list was not certified, and that took the full float64 scan, is added to it.
    Returns:
        int64 (N,). Exact for finite inputs whose squared norms are finite in fp32; NaN inputs
        give unspecified codes.
    Raises:
        ValueError: ``precision``, ``out`` or ``unsure`` that do not fit.
    """
    return _launch(x, codebook, out, precision, stats=False, unsure=unsure)[0]


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
    if x.dtype not in DTYPES:
        raise ValueError(f"codebook_ema_stats: x dtype must be one of {DTYPES}, got {x.dtype}")
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
    cfg = ({"BLOCK_N": 16, "BLOCK_D": 16, "num_warps": 1, "num_stages": 1} if _interpret() or x.device.type != "cuda"
           else dict(_STATS_SWEEP[0]))
    _stats(lambda c: (triton.cdiv(n, c["BLOCK_N"]), triton.cdiv(d, c["BLOCK_D"])),
           (x, codes, counts, sums, n, d, n_codes, x.stride(0), x.stride(1), codes.stride(0), sums.stride(0)),
           {}, cfg)
    return counts, sums
