"""Block-sparse causal attention in Triton: forward, backward and the one-row decode step.

FlashAttention-2 style kernels (compare Triton's tutorial ``06-fused-attention``) that visit only
the non-zero blocks of a block layout, as ``StridedSparsityConfig.make_layout()`` makes it:

* the layout (``(nb, nb)`` shared by all heads, or ``(heads, nb, nb)``) becomes padded CSR tables
  on the device, built once per layout and cached (:func:`layout_tables`; no host sync on later
  calls): for every query block the key-block columns it sees, and the transposed table (for
  every key block, the query blocks that see it) for dK/dV. With ``causal=True`` blocks above the
  diagonal are dropped, so only the diagonal block is masked element-wise;
* forward: one program per query tile, online softmax (base 2) over the row's key blocks, stores
  ``O`` and the row logsumexp (fp32);
* backward: a dQ kernel that walks the row's key blocks and also computes and stores
  ``delta = rowsum(dO * O)`` for its rows, then a dK/dV kernel that walks the query blocks seeing
  each key tile and reads delta: two launches (three per forward+backward), no atomics, fp32
  accumulation;
* decode: one query row at position ``pos`` against a KV cache (keys ``<= pos`` of the layout row
  ``pos // block``), ``pos`` a Python int or a one-element integer tensor (read on device, so the
  step can be captured in a CUDA graph once the layout tables are cached). Split-K
  ("flash-decoding", as ``csrc/decode_attention.cu``): pass 1 on grid (B*heads, S) splits the
  row's blocks into S runs and writes fp32 partials (acc, max, sum), pass 2 on (B*heads,) merges
  them; S (:func:`_decode_splits`) fills the GPU with ~4 programs per SM and does not depend on
  ``pos``, so one launch pair serves every step.

Cost is proportional to the number of non-zero blocks. Inputs fp16/bf16/fp32; fp32 inputs use
IEEE dot products unless ``torch.backends.cuda.matmul.allow_tf32`` is set. Head dims run in at most
two power-of-two column chunks with masking (144 as 128 + 16, 24 as 32), not padded to 256.

Queries that see no key (an empty layout row) give zeros, as ``reference.blocksparse_attention_reference``.

Configs: one tile/warps/stages config per kernel, shape and dtype (:func:`_fixed_config`;
:func:`compiled_variants` lists them); ``VIDEOGPT_FAST_AUTOTUNE=1`` sweeps ``_TILE_CONFIGS``.
Hopper paths: Triton (3.6) picks wgmma (MMAv3) on sm_90 by itself where a tile allows it (64-row
multiples per 4-warp group); whether the 32-row tiles of the paper's block 32 get it is left to
the GPU run to check (``_fwd_kernel[grid](...).asm["ttgir"]`` shows ``warp_group_dot``). TMA
descriptors (``tl.make_tensor_descriptor``) are not used: the interpreter cannot check them, and
they need a GPU run to verify.

Bound at the paper's size (L=4096, 8 heads x 128, block 32, strided layout keeping ~5 % of the
blocks, i.e. ~820 of 128^2 per head; H200 ceilings of ``shared/gpu/2026-11-29-H200``): the forward
needs 4 * 128 * 820 * 32^2 * 8 = 3.4 GFLOP and the backward 2.5x that, 12 GFLOP in all per batch
element: 16 us at 760 TFLOP/s bf16; the bytes (q, k, v, o, lse; then q, k, v, o, dO, dq, dk, dv)
are ~100 MB per batch element: 24 us at 4.15 TB/s. Measured (H200, B=1, bf16, previous version
with autotuning and a separate delta launch): 0.976 ms forward+backward, 2.5 % of that bound:
per-call costs dominate at B=1. This version: not measured on GPU.
"""
from __future__ import annotations

import collections
import functools
import math
import operator
import threading
from typing import Dict, List, Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._interpreter import interpret as _interpret
from .reference import padded_csr
from .tuning import Launcher

__all__ = ["blocksparse_attention", "blocksparse_decode_attention", "blocksparse_decode_attention_unchecked",
           "layout_tables", "compiled_variants", "BLOCKS", "DTYPES", "MAX_HEAD_DIM"]

#: Layout block sizes, input dtypes and largest head dim the kernels take (checked by
#: ``videogpt_fast.ops``); the plain-PyTorch references are ``reference.blocksparse_attention_reference``
#: and ``reference.decode_attention_reference`` (and their ``_dense`` float64 forms).
BLOCKS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------
# layout tables
# --------------------------------------------------------------------------------------------
def _csr(lay: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded CSR of a bool (H, n, n) matrix: (idx (H, n, W) int32 ascending, counts (H, n) int32)."""
    idx, cnt = padded_csr(lay)
    return idx.to(torch.int32).contiguous(), cnt.to(torch.int32).contiguous()


class _Tables:
    """Padded CSR tables of a layout: row -> key blocks (``cols``, ``cnt``) and key block -> query
    blocks (``rows``, ``cnt_t``); ``per_head`` is False when one layout serves all heads."""

    def __init__(self, lay: torch.Tensor, causal: bool, device: torch.device):
        nb = lay.shape[-1]
        lay = lay.to(device=device, dtype=torch.bool)
        if causal:
            lay = lay & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
        self.per_head = lay.shape[0] > 1
        self.nb = nb
        self.cols, self.cnt = _csr(lay)
        self.rows, self.cnt_t = _csr(lay.transpose(-1, -2))

    def strides(self, transposed: bool) -> Tuple[int, int, int]:
        """(table head stride, table row stride, count head stride) for the kernels."""
        idx = self.rows if transposed else self.cols
        return (idx.stride(0) if self.per_head else 0, idx.stride(1), self.nb if self.per_head else 0)


_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def _content_key(layout: torch.Tensor) -> Optional[tuple]:
    """Shape, dtype and a hash of the values of a CPU layout (reading it needs no device sync);
    None for a device layout."""
    if layout.device.type != "cpu":
        return None
    return (tuple(layout.shape), layout.dtype, hash(layout.contiguous().numpy().tobytes()))


def layout_tables(layout: torch.Tensor, causal: bool, device: torch.device) -> _Tables:
    """The (cached) kernel tables of ``layout`` ((nb, nb) or (heads, nb, nb), 0/1) on ``device``.

    Layouts are reused every step, so tables are built once and kept on ``device`` (LRU, 64
    entries), found by the layout tensor's identity (storage pointer, shape, strides, dtype and
    in-place version counter; the entry keeps the tensor alive so its pointer is not reused) and,
    for a CPU layout, also by its content, so that an equal layout rebuilt on the host each step
    reuses them. A hit does no device work and no host sync; a miss (the first call with a device
    layout) costs one: warm the cache before capturing a CUDA graph.
    """
    lay = layout if layout.dim() == 3 else layout.unsqueeze(0)
    ident = (layout.data_ptr(), str(layout.device), tuple(layout.shape), tuple(layout.stride()), layout.dtype,
             layout._version, bool(causal), str(device))
    with _CACHE_LOCK:
        hit = _CACHE.get(ident)
        if hit is not None:
            _CACHE.move_to_end(ident)
            return hit[1]
    content = _content_key(layout)
    ckey = None if content is None else ("content", content, bool(causal), str(device))
    with _CACHE_LOCK:
        hit = _CACHE.get(ckey) if ckey is not None else None
    tables = hit[1] if hit is not None else _Tables(lay, causal, torch.device(device))
    with _CACHE_LOCK:
        _CACHE[ident] = (layout, tables)
        if ckey is not None:
            _CACHE[ckey] = (None, tables)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return tables


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
# Head dims are processed in two power-of-two chunks, columns [0, C0) and [C0, C0 + C1) (C1 = 0:
# one chunk), so that e.g. 144 runs as 128 + 16 lanes instead of 256; lanes >= the true head dim
# are masked to zero.
@triton.jit
def _load2(ptr, rows, stride_r, stride_d, D, BR: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr):
    """Rows ``rows`` of a (rows, D) matrix as the two column chunks (BR, C0) and (BR, C1)."""
    offs0 = tl.arange(0, C0)
    x0 = tl.load(ptr + rows[:, None] * stride_r + offs0[None, :] * stride_d, mask=(offs0 < D)[None, :], other=0.0)
    if C1 > 0:
        offs1 = C0 + tl.arange(0, C1)
        x1 = tl.load(ptr + rows[:, None] * stride_r + offs1[None, :] * stride_d, mask=(offs1 < D)[None, :],
                     other=0.0)
    else:
        x1 = tl.zeros([BR, 16], dtype=x0.dtype)    # unused placeholder
    return x0, x1


@triton.jit
def _store2(ptr, rows, stride_r, stride_d, D, x0, x1, C0: tl.constexpr, C1: tl.constexpr):
    offs0 = tl.arange(0, C0)
    tl.store(ptr + rows[:, None] * stride_r + offs0[None, :] * stride_d, x0.to(ptr.dtype.element_ty),
             mask=(offs0 < D)[None, :])
    if C1 > 0:
        offs1 = C0 + tl.arange(0, C1)
        tl.store(ptr + rows[:, None] * stride_r + offs1[None, :] * stride_d, x1.to(ptr.dtype.element_ty),
                 mask=(offs1 < D)[None, :])


@triton.jit
def _dot_nt(a0, a1, b0, b1, C1: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b^T over both column chunks (fp32)."""
    acc = tl.dot(a0, tl.trans(b0), input_precision=PRECISION)
    if C1 > 0:
        acc = tl.dot(a1, tl.trans(b1), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _fwd_tile(acc0, acc1, l_i, m_i, q0, q1, K, V, start_n, offs_m, offs_n, D, DV,
              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
              BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
              MASK: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile of the online softmax (scores in base 2)."""
    cols = start_n + offs_n
    k0, k1 = _load2(K, cols, stride_kn, stride_kd, D, BLOCK_N, D0, D1)
    s = _dot_nt(q0, q1, k0, k1, D1, PRECISION) * qk_scale
    if MASK:
        s = tl.where(offs_m[:, None] >= cols[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASK:  # a fully masked row keeps m = -inf: shift by 0 instead of producing nan
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v0, v1 = _load2(V, cols, stride_vn, stride_vd, DV, BLOCK_N, DV0, DV1)
    p = p.to(v0.dtype)
    acc0 = tl.dot(p, v0, acc0 * alpha[:, None], input_precision=PRECISION)
    if DV1 > 0:
        acc1 = tl.dot(p, v1, acc1 * alpha[:, None], input_precision=PRECISION)
    return acc0, acc1, l_i, m_new


@triton.jit
def _row_blocks(COLS, CNT, h, lrow, stride_th, stride_tr, stride_ch, CAUSAL: tl.constexpr):
    """Table pointer, number of off-diagonal blocks and whether the (last) diagonal block is present
    for layout row ``lrow`` (causal tables list columns <= row in ascending order)."""
    cnt = tl.load(CNT + h * stride_ch + lrow)
    base = COLS + h * stride_th + lrow * stride_tr
    if CAUSAL:
        last = tl.load(base + tl.maximum(cnt - 1, 0))
        has_diag = (cnt > 0) & (last == lrow)
        n_off = cnt - has_diag.to(tl.int32)
    else:
        has_diag = cnt < 0
        n_off = cnt
    return base, n_off, has_diag


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, COLS, CNT, qk_scale,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_ob, stride_oh, stride_om, stride_od,
                stride_th, stride_tr, stride_ch,
                H, L, D, DV,
                BLOCK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
                CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    lrow = start_m // BLOCK
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    O += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    q0, q1 = _load2(Q, offs_m, stride_qm, stride_qd, D, BLOCK_M, D0, D1)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, DV0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, DV1 if DV1 > 0 else 16], tl.float32)
    base, n_off, has_diag = _row_blocks(COLS, CNT, h, lrow, stride_th, stride_tr, stride_ch, CAUSAL)
    for i in range(0, n_off):
        col = tl.load(base + i)
        for sub in range(0, BLOCK, BLOCK_N):
            acc0, acc1, l_i, m_i = _fwd_tile(acc0, acc1, l_i, m_i, q0, q1, K, V, col * BLOCK + sub, offs_m, offs_n,
                                             D, DV, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                             BLOCK_N, D0, D1, DV0, DV1, False, PRECISION)
    if CAUSAL:
        # diagonal block: key tiles up to the end of this query tile, masked element-wise
        lo = lrow * BLOCK
        hi = tl.where(has_diag, start_m + BLOCK_M, lo)
        for start_n in range(lo, hi, BLOCK_N):
            acc0, acc1, l_i, m_i = _fwd_tile(acc0, acc1, l_i, m_i, q0, q1, K, V, start_n, offs_m, offs_n,
                                             D, DV, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                             BLOCK_N, D0, D1, DV0, DV1, True, PRECISION)
    empty = l_i == 0.0
    inv = 1.0 / tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + pid_bh.to(tl.int64) * L + offs_m, lse)
    _store2(O, offs_m, stride_om, stride_od, DV, acc0 * inv[:, None], acc1 * inv[:, None], DV0, DV1)


@triton.jit
def _bwd_dkdv_tile(dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, start_m, offs_n, offs_m0, D, DV,
                   stride_qm, stride_qd, stride_dom, stride_dod, qk_scale,
                   BLOCK_M: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
                   MASK: tl.constexpr, PRECISION: tl.constexpr):
    """Contribution of one query tile to a key tile's dK, dV (computed transposed: keys x queries)."""
    offs_m = start_m + offs_m0
    q0, q1 = _load2(Q, offs_m, stride_qm, stride_qd, D, BLOCK_M, D0, D1)
    lse = tl.load(LSE + offs_m)
    s_t = _dot_nt(k0, k1, q0, q1, D1, PRECISION) * qk_scale
    p_t = tl.math.exp2(s_t - lse[None, :])
    if MASK:
        p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
    do0, do1 = _load2(DO, offs_m, stride_dom, stride_dod, DV, BLOCK_M, DV0, DV1)
    pc = p_t.to(do0.dtype)
    dv0 = tl.dot(pc, do0, dv0, input_precision=PRECISION)
    if DV1 > 0:
        dv1 = tl.dot(pc, do1, dv1, input_precision=PRECISION)
    delta = tl.load(DELTA + offs_m)
    dp_t = _dot_nt(v0, v1, do0, do1, DV1, PRECISION)
    ds_t = (p_t * (dp_t - delta[None, :])).to(q0.dtype)
    dk0 = tl.dot(ds_t, q0, dk0, input_precision=PRECISION)
    if D1 > 0:
        dk1 = tl.dot(ds_t, q1, dk1, input_precision=PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV_OUT, LSE, DELTA, ROWS, CNT_T, sm_scale, qk_scale,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_dob, stride_doh, stride_dom, stride_dod,
                     stride_th, stride_tr, stride_ch,
                     H, L, D, DV,
                     BLOCK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr,
                     DV1: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_n = pid_n * BLOCK_N
    lcol = start_n // BLOCK
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    LSE += pid_bh.to(tl.int64) * L
    DELTA += pid_bh.to(tl.int64) * L
    k0, k1 = _load2(K, offs_n, stride_kn, stride_kd, D, BLOCK_N, D0, D1)
    v0, v1 = _load2(V, offs_n, stride_vn, stride_vd, DV, BLOCK_N, DV0, DV1)
    dk0 = tl.zeros([BLOCK_N, D0], tl.float32)
    dk1 = tl.zeros([BLOCK_N, D1 if D1 > 0 else 16], tl.float32)
    dv0 = tl.zeros([BLOCK_N, DV0], tl.float32)
    dv1 = tl.zeros([BLOCK_N, DV1 if DV1 > 0 else 16], tl.float32)

    cnt = tl.load(CNT_T + h * stride_ch + lcol)
    base = ROWS + h * stride_th + lcol * stride_tr
    first = 0
    if CAUSAL:
        # causal tables list query blocks >= lcol ascending: the diagonal, if present, comes first
        has_diag = (cnt > 0) & (tl.load(base) == lcol)
        lo = lcol * BLOCK + ((start_n - lcol * BLOCK) // BLOCK_M) * BLOCK_M
        hi = tl.where(has_diag, (lcol + 1) * BLOCK, lo)
        for start_m in range(lo, hi, BLOCK_M):
            dk0, dk1, dv0, dv1 = _bwd_dkdv_tile(dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, start_m,
                                                offs_n, offs_m0, D, DV, stride_qm, stride_qd, stride_dom, stride_dod,
                                                qk_scale, BLOCK_M, D0, D1, DV0, DV1, True, PRECISION)
        first = has_diag.to(tl.int32)
    for i in range(first, cnt):
        row = tl.load(base + i)
        for sub in range(0, BLOCK, BLOCK_M):
            dk0, dk1, dv0, dv1 = _bwd_dkdv_tile(dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA,
                                                row * BLOCK + sub, offs_n, offs_m0, D, DV, stride_qm, stride_qd,
                                                stride_dom, stride_dod, qk_scale, BLOCK_M, D0, D1, DV0, DV1,
                                                False, PRECISION)
    # dK, dV are allocated contiguous (B, H, L, d)
    _store2(DK + pid_bh.to(tl.int64) * L * D, offs_n, D, 1, D, dk0 * sm_scale, dk1 * sm_scale, D0, D1)
    _store2(DV_OUT + pid_bh.to(tl.int64) * L * DV, offs_n, DV, 1, DV, dv0, dv1, DV0, DV1)


@triton.jit
def _bwd_dq_tile(dq0, dq1, q0, q1, do0, do1, lse, delta, K, V, start_n, offs_m, offs_n0, D, DV,
                 stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                 BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
                 MASK: tl.constexpr, PRECISION: tl.constexpr):
    """Contribution of one key tile to a query tile's dQ."""
    cols = start_n + offs_n0
    k0, k1 = _load2(K, cols, stride_kn, stride_kd, D, BLOCK_N, D0, D1)
    v0, v1 = _load2(V, cols, stride_vn, stride_vd, DV, BLOCK_N, DV0, DV1)
    s = _dot_nt(q0, q1, k0, k1, D1, PRECISION) * qk_scale
    p = tl.math.exp2(s - lse[:, None])
    if MASK:
        p = tl.where(offs_m[:, None] >= cols[None, :], p, 0.0)
    dp = _dot_nt(do0, do1, v0, v1, DV1, PRECISION)
    ds = (p * (dp - delta[:, None])).to(k0.dtype)
    dq0 = tl.dot(ds, k0, dq0, input_precision=PRECISION)
    if D1 > 0:
        dq1 = tl.dot(ds, k1, dq1, input_precision=PRECISION)
    return dq0, dq1


@triton.jit
def _bwd_dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, COLS, CNT, sm_scale, qk_scale,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   stride_dob, stride_doh, stride_dom, stride_dod,
                   stride_th, stride_tr, stride_ch,
                   H, L, D, DV,
                   BLOCK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
                   CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query tile, walking its row's key blocks. It also computes the backward's
    ``delta = rowsum(dO * O)`` of its rows (fp32) and stores it for the dK/dV kernel, which runs
    after it: no separate preprocessing launch."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    lrow = start_m // BLOCK
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    q0, q1 = _load2(Q, offs_m, stride_qm, stride_qd, D, BLOCK_M, D0, D1)
    do0, do1 = _load2(DO, offs_m, stride_dom, stride_dod, DV, BLOCK_M, DV0, DV1)
    o0, o1 = _load2(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, offs_m, stride_om, stride_od, DV,
                    BLOCK_M, DV0, DV1)
    delta = tl.sum(do0.to(tl.float32) * o0.to(tl.float32), 1)
    if DV1 > 0:
        delta += tl.sum(do1.to(tl.float32) * o1.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * L + offs_m, delta)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * L + offs_m)
    dq0 = tl.zeros([BLOCK_M, D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, D1 if D1 > 0 else 16], tl.float32)
    base, n_off, has_diag = _row_blocks(COLS, CNT, h, lrow, stride_th, stride_tr, stride_ch, CAUSAL)
    for i in range(0, n_off):
        col = tl.load(base + i)
        for sub in range(0, BLOCK, BLOCK_N):
            dq0, dq1 = _bwd_dq_tile(dq0, dq1, q0, q1, do0, do1, lse, delta, K, V, col * BLOCK + sub, offs_m, offs_n0,
                                    D, DV, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                    BLOCK_N, D0, D1, DV0, DV1, False, PRECISION)
    if CAUSAL:
        lo = lrow * BLOCK
        hi = tl.where(has_diag, start_m + BLOCK_M, lo)
        for start_n in range(lo, hi, BLOCK_N):
            dq0, dq1 = _bwd_dq_tile(dq0, dq1, q0, q1, do0, do1, lse, delta, K, V, start_n, offs_m, offs_n0,
                                    D, DV, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                    BLOCK_N, D0, D1, DV0, DV1, True, PRECISION)
    _store2(DQ + pid_bh.to(tl.int64) * L * D, offs_m, D, 1, D, dq0 * sm_scale, dq1 * sm_scale, D0, D1)


@triton.jit
def _decode_pos(POS, pos_val, L, POS_FROM_PTR: tl.constexpr):
    """(pos clamped to [0, L), whether it was in range): a device ``pos`` is read here, never on the host."""
    if POS_FROM_PTR:
        pos = tl.load(POS).to(tl.int32)
    else:
        pos = pos_val
    in_range = (pos >= 0) & (pos < L)
    return tl.minimum(tl.maximum(pos, 0), L - 1), in_range


@triton.jit(do_not_specialize=["pos_val"])  # an int pos must not compile a variant for 1 or multiples of 16
def _decode_kernel(Q, K, V, PART, COLS, CNT, POS, pos_val, qk_scale, n_splits,
                   stride_qb, stride_qh, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_th, stride_tr, stride_ch,
                   H, L, D, DV,
                   BLOCK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr,
                   POS_FROM_PTR: tl.constexpr, BLOCK_N: tl.constexpr):
    """Decode pass 1, grid (B*H, S): split ``s`` of the query at ``pos`` (head ``h``) walks entries
    [s*per, min((s+1)*per, cnt)) of layout row pos // BLOCK (``cnt`` blocks, ``per = cdiv(cnt, S)``),
    keys <= pos, with the online softmax in base 2, and writes its partial to
    ``PART[bh, s] = (acc[0:DV], m, l)`` (fp32; an empty split: acc 0, m = -inf, l = 0). A device
    ``pos`` outside [0, L) reads no key (every partial empty; pass 2 writes NaN)."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    pos, in_range = _decode_pos(POS, pos_val, L, POS_FROM_PTR)
    lrow = pos // BLOCK
    cnt = tl.where(in_range, tl.load(CNT + h * stride_ch + lrow), 0)
    per = tl.cdiv(cnt, n_splits)
    lo = split * per
    hi = tl.minimum(lo + per, cnt)
    base = COLS + h * stride_th + lrow * stride_tr
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    one = tl.arange(0, 1)
    q0, q1 = _load2(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, one, 0, stride_qd, D, 1, D0, D1)
    q0 = q0.to(tl.float32)
    q1 = q1.to(tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([1], float("-inf"), tl.float32)
    l_i = tl.zeros([1], tl.float32)
    acc0 = tl.zeros([1, DV0], tl.float32)
    acc1 = tl.zeros([1, DV1 if DV1 > 0 else 16], tl.float32)
    SUB: tl.constexpr = BLOCK // BLOCK_N
    for j in range(lo * SUB, hi * SUB):     # one loop over (block, sub-tile) pairs
        keys = tl.load(base + j // SUB) * BLOCK + (j % SUB) * BLOCK_N + offs_n
        seen = keys <= pos
        rows = tl.minimum(keys, pos)         # keys after pos are never read (they may be garbage)
        k0, k1 = _load2(K, rows, stride_kn, stride_kd, D, BLOCK_N, D0, D1)
        s = tl.sum(k0.to(tl.float32) * q0, 1)
        if D1 > 0:
            s += tl.sum(k1.to(tl.float32) * q1, 1)
        s = tl.where(seen, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        v0, v1 = _load2(V, rows, stride_vn, stride_vd, DV, BLOCK_N, DV0, DV1)
        acc0 = acc0 * alpha[:, None] + tl.sum(p[:, None] * v0.to(tl.float32), 0)[None, :]
        if DV1 > 0:
            acc1 = acc1 * alpha[:, None] + tl.sum(p[:, None] * v1.to(tl.float32), 0)[None, :]
        m_i = m_new
    part = PART + (pid_bh.to(tl.int64) * n_splits + split) * (DV + 2)
    _store2(part, one, 0, 1, DV, acc0, acc1, DV0, DV1)
    tl.store(part + DV + one, m_i)
    tl.store(part + DV + 1 + one, l_i)


@triton.jit(do_not_specialize=["pos_val"])  # an int pos must not compile a variant for 1 or multiples of 16
def _decode_reduce_kernel(PART, O, POS, pos_val, n_splits,
                          stride_ob, stride_oh, stride_od,
                          H, L, DV,
                          DV0: tl.constexpr, DV1: tl.constexpr, POS_FROM_PTR: tl.constexpr,
                          SPLIT_TILE: tl.constexpr):
    """Decode pass 2, grid (B*H,): merges the ``n_splits`` partials of pass 1, ``SPLIT_TILE`` at a
    time (each rescaled by exp2(m_s - M), M the running maximum), divides by the total l (0: no key
    seen, zeros) and writes ``O`` in its dtype; NaN for a device ``pos`` outside [0, L)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    _, in_range = _decode_pos(POS, pos_val, L, POS_FROM_PTR)
    part = PART + pid_bh.to(tl.int64) * n_splits * (DV + 2)
    m_i = tl.full([1], float("-inf"), tl.float32)
    l_i = tl.zeros([1], tl.float32)
    acc0 = tl.zeros([DV0], tl.float32)
    acc1 = tl.zeros([DV1 if DV1 > 0 else 16], tl.float32)
    offs_s = tl.arange(0, SPLIT_TILE)
    for t in range(0, n_splits, SPLIT_TILE):
        rows = tl.minimum(t + offs_s, n_splits - 1)    # rows past the last split repeat it with weight 0
        valid = t + offs_s < n_splits
        m = tl.where(valid, tl.load(part + rows * (DV + 2) + DV), float("-inf"))
        l = tl.load(part + rows * (DV + 2) + DV + 1)
        m_new = tl.maximum(m_i, tl.max(m, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)
        w = tl.math.exp2(m - m_ref)
        l_i = l_i * alpha + tl.sum(w * l, 0)
        a0, a1 = _load2(part, rows, DV + 2, 1, DV, SPLIT_TILE, DV0, DV1)
        acc0 = acc0 * alpha + tl.sum(w[:, None] * a0, 0)
        if DV1 > 0:
            acc1 = acc1 * alpha + tl.sum(w[:, None] * a1, 0)
        m_i = m_new
    inv = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)
    inv = tl.where(in_range, inv, float("nan"))
    _store2(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, tl.arange(0, 1), 0, stride_od, DV,
            (acc0 * inv)[None, :], (acc1 * inv)[None, :], DV0, DV1)


# --------------------------------------------------------------------------------------------
# configs: one per (shape, dtype) from _fixed_config; VIDEOGPT_FAST_AUTOTUNE=1 sweeps _TILE_CONFIGS
# --------------------------------------------------------------------------------------------
_TILE_CONFIGS = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}
    for bm, bn, w, s in [(16, 16, 4, 2), (32, 32, 4, 2), (32, 32, 4, 3), (64, 32, 4, 3), (64, 64, 4, 3),
                         (64, 64, 8, 3), (32, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 2), (64, 128, 8, 2),
                         (128, 128, 8, 2)]
]


def _fits(c: dict, meta: dict) -> bool:
    """Tiles that divide the layout block and fit in registers next to the head dim."""
    return (c["BLOCK_M"] <= meta["BLOCK"] and c["BLOCK_N"] <= meta["BLOCK"]
            and max(c["BLOCK_M"], c["BLOCK_N"]) * _width(meta) <= 128 * 128)


_KEY = ["L", "BLOCK", "D0", "D1", "DV0", "DV1", "CAUSAL", "PRECISION"]
_LAUNCHERS = {name: Launcher(kernel, _TILE_CONFIGS, _KEY, prune=_fits)
              for name, kernel in (("fwd", _fwd_kernel), ("bwd_dq", _bwd_dq_kernel), ("bwd_dkdv", _bwd_dkdv_kernel))}


def _fixed_config(name: str, block: int, dpad: int, dtype: torch.dtype) -> dict:
    """The heuristic config of kernel ``name`` (``fwd``, ``bwd_dq``, ``bwd_dkdv``) for layout
    block ``block``, padded head width ``dpad`` (sum of the column chunks) and input ``dtype``.

    Each program holds a tile of ``min(block, 64)`` rows (32 beyond a width of 128) and loops over
    inner tiles of the other side (dK/dV: rows are keys, the loop walks queries). Checked with
    ``python -m videogpt_fast.kernels.aot_check`` for sm_90 at block 32 (ptxas, no GPU run, with
    the JIT's specialisation of unit strides and 16-divisible arguments), registers of forward / dQ
    / dK/dV: 16-bit d=128 in 8 warps 100 / 126 / 164 (4 warps: 125 / 126 / 192), no spills; d=144
    (128 + 16) with 16-row inner tiles 198 / 242 / 255, no spills (4 warps: 168 / 168 / 255 and 4
    bytes of spill in dK/dV; 32-row inner tiles: 175 / 244 / 255 and 248 bytes in dK/dV). fp32
    operands take 16 x 16 tiles: 61-108 registers, no spills; 32 x 32 tiles spill 240-476 bytes
    (all three at d=128, dQ at d=144). aot_check before 2026-11-30 overstated all of this (it
    compiled without that specialisation: unvectorised loads): the backward spills it reported
    with 4 warps at d=128, the reason for 8 warps from a width of 128, do not appear; nor do its
    28 bytes in the d=144 dK/dV kernel; its 25 KB of spill and 35 s compile for the 32 x 32 fp32
    dK/dV kernel are now 240 bytes and 3 s. Not timed on a GPU.
    """
    tile = min(block, 64 if dpad <= 128 else 32)
    if _interpret():   # square tiles as large as allowed: fewer interpreted ops (sub-tiles: test_sub_tiles)
        return {"BLOCK_M": tile, "BLOCK_N": tile, "num_warps": 4, "num_stages": 2}
    if dtype == torch.float32:
        tile = min(block, 16)
    inner = tile if dpad <= 128 else min(tile, 16)
    rows, loop = ("BLOCK_N", "BLOCK_M") if name == "bwd_dkdv" else ("BLOCK_M", "BLOCK_N")
    return {rows: tile, loop: inner, "num_warps": 8 if dpad >= 128 else 4,
            "num_stages": 1 if name == "bwd_dkdv" and dpad > 128 else 2}


def _launch(name: str, rows: int, bh: int, args: tuple, meta: dict) -> None:
    """Launch kernel ``name`` over ``rows`` positions (tiles of BLOCK_N for dK/dV, else BLOCK_M);
    ``args[0]`` is q."""
    tile = "BLOCK_N" if name == "bwd_dkdv" else "BLOCK_M"
    config = _fixed_config(name, meta["BLOCK"], _width(meta), args[0].dtype)
    _LAUNCHERS[name](lambda c: (rows // c[tile], bh), args, meta, config)


def _decode_config(block: int, d: int, dv: int) -> Dict[str, dict]:
    """The decode kernels' one launch config each. Pass 1 (``decode``) takes ``BLOCK_N = min(block,
    32)`` key rows per step over the head dim's power-of-two column chunks (:func:`_chunks`), in 4
    warps up to 48 tile elements per thread, else 8; pass 2 (``decode_reduce``) merges
    ``SPLIT_TILE = 16`` partials per step. S is a runtime argument: no recompile per S.

    Why 32 rows: compiled for sm_90 in bf16 with the JIT's specialisation of unit strides and
    16-divisible arguments (ptxas, no GPU run), d=144 (128 + 16 lanes) takes 128 registers at
    block 32 (151 at block 128), no spills: 3-4 programs of 4 warps per SM, as many as
    :func:`_decode_splits` launches, with 18 KB of K and V loads each in flight; 64 rows took 225
    registers in 4 warps (2 programs per SM) or 128 in 8 (2 per SM: two waves). aot_check
    compiles with that specialisation since 2026-11-30 (d=144: 128 registers in 16-bit, 110 in
    fp32; d=128: 64; pass 2: 32-48); before, it reported ~255 registers (and 12 bytes of spill at
    d=128), an artefact of unvectorised loads. Not timed on a GPU.
    """
    block_n = min(block, 32)
    width = _width(_chunk_meta(d, dv))
    return {"decode": {"BLOCK_N": block_n, "num_warps": 4 if block_n * width <= 48 * 128 else 8},
            "decode_reduce": {"SPLIT_TILE": 16, "num_warps": 4}}


#: SM count assumed off CUDA (the interpreter, ``aot_check``): an H200's.
_DEFAULT_SMS = 132


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached per CUDA device); ``_DEFAULT_SMS`` off CUDA."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return _DEFAULT_SMS


def _decode_splits(bh: int, n_col_blocks: int, sms: int) -> int:
    """Number of splits S of the decode step's layout row: about 4 programs per SM over the B*H
    (query, head) pairs, ``ceil(4 * sms / bh)``, at most ``n_col_blocks`` (the longest layout row,
    so a split has at least one block at the last position), at least 1. Depends on shapes only,
    never on ``pos``, so one launch serves every step (CUDA graphs)."""
    return max(1, min(n_col_blocks, -(-4 * sms // max(bh, 1))))


def compiled_variants(q_shape: Tuple[int, ...], dv: int, block: int, dtype: torch.dtype,
                      causal: bool = True) -> Dict[str, List[dict]]:
    """The launch configs a call with q/k of shape ``q_shape`` (B, heads, L, d), v head dim ``dv``
    and ``dtype`` compiles, per kernel (``fwd``, ``bwd_dq``, ``bwd_dkdv``, ``decode``, ``decode_reduce``): one each
    unless ``VIDEOGPT_FAST_AUTOTUNE=1`` (the pruned sweep list)."""
    d = q_shape[-1]
    meta = dict(BLOCK=block, **_chunk_meta(d, dv), CAUSAL=bool(causal), PRECISION=_precision(dtype), L=q_shape[2])
    out = {name: _LAUNCHERS[name].candidates(_fixed_config(name, block, _width(meta), dtype), meta)
           for name in ("fwd", "bwd_dq", "bwd_dkdv")}
    out.update({name: [config] for name, config in _decode_config(block, d, dv).items()})
    return out


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def _pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _chunks(d: int) -> Tuple[int, int]:
    """Two power-of-two column chunks (C0, C1) covering head dim ``d`` (C1 = 0: one chunk), the
    split taken only when it is narrower than one padded chunk: 144 -> (128, 16), 24 -> (32, 0)."""
    p = _pad(d)
    c0 = max(16, 1 << (d.bit_length() - 1))
    if c0 >= d:
        return p, 0
    c1 = _pad(d - c0)
    return (c0, c1) if c0 + c1 < p else (p, 0)


def _chunk_meta(d: int, dv: int) -> dict:
    (d0, d1), (dv0, dv1) = _chunks(d), _chunks(dv)
    return dict(D0=d0, D1=d1, DV0=dv0, DV1=dv1)


def _meta(q: torch.Tensor, v: torch.Tensor, block: int, causal: bool) -> dict:
    return dict(BLOCK=block, **_chunk_meta(q.shape[-1], v.shape[-1]), CAUSAL=causal, PRECISION=_precision(q.dtype))


def _width(meta: dict) -> int:
    return max(meta["D0"] + meta["D1"], meta["DV0"] + meta["DV1"])


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _forward(q, k, v, tables: _Tables, block: int, causal: bool, out: torch.Tensor):
    B, H, L, D = q.shape
    DV = v.shape[-1]
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    sm_scale = 1.0 / math.sqrt(D)
    th, tr, ch = tables.strides(False)
    args = (q, k, v, out, lse, tables.cols, tables.cnt, sm_scale * _LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), th, tr, ch, H, L, D, DV)
    _launch("fwd", L, B * H, args, _meta(q, v, block, causal))
    return lse


def _backward(q, k, v, o, lse, do, tables: _Tables, block: int, causal: bool):
    """Two launches: dQ (which also stores delta = rowsum(dO * O)), then dK/dV (which reads it)."""
    B, H, L, D = q.shape
    DV = v.shape[-1]
    sm_scale = 1.0 / math.sqrt(D)
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    dq = torch.empty((B, H, L, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, L, D), device=k.device, dtype=k.dtype)
    dv = torch.empty((B, H, L, DV), device=v.device, dtype=v.dtype)
    meta = _meta(q, v, block, causal)
    th, tr, ch = tables.strides(False)
    _launch("bwd_dq", L, B * H,
            (q, k, v, o, do, dq, lse, delta, tables.cols, tables.cnt, sm_scale, sm_scale * _LOG2E,
             *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), th, tr, ch, H, L, D, DV), meta)
    th, tr, ch = tables.strides(True)
    _launch("bwd_dkdv", L, B * H,
            (q, k, v, do, dk, dv, lse, delta, tables.rows, tables.cnt_t, sm_scale, sm_scale * _LOG2E,
             *q.stride(), *k.stride(), *v.stride(), *do.stride(), th, tr, ch, H, L, D, DV), meta)
    return dq, dk, dv


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, out, tables, block, causal):
        lse = _forward(q, k, v, tables, block, causal, out)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(q, k, v, out, lse)
        ctx.tables, ctx.block, ctx.causal = tables, block, causal
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.tables, ctx.block, ctx.causal)
        return dq, dk, dv, None, None, None, None


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, block: int,
                          causal: bool = True, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Block-sparse attention with scale ``d ** -0.5``, differentiable in q, k, v.

    Args:
        q, k: (B, heads, L, d); v: (B, heads, L, dv); float16, bfloat16 or float32, same device
            (CUDA, or CPU under ``TRITON_INTERPRET=1``); any strides; head dims <= 256. Not checked
            here: ``videogpt_fast.ops.blocksparse_attention`` validates them.
        layout: 0/1 (L/block, L/block) or (heads or 1, L/block, L/block): query block i sees key
            block j iff ``layout[..., i, j]``.
        block: one of 16, 32, 64, 128; L must be divisible by it.
        causal: additionally hide keys after the query.
        out: optional (B, heads, L, dv) tensor of q's dtype and device to write the result into
            (it is returned, and carries the autograd history).
    Returns:
        (B, heads, L, dv) in q's dtype; rows that see no key are zero.
    """
    B, H, L, _ = q.shape
    if out is None:
        out = torch.empty((B, H, L, v.shape[-1]), device=v.device, dtype=v.dtype)
    elif out.shape != (B, H, L, v.shape[-1]) or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"blocksparse_attention: out must be {(B, H, L, v.shape[-1])} {q.dtype} on {q.device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    tables = layout_tables(layout, causal, q.device)
    return _BlockSparseAttention.apply(q, k, v, out, tables, block, bool(causal))


#: the most splits one decode launch takes: CUDA's grid y limit (pass 1's grid is (B*heads, S)).
_MAX_SPLITS = 65535


def _check_decode_args(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor,
                       block: int, pos) -> None:
    """The decode kernels' cheap checks (metadata only, no device work or host sync) for direct
    callers: shapes of q, the caches and the layout, one dtype and device, an int or one-element
    integer tensor ``pos`` (its value is range-checked by the caller for an int)."""
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"{name}: q must be (B, heads, 1, d), got {tuple(q.shape)}")
    if (k.dim() != 4 or v.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]
            or v.shape[:3] != k.shape[:3]):
        raise ValueError(f"{name}: k_cache must be (B, heads, L, d) and v_cache (B, heads, L, dv) for q "
                         f"(B, heads, 1, d) {tuple(q.shape)}, got {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
        raise ValueError(f"{name}: q, k_cache, v_cache must share one dtype of {DTYPES}, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:   # a host layout is fine: its tables go to q's device
        raise ValueError(f"{name}: q, k_cache, v_cache must share a device, got {q.device}, {k.device}, {v.device}")
    L = k.shape[2]
    if block not in BLOCKS or L % block:
        raise ValueError(f"{name}: block must be one of {BLOCKS} and divide the cache length {L}, got {block}")
    nb = L // block
    if layout.dim() not in (2, 3) or layout.shape[-2:] != (nb, nb) or (layout.dim() == 3 and
                                                                      layout.shape[0] not in (1, q.shape[1])):
        raise ValueError(f"{name}: layout must be ({nb}, {nb}) or (1 or {q.shape[1]}, {nb}, {nb}) for L={L}, "
                         f"block={block}, got {tuple(layout.shape)}")
    if isinstance(pos, torch.Tensor):
        if pos.numel() != 1 or pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
            raise ValueError(f"{name}: a tensor pos must be a one-element integer tensor, got dtype {pos.dtype}, "
                             f"shape {tuple(pos.shape)}")
        if pos.device != q.device:
            raise ValueError(f"{name}: a tensor pos must be on q's device {q.device}, got {pos.device}")
    elif isinstance(pos, bool) or not hasattr(pos, "__index__"):
        raise ValueError(f"{name}: pos must be an int or a one-element integer tensor, got {pos!r}")


def blocksparse_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 layout: torch.Tensor, block: int, pos: Union[int, torch.Tensor],
                                 out: Optional[torch.Tensor] = None, splits: Optional[int] = None) -> torch.Tensor:
    """Attention of the query at flattened position ``pos`` to the cached keys ``<= pos`` in the
    blocks of layout row ``pos // block`` (the original's ``get_non_block_layout_row`` mask).
    Forward only (sampling).

    Split-K ("flash-decoding", as ``csrc/decode_attention.cu``), two launches and no host sync:
    pass 1, grid (B*heads, S), splits the row's blocks into S near-equal runs and writes one fp32
    partial (acc, max, sum) per split to a scratch tensor (B*heads, S, dv + 2); pass 2, grid
    (B*heads,), merges them into ``out``. One (B, heads) pair alone cannot fill a GPU (64 programs
    for 132 SMs at B=16, 4 heads).

    Args:
        q: (B, heads, 1, d); k_cache: (B, heads, L, d); v_cache: (B, heads, L, dv).
        layout, block: as :func:`blocksparse_attention`; the shapes of q, the caches and the
            layout, their dtypes and devices are checked here (metadata only); the layout's values
            are not.
        pos: int in [0, L) (checked), or a one-element integer tensor on q's device, read only by
            the kernels (no host sync): outside [0, L) the output is NaN. ``ops.decode_attention``
            also range-checks a CPU tensor.
        out: optional (B, heads, 1, dv) output tensor.
        splits: S, the number of splits of the layout row; None: :func:`_decode_splits` (about 4
            programs per SM, at most the longest row's block count). Splits past a row's block
            count are empty. Must be an int >= 1.
    Returns:
        (B, heads, 1, dv) in q's dtype.
    Raises:
        ValueError: shapes, dtypes or devices that do not fit, a block not in :data:`BLOCKS` or not
            dividing L, a non-integer ``pos`` or an int one outside [0, L), a bad ``out`` or
            ``splits`` (an int in [1, 65535]).
    """
    name = "blocksparse_decode_attention"
    _check_decode_args(name, q, k_cache, v_cache, layout, block, pos)
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
        raise ValueError(f"{name}: splits must be None or an int >= 1, got {splits!r}")
    if splits is not None and splits > _MAX_SPLITS:
        raise ValueError(f"{name}: splits must be <= {_MAX_SPLITS} (CUDA's grid y limit), got {splits}")
    L, DV = k_cache.shape[2], v_cache.shape[-1]
    if not isinstance(pos, torch.Tensor):
        pos = operator.index(pos)
        if not 0 <= pos < L:
            raise ValueError(f"{name}: pos must be in [0, {L}), got {pos}")
    if out is not None and (out.shape != (*q.shape[:2], 1, DV) or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(f"{name}: out must be {(*q.shape[:2], 1, DV)} {q.dtype} on {q.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    return blocksparse_decode_attention_unchecked(q, k_cache, v_cache, layout, block, pos, out, splits)


def blocksparse_decode_attention_unchecked(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                           layout: torch.Tensor, block: int, pos: Union[int, torch.Tensor],
                                           out: Optional[torch.Tensor] = None,
                                           splits: Optional[int] = None) -> torch.Tensor:
    """:func:`blocksparse_decode_attention` without its argument checks: what
    ``videogpt_fast.ops.decode_attention`` runs (once per layer and step) after validating the
    inputs itself, so a sampling step checks them once."""
    B, H, L, D = k_cache.shape
    DV = v_cache.shape[-1]
    if isinstance(pos, torch.Tensor):
        pos_ptr, pos_val, from_ptr = pos, 0, True
    else:
        pos_ptr, pos_val, from_ptr = q, pos, False
    if out is None:
        out = torch.empty((B, H, 1, DV), device=q.device, dtype=q.dtype)
    tables = layout_tables(layout, True, q.device)
    th, tr, ch = tables.strides(False)
    S = splits if splits is not None else _decode_splits(B * H, tables.cols.shape[-1], _sm_count(q.device))
    part = torch.empty((B * H, S, DV + 2), device=q.device, dtype=torch.float32)
    chunks = _chunk_meta(D, DV)
    config = _decode_config(block, D, DV)
    _decode_kernel[(B * H, S)](
        q, k_cache, v_cache, part, tables.cols, tables.cnt, pos_ptr, pos_val, _LOG2E / math.sqrt(D), S,
        q.stride(0), q.stride(1), q.stride(3), *k_cache.stride(), *v_cache.stride(), th, tr, ch, H, L, D, DV,
        BLOCK=block, **chunks, POS_FROM_PTR=from_ptr, **config["decode"])
    _decode_reduce_kernel[(B * H,)](
        part, out, pos_ptr, pos_val, S, out.stride(0), out.stride(1), out.stride(3), H, L, DV,
        DV0=chunks["DV0"], DV1=chunks["DV1"], POS_FROM_PTR=from_ptr, **config["decode_reduce"])
    return out
