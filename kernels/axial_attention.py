"""Axial attention (attention along one spatial axis) in Triton, forward and backward.

``axial_attention(q, k, v, dim)`` takes q, k (B, heads, *spatial, d) and v (B, heads, *spatial, dv)
and attends along axis ``dim`` as the original ``AxialAttention`` does (scale d^-0.5, no mask), for
every other position independently. A *group* is one such position (one index of every dim but
``dim`` and the head dim); the kernels read a group's rows in place through an int64 offset table
of the groups (built once per shape/strides on the device and cached) and the axis and head-dim
strides, so q, k, v, the output gradient and the outputs may have any strides: nothing is permuted
or copied.

Tiling: the axis is short in VideoGPT (T = 4..16, H = W = 32), so a block of ``SEG`` positions
(the axis length rounded up to a power of two, at most ``block``) usually holds the whole axis.
When it is shorter than ``min_rows`` several groups are packed into one program (``R`` of them)
and kept apart by a block-diagonal mask, so that tensor-core tiles are at least 16 rows tall.
Longer axes loop over key blocks with an online softmax (forward) and over blocks in the backward.
Head dims that are not powers of two (120, 144) are padded to the next one by masking.

Numerics: fp32 accumulation and softmax (base-2 exponentials) for every input dtype. fp32 inputs
follow ``torch.get_float32_matmul_precision()``: ``"highest"`` (PyTorch's default) uses
``tf32x3`` (three TF32 tensor-core products per fp32 product, relative error ~2^-21, close to fp32;
exact-fp32 FMA dots were reported to spill registers and overflow shared memory on sm_90 by aot_check
before 2026-11-30, which overstated registers; with the JIT's specialisation, at the fp32 tile budget,
they take 106-255 registers, 0-48 bytes of spill and 24-42 KB of shared memory: not timed on a GPU),
``"high"``/``"medium"`` allow plain TF32. fp32 tiles are capped at half the 16-bit tile size. The forward stores the row log-sum-exp for the
backward, which recomputes the probabilities (FlashAttention-2 style); when the axis fits in one
block, dq, dk and dv come from a single kernel.

Configs: the tile (``SEG`` x ``R`` rows, padded head dims) comes from the register budget above,
the warps and pipeline stages from a heuristic: one config per kernel, shape and dtype, so a first
call compiles two or three kernels (:func:`compiled_variants` lists them). The previous
per-shape autotuning over 6 warp/stage configs did not let 6 cases finish in 55 s on H200.
``VIDEOGPT_FAST_AUTOTUNE=1`` sweeps ``_WARP_CONFIGS`` for a tuning session (see ``tuning``).

One launch for all three axes: not done. The VQ-VAE's axial block projects separate q, k, v per
axis, so a fused launch would move the same bytes and save only two launches (~10 us against the
~100 us the three calls need at the sizes below); the axes' tiles also differ (T = 4 vs 32).

Bound at the VQ-VAE's sizes (B=16, 2 heads x 120, latent 4x32x32 = 131,072 rows of 120 per
tensor; H200 ceilings of ``shared/gpu/2026-11-29-H200``): along a 32-long axis the forward needs
4 * 32 * 120 * 131,072 = 2.0 GFLOP (2.6 us at 760 TFLOP/s bf16) but moves q, k, v, o = 126 MB in
bf16 (30 us at 4.15 TB/s), the backward 5.0 GFLOP against 252 MB (61 us): memory-bound, so the
bound is bytes / 4.15 TB/s (fp32: twice the bytes; 8x32x32 latents: twice the rows). Measured:
not measured on GPU (the H200 run of 2026-11-29 timed out compiling autotune variants).
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .reference import spatial_dim
from .tuning import Launcher  # (importing it applies the interpreter fixes under TRITON_INTERPRET=1)

__all__ = ["axial_attention", "compiled_variants", "DTYPES", "MAX_HEAD_DIM"]

#: Input dtypes and largest head dim the kernels take (checked by ``videogpt_fast.ops``); the
#: plain-PyTorch references are ``reference.axial_attention_reference`` (SDPA, backend torch) and
#: ``reference.axial_attention_reference_explicit`` (the original's formulation).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(ptr, base, pos, s_a, s_d, row_ok, BLOCK: tl.constexpr, D):
    """Rows ``base + pos * s_a`` (int64) of a tile (M, BLOCK), columns masked beyond D."""
    cols = tl.arange(0, BLOCK)
    mask = row_ok[:, None] & (cols < D)[None, :]
    return tl.load(ptr + base[:, None] + pos[:, None] * s_a + cols[None, :] * s_d, mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, val, base, pos, s_a, s_d, row_ok, BLOCK: tl.constexpr, D):
    cols = tl.arange(0, BLOCK)
    mask = row_ok[:, None] & (cols < D)[None, :]
    tl.store(ptr + base[:, None] + pos[:, None] * s_a + cols[None, :] * s_d,
             val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_rows(G, S, SEG: tl.constexpr, R: tl.constexpr):
    """This program's R * SEG rows: group index (clamped, int64), group-valid mask, position on the
    axis (block ``program_id(1)``), row-valid mask, the block-diagonal same-group mask, and each
    row's offset within its block (for the positions of other blocks)."""
    r = tl.arange(0, R * SEG)
    grp = tl.program_id(0) * R + r // SEG
    g_ok = grp < G
    grp = tl.where(g_ok, grp, 0).to(tl.int64)
    pos = (tl.program_id(1) * SEG + r % SEG).to(tl.int64)
    same = (r // SEG)[:, None] == (r // SEG)[None, :]
    return grp, g_ok, pos, g_ok & (pos < S), same, r % SEG


@triton.jit
def _key_block(q, K, V, k_base, v_base, kb, off, g_ok, S, s_ka, s_kd, s_va, s_vd, D, DVD, qk_scale,
               SEG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """Key block ``kb`` of this program's groups: k, v, their row mask, and the scaled scores q k^T
    (base-2 units)."""
    kpos = (kb * SEG + off).to(tl.int64)
    k_ok = g_ok & (kpos < S)
    k = _load_rows(K, k_base, kpos, s_ka, s_kd, k_ok, BLOCK_D, D)
    v = _load_rows(V, v_base, kpos, s_va, s_vd, k_ok, BLOCK_DV, DVD)
    return k, v, k_ok, tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, QOFF, KOFF, VOFF, OOFF,
                G, S, D, DVD,
                s_qa, s_qd, s_ka, s_kd, s_va, s_vd, s_oa, s_od,
                qk_scale,
                SEG: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                PRECISION: tl.constexpr):
    grp, g_ok, qpos, q_ok, same, off = _tile_rows(G, S, SEG, R)
    q_base = tl.load(QOFF + grp)
    k_base = tl.load(KOFF + grp)
    v_base = tl.load(VOFF + grp)

    q = _load_rows(Q, q_base, qpos, s_qa, s_qd, q_ok, BLOCK_D, D)
    m_i = tl.full([R * SEG], float("-inf"), tl.float32)
    l_i = tl.zeros([R * SEG], tl.float32)
    acc = tl.zeros([R * SEG, BLOCK_DV], tl.float32)
    for kb in range(0, tl.cdiv(S, SEG)):
        k, v, k_ok, s = _key_block(q, K, V, k_base, v_base, kb, off, g_ok, S, s_ka, s_kd, s_va, s_vd, D, DVD,
                                   qk_scale, SEG, BLOCK_D, BLOCK_DV, PRECISION)
        s = tl.where(same & q_ok[:, None] & k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype.element_ty), v, input_precision=PRECISION)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    o_base = tl.load(OOFF + grp)
    _store_rows(O, acc / l_i[:, None], o_base, qpos, s_oa, s_od, q_ok, BLOCK_DV, DVD)
    tl.store(LSE + grp * S + qpos, m_i + tl.log2(l_i), mask=q_ok)


@triton.jit
def _bwd_kernel(Q, K, V, O, DO, DQ, DK, DV, LSE,
                QOFF, KOFF, VOFF, OOFF, DOOFF, DQOFF, DKOFF, DVOFF,
                G, S, D, DVD,
                s_qa, s_qd, s_ka, s_kd, s_va, s_vd, s_oa, s_od,
                s_doa, s_dod, s_dqa, s_dqd, s_dka, s_dkd, s_dva, s_dvd,
                sm_scale, qk_scale,
                SEG: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                PRECISION: tl.constexpr, FUSED_DQ: tl.constexpr):
    """dk, dv of one key block (and dq when the axis is a single block) of R groups."""
    grp, g_ok, kpos, k_ok, same, off = _tile_rows(G, S, SEG, R)
    q_base = tl.load(QOFF + grp)
    o_base = tl.load(OOFF + grp)
    do_base = tl.load(DOOFF + grp)
    k = _load_rows(K, tl.load(KOFF + grp), kpos, s_ka, s_kd, k_ok, BLOCK_D, D)
    v = _load_rows(V, tl.load(VOFF + grp), kpos, s_va, s_vd, k_ok, BLOCK_DV, DVD)
    dk = tl.zeros([R * SEG, BLOCK_D], tl.float32)
    dv = tl.zeros([R * SEG, BLOCK_DV], tl.float32)
    for ib in range(0, tl.cdiv(S, SEG)):
        qpos = (ib * SEG + off).to(tl.int64)
        q_ok = g_ok & (qpos < S)
        q = _load_rows(Q, q_base, qpos, s_qa, s_qd, q_ok, BLOCK_D, D)
        o = _load_rows(O, o_base, qpos, s_oa, s_od, q_ok, BLOCK_DV, DVD)
        do = _load_rows(DO, do_base, qpos, s_doa, s_dod, q_ok, BLOCK_DV, DVD)
        lse = tl.load(LSE + grp * S + qpos, mask=q_ok, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(same & q_ok[:, None] & k_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(DO.dtype.element_ty)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(Q.dtype.element_ty)), q, input_precision=PRECISION)
        if FUSED_DQ:
            dq = tl.dot(ds.to(K.dtype.element_ty), k, input_precision=PRECISION) * sm_scale
            _store_rows(DQ, dq, tl.load(DQOFF + grp), qpos, s_dqa, s_dqd, q_ok, BLOCK_D, D)
    _store_rows(DK, dk * sm_scale, tl.load(DKOFF + grp), kpos, s_dka, s_dkd, k_ok, BLOCK_D, D)
    _store_rows(DV, dv, tl.load(DVOFF + grp), kpos, s_dva, s_dvd, k_ok, BLOCK_DV, DVD)


@triton.jit
def _bwd_dq_kernel(Q, K, V, O, DO, DQ, LSE,
                   QOFF, KOFF, VOFF, OOFF, DOOFF, DQOFF,
                   G, S, D, DVD,
                   s_qa, s_qd, s_ka, s_kd, s_va, s_vd, s_oa, s_od, s_doa, s_dod, s_dqa, s_dqd,
                   sm_scale, qk_scale,
                   SEG: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PRECISION: tl.constexpr):
    """dq of one query block of R groups, looping over the key blocks (axes longer than SEG)."""
    grp, g_ok, qpos, q_ok, same, off = _tile_rows(G, S, SEG, R)
    k_base = tl.load(KOFF + grp)
    v_base = tl.load(VOFF + grp)
    q = _load_rows(Q, tl.load(QOFF + grp), qpos, s_qa, s_qd, q_ok, BLOCK_D, D)
    o = _load_rows(O, tl.load(OOFF + grp), qpos, s_oa, s_od, q_ok, BLOCK_DV, DVD)
    do = _load_rows(DO, tl.load(DOOFF + grp), qpos, s_doa, s_dod, q_ok, BLOCK_DV, DVD)
    lse = tl.load(LSE + grp * S + qpos, mask=q_ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    dq = tl.zeros([R * SEG, BLOCK_D], tl.float32)
    for kb in range(0, tl.cdiv(S, SEG)):
        k, v, k_ok, s = _key_block(q, K, V, k_base, v_base, kb, off, g_ok, S, s_ka, s_kd, s_va, s_vd, D, DVD,
                                   qk_scale, SEG, BLOCK_D, BLOCK_DV, PRECISION)
        p = tl.where(same & q_ok[:, None] & k_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(K.dtype.element_ty), k, input_precision=PRECISION)
    _store_rows(DQ, dq * sm_scale, tl.load(DQOFF + grp), qpos, s_dqa, s_dqd, q_ok, BLOCK_D, D)


# --------------------------------------------------------------------------------------------
# configs: the tile comes from _Config; warps and stages from its heuristic (one config per
# kernel, shape and dtype), or with VIDEOGPT_FAST_AUTOTUNE=1 from a sweep over _WARP_CONFIGS
# --------------------------------------------------------------------------------------------
_WARP_CONFIGS = [{"num_warps": w, "num_stages": st} for w in (4, 8) for st in (1, 2, 3)]
_KEY = ["S", "D", "DVD", "SEG", "R", "BLOCK_D", "BLOCK_DV", "PRECISION"]
_LAUNCHERS = {"fwd": Launcher(_fwd_kernel, _WARP_CONFIGS, _KEY),
              "bwd": Launcher(_bwd_kernel, _WARP_CONFIGS, _KEY + ["FUSED_DQ"]),
              "bwd_dq": Launcher(_bwd_dq_kernel, _WARP_CONFIGS, _KEY)}


def _empty_in_order(like: torch.Tensor, last: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A dense tensor of ``like``'s shape with the last dim ``last``, whose dims are laid out in
    the order of ``like``'s strides (head dim innermost), so that e.g. an output of a q that is a
    view of (B, T, H, W, heads, d) keeps that memory order."""
    n = like.dim()
    order = sorted(range(n - 1), key=lambda i: -like.stride(i)) + [n - 1]  # stable: ties keep dim order
    shape = list(like.shape[:-1]) + [last]
    buf = torch.empty([shape[i] for i in order], dtype=dtype or like.dtype, device=like.device)
    inverse = [order.index(i) for i in range(n)]
    return buf.permute(inverse)


@functools.lru_cache(maxsize=256)
def _offsets_cached(sizes: Tuple[int, ...], strides: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    off = torch.zeros((), dtype=torch.int64, device=device)
    for n, st in zip(sizes, strides):
        off = off.unsqueeze(-1) + torch.arange(n, dtype=torch.int64, device=device) * st
    return off.reshape(-1)


def _group_offsets(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Element offset of the first row of every group of ``t`` (row-major over the outer dims)."""
    outer = [i for i in range(t.dim() - 1) if i != axis]
    return _offsets_cached(tuple(t.shape[i] for i in outer), tuple(t.stride(i) for i in outer), t.device)


def _tiling(seq: int, block: int, min_rows: int, max_seg: int) -> Tuple[int, int]:
    seg = min(triton.next_power_of_2(seq), block, max_seg)
    return seg, max(1, min_rows // seg)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored: fp16/bf16 operands go to the tensor cores as they are
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


class _Config:
    """Launch parameters shared by the forward and the backward of one call."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, axis: int, block: int, min_rows: int):
        self.axis = axis
        self.seq = q.shape[axis]
        self.groups = q.numel() // (q.shape[-1] * self.seq)
        self.d, self.dv = q.shape[-1], v.shape[-1]
        self.block_d = max(16, triton.next_power_of_2(self.d))
        self.block_dv = max(16, triton.next_power_of_2(self.dv))
        width = max(self.block_d, self.block_dv)
        # tile budget (rows x padded head dim) that compiles for sm_90 within shared memory, the
        # forward without register spills, the backward with few: d=120 at the paper's latents in
        # aot_check (with the JIT's specialisation), fp16/bf16 0-40 bytes, fp32 (tf32x3 splits every
        # operand) 16-360; aot_check before 2026-11-30 (unspecialised) said 0 and 32-296
        budget = 2048 if q.dtype == torch.float32 else 4096
        self.seg, self.r = _tiling(self.seq, block, min_rows, max(1, budget // width))
        self.n_blocks = triton.cdiv(self.seq, self.seg)
        self.grid = (triton.cdiv(self.groups, self.r), self.n_blocks)
        self.sm_scale = 1.0 / math.sqrt(self.d)
        self.precision = _precision(q.dtype)
        tile = self.seg * self.r * width
        self.warps_fwd = 4 if tile <= 4096 else 8
        self.warps_bwd = 8 if tile >= 4096 or q.dtype == torch.float32 else 4
        # one loop iteration when the axis fits a block: nothing to pipeline
        self.stages = 1 if self.n_blocks == 1 else 2

    def meta(self):
        return dict(SEG=self.seg, R=self.r, BLOCK_D=self.block_d, BLOCK_DV=self.block_dv, PRECISION=self.precision)

    def launch(self, name: str, args: tuple, **extra) -> None:
        """Launch kernel ``name`` (``fwd``, ``bwd``, ``bwd_dq``) with this call's tile and config."""
        _LAUNCHERS[name](lambda c: self.grid, args, dict(self.meta(), **extra), self.config(name))

    def config(self, name: str) -> dict:
        return {"num_warps": self.warps_fwd if name == "fwd" else self.warps_bwd, "num_stages": self.stages}

    def variants(self) -> Dict[str, List[dict]]:
        names = ["fwd", "bwd"] + ([] if self.n_blocks == 1 else ["bwd_dq"])
        return {n: [dict(c, **self.meta()) for c in _LAUNCHERS[n].candidates(self.config(n), self.meta())]
                for n in names}

    def strides(self, *ts: torch.Tensor) -> Sequence[int]:
        return [s for t in ts for s in (t.stride(self.axis), t.stride(-1))]


def _forward(q, k, v, cfg: _Config):
    o = _empty_in_order(q, cfg.dv)
    lse = torch.empty((cfg.groups * cfg.seq,), dtype=torch.float32, device=q.device)
    offs = [_group_offsets(t, cfg.axis) for t in (q, k, v, o)]
    cfg.launch("fwd", (q, k, v, o, lse, *offs, cfg.groups, cfg.seq, cfg.d, cfg.dv, *cfg.strides(q, k, v, o),
                       cfg.sm_scale * _LOG2E))
    return o, lse


def _backward(q, k, v, o, lse, do, cfg: _Config):
    dq, dk, dv = _empty_in_order(q, cfg.d), _empty_in_order(k, cfg.d), _empty_in_order(v, cfg.dv)
    offs = {name: _group_offsets(t, cfg.axis) for name, t in
            dict(q=q, k=k, v=v, o=o, do=do, dq=dq, dk=dk, dv=dv).items()}
    scales = (cfg.sm_scale, cfg.sm_scale * _LOG2E)
    fused = cfg.n_blocks == 1
    cfg.launch("bwd", (q, k, v, o, do, dq, dk, dv, lse, *offs.values(), cfg.groups, cfg.seq, cfg.d, cfg.dv,
                       *cfg.strides(q, k, v, o, do, dq, dk, dv), *scales), FUSED_DQ=fused)
    if not fused:
        cfg.launch("bwd_dq", (q, k, v, o, do, dq, lse, *(offs[n] for n in ("q", "k", "v", "o", "do", "dq")),
                              cfg.groups, cfg.seq, cfg.d, cfg.dv, *cfg.strides(q, k, v, o, do, dq), *scales))
    return dq, dk, dv


class _AxialAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cfg):
        o, lse = _forward(q, k, v, cfg)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.cfg = cfg
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.cfg)
        return dq, dk, dv, None


def _validate(q: torch.Tensor, dim: int, block: int, min_rows: int) -> int:
    """The tiling arguments (shapes, dtypes and devices are checked by ``ops.axial_attention``)."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"axial_attention: block must be a power of two, got {block}")
    if min_rows < 16 or min_rows & (min_rows - 1):
        raise ValueError(f"axial_attention: min_rows must be a power of two >= 16 (tensor-core tiles), "
                         f"got {min_rows}")
    return spatial_dim(q, dim)


def compiled_variants(shape: Sequence[int], dv: int, dim: int, dtype: torch.dtype, *, block: int = 64,
                      min_rows: int = 16) -> Dict[str, List[dict]]:
    """The launch configs (tile and warps/stages) that :func:`axial_attention` forward (``fwd``) and
    backward (``bwd``, and ``bwd_dq`` for axes longer than one block) compile for q, k of
    ``shape`` (B, heads, *spatial, d), v head dim ``dv`` and ``dtype``: one per kernel unless
    ``VIDEOGPT_FAST_AUTOTUNE=1``. Allocates nothing."""
    q = torch.empty(tuple(shape), dtype=dtype, device="meta")
    v = torch.empty(*tuple(shape)[:-1], dv, dtype=dtype, device="meta")
    return _Config(q, v, _validate(q, dim, block, min_rows), block, min_rows).variants()


def axial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int, *,
                    block: int = 64, min_rows: int = 16) -> torch.Tensor:
    """softmax(q k^T d^-1/2) v along spatial axis ``dim``; differentiable in q, k and v.

    Inputs are not checked here beyond the tiling arguments: call it through
    ``videogpt_fast.ops.axial_attention``, which validates them.

    Args:
        q, k: (B, heads, *spatial, d); v: (B, heads, *spatial, dv); float16/bfloat16/float32 on
            one device, any strides, head dims <= 256. ``dim`` indexes the full tensor (negative
            from the end).
        block: most axis positions per tile (power of two; also capped by a register budget:
            32 for bf16/fp16 at head dim 120, 16 for fp32); longer axes are processed in blocks.
        min_rows: pack groups until a tile has at least this many rows (power of two).
    Returns:
        (B, heads, *spatial, dv) in q's dtype, laid out in q's memory order.
    """
    axis = _validate(q, dim, block, min_rows)
    if q.numel() == 0 or v.numel() == 0:
        return _empty_in_order(q, v.shape[-1]).zero_()
    cfg = _Config(q, v, axis, block, min_rows)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _AxialAttentionFn.apply(q, k, v, cfg)
    return _forward(q, k, v, cfg)[0]
