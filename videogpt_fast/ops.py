"""The one dispatch point for VideoGPT's hot operations.

Models call these functions and never import a kernel. Each op has a plain-PyTorch implementation
here (``*_torch``: the reference every kernel is tested against) and, where one exists, a Triton
kernel in ``videogpt_fast.kernels`` and a CUDA op in ``videogpt_fast._C``. The backend is chosen by
:mod:`videogpt_fast.backends`.

Shapes follow the package conventions: attention tensors are (B, heads, *positions, head_dim).
"""
from __future__ import annotations

import importlib
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .backends import resolve

# ops -> backends (besides torch) that implement them; filled in as kernels land.
_IMPLEMENTED = {
    "codebook_nearest": ("triton", "cuda"),
    "codebook_nearest_with_stats": ("triton",),
    "axial_attention": ("triton",),
    "blocksparse_attention": ("triton",),
    "decode_attention": ("cuda", "triton"),
}


def _kernel(module: str):
    return importlib.import_module(f"videogpt_fast.kernels.{module}")


def _check_tensors(op: str, names: str, *tensors: torch.Tensor) -> None:
    """One floating dtype and one device for all of ``tensors`` (named ``names``, comma-separated)."""
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) != 1 or not tensors[0].is_floating_point():
        raise ValueError(f"{op}: {names} must share one floating dtype, got "
                         f"{', '.join(str(t.dtype) for t in tensors)}")
    if len(devices) != 1:
        raise ValueError(f"{op}: {names} must be on one device, got {', '.join(str(t.device) for t in tensors)}")


# --------------------------------------------------------------------------------------------
# codebook nearest neighbour
# --------------------------------------------------------------------------------------------
def codebook_nearest_torch(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 26) -> torch.Tensor:
    """argmin_k ||x_n - e_k||^2 computed as the original does (|x|^2 - 2 x.e + |e|^2), in row
    chunks so that at most ``chunk`` distances exist at once. Ties go to the lowest index."""
    e_sq = (codebook.t() ** 2).sum(dim=0, keepdim=True)
    rows = max(1, chunk // max(1, codebook.shape[0]))
    out = []
    for start in range(0, x.shape[0], rows):
        xs = x[start:start + rows]
        distances = (xs ** 2).sum(dim=1, keepdim=True) - 2 * xs @ codebook.t() + e_sq
        out.append(torch.argmin(distances, dim=1))
    return torch.cat(out) if len(out) != 1 else out[0]


def _check_codebook_inputs(op: str, x: torch.Tensor, codebook: torch.Tensor) -> None:
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"{op}: expected x (N, D) and codebook (K, D) with equal D, "
                         f"got {tuple(x.shape)} and {tuple(codebook.shape)}")
    _check_tensors(op, "x, codebook", x, codebook)


def codebook_nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each row of ``x``.

    Args:
        x: (N, D) floating tensor.
        codebook: (K, D) tensor on the same device.
    Returns:
        int64 tensor (N,).
    """
    _check_codebook_inputs("codebook_nearest", x, codebook)
    backend = resolve("codebook_nearest", x.device, _IMPLEMENTED["codebook_nearest"])
    if backend == "triton":
        return _kernel("codebook").codebook_nearest(x, codebook)
    if backend == "cuda":
        return torch.ops.videogpt_fast.codebook_nearest(x, codebook)
    return codebook_nearest_torch(x, codebook)


def code_counts(codes: torch.Tensor, n_codes: int, dtype: torch.dtype) -> torch.Tensor:
    """How often each of ``n_codes`` codes occurs in ``codes`` (int64, any shape), as ``dtype`` (K,):
    the original's ``one_hot.sum(0)``. A scatter-add of ones rather than ``bincount``, whose output
    size depends on the data (a graph break under torch.compile); exact while counts < 2^24 in fp32."""
    flat = codes.reshape(-1)
    return torch.zeros(n_codes, dtype=dtype, device=codes.device).index_add_(
        0, flat, torch.ones(flat.shape, dtype=dtype, device=codes.device))


def codebook_stats_torch(x: torch.Tensor, codes: torch.Tensor, n_codes: int):
    """Per-code counts (K,) and sums (K, D) of the rows of ``x`` assigned to ``codes``: the
    original's ``one_hot.sum(0)`` and ``(x.t() @ one_hot).t()`` without the (N, K) one-hot."""
    counts = code_counts(codes, n_codes, x.dtype)
    sums = x.new_zeros(n_codes, x.shape[1]).index_add_(0, codes, x)
    return counts, sums


def codebook_nearest_with_stats(x: torch.Tensor, codebook: torch.Tensor):
    """:func:`codebook_nearest` plus the EMA statistics of the assignment.

    Returns:
        codes int64 (N,), counts (K,) and sums (K, D) (see :func:`codebook_stats_torch`); the
        Triton backend computes all three in one kernel (fp32 statistics).
    """
    _check_codebook_inputs("codebook_nearest_with_stats", x, codebook)
    backend = resolve("codebook_nearest_with_stats", x.device, _IMPLEMENTED["codebook_nearest_with_stats"])
    if backend == "triton":
        codes, counts, sums = _kernel("codebook").codebook_nearest_with_stats(x, codebook)
        return codes, counts.to(x.dtype), sums.to(x.dtype)
    codes = codebook_nearest(x, codebook)
    return (codes, *codebook_stats_torch(x, codes, codebook.shape[0]))


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: Optional[torch.Tensor] = None, attn_dropout: float = 0.0,
                        training: bool = False) -> torch.Tensor:
    """The original's ``scaled_dot_product_attention`` over the second-to-last dimension: explicit
    scores, a 0/1 ``mask`` (0 = hidden), softmax in the input dtype, optional dropout."""
    attn = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        attn = attn.masked_fill(mask == 0, float("-inf"))
    attn = F.softmax(attn, dim=-1).type_as(attn)
    attn = F.dropout(attn, p=attn_dropout, training=training)
    return torch.matmul(attn, v)


def _spatial_dim(x: torch.Tensor, dim: int) -> int:
    n = x.dim()
    d = dim + n if dim < 0 else dim
    if not 2 <= d <= n - 2:
        raise ValueError(f"axial_attention: dim {dim} is not a spatial axis of a tensor of shape "
                         f"{tuple(x.shape)} laid out (B, heads, *spatial, head_dim)")
    return d


def axial_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """Attention along one spatial axis with PyTorch's fused SDPA (scale d^-0.5, no mask)."""
    d = _spatial_dim(q, dim)
    qm, km, vm = (torch.movedim(t, d, -2) for t in (q, k, v))
    lead = qm.shape[:-2]
    # SDPA on 4-D (rows, 1, axis, d): faster than on 6-D views (3.5x on CPU) and traceable by
    # torch.compile, which mis-handles the 6-D case (torch 2.13)
    out = F.scaled_dot_product_attention(*(t.reshape(-1, 1, t.shape[-2], t.shape[-1]) for t in (qm, km, vm)))
    return torch.movedim(out.reshape(*lead, *out.shape[-2:]), -2, d)


def axial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """Attention along spatial axis ``dim`` of (B, heads, *spatial, d) tensors, as the original
    AxialAttention computes it. ``dim`` indexes the full tensor (negative counts from the end; the
    original's ``axial_dim=-2`` is W of (B, heads, T, H, W, d))."""
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"axial_attention: q, k must match and v share their leading dims, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    _spatial_dim(q, dim)
    _check_tensors("axial_attention", "q, k, v", q, k, v)
    backend = resolve("axial_attention", q.device, _IMPLEMENTED["axial_attention"])
    if backend == "triton":
        return _kernel("axial_attention").axial_attention(q, k, v, dim)
    return axial_attention_torch(q, k, v, dim)


def check_layout(layout: torch.Tensor, seq_len: int, block: int, n_head: int, as_bool: bool = True) -> torch.Tensor:
    """Validate a block layout and return it as a bool tensor (heads, blocks, blocks), or with
    ``as_bool=False`` as given (shape checks only: no device work, as per-call validation needs)."""
    if block <= 0 or seq_len % block != 0:
        raise ValueError(f"blocksparse_attention: sequence length {seq_len} is not divisible by block {block}")
    nb = seq_len // block
    given = layout
    if layout.dim() == 2:
        layout = layout.unsqueeze(0).expand(n_head, -1, -1)
    if layout.dim() != 3 or layout.shape[1:] != (nb, nb) or layout.shape[0] not in (1, n_head):
        raise ValueError(f"blocksparse_attention: layout must be ({nb}, {nb}) or ({n_head}, {nb}, {nb}) "
                         f"for L={seq_len}, block={block}, got {tuple(layout.shape)}")
    if not as_bool:
        return given
    if layout.shape[0] == 1:
        layout = layout.expand(n_head, -1, -1)
    return layout.to(device=layout.device, dtype=torch.bool)


def blocksparse_dense_mask(layout: torch.Tensor, block: int, causal: bool) -> torch.Tensor:
    """The (heads, L, L) 0/1 mask that a block layout stands for (True = query may see key)."""
    mask = layout.bool().repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    if causal:
        L = mask.shape[-1]
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return mask


def blocksparse_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                layout: torch.Tensor, block: int, causal: bool = True) -> torch.Tensor:
    """Block-sparse attention in plain PyTorch, with cost proportional to the non-zero blocks.

    For every query block the key/value blocks of its layout row are gathered (rows padded to the
    longest), attended to, and the padding masked out; autograd gives the backward. Queries that
    see no key produce zeros.
    """
    B, H, L, D = q.shape
    lay = check_layout(layout.to(q.device), L, block, H)
    nb = L // block
    nnz = lay.sum(-1)                                     # (H, nb)
    width = max(int(nnz.max().item()), 1)
    # column indices of each row's blocks, padded with block 0 and masked below
    order = torch.argsort((~lay).to(torch.int8), dim=-1, stable=True)[..., :width]  # (H, nb, W)
    valid = torch.arange(width, device=q.device).view(1, 1, width) < nnz.unsqueeze(-1)
    qb = q.reshape(B, H, nb, block, D)
    kb = k.reshape(B, H, nb, block, D)
    vb = v.reshape(B, H, nb, block, v.shape[-1])
    idx = order.reshape(1, H, nb * width).expand(B, -1, -1)
    kg = torch.gather(kb, 2, idx[..., None, None].expand(-1, -1, -1, block, D)).view(B, H, nb, width * block, D)
    vg = torch.gather(vb, 2, idx[..., None, None].expand(-1, -1, -1, block, vb.shape[-1]))
    vg = vg.view(B, H, nb, width * block, vb.shape[-1])
    scores = torch.matmul(qb, kg.transpose(-1, -2)) / math.sqrt(D)   # (B, H, nb, block, W*block)
    keep = valid.repeat_interleave(block, dim=-1).unsqueeze(-2)      # (H, nb, 1, W*block)
    if causal:
        q_pos = torch.arange(L, device=q.device).view(nb, block, 1)
        k_pos = (order.unsqueeze(-1) * block + torch.arange(block, device=q.device)).view(H, nb, 1, width * block)
        keep = keep & (k_pos <= q_pos.unsqueeze(0))
    scores = scores.masked_fill(~keep, float("-inf"))
    acc = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    probs = torch.softmax(scores.to(acc), dim=-1).nan_to_num(0.0).to(v.dtype)
    out = torch.matmul(probs, vg)                                    # (B, H, nb, block, Dv)
    return out.reshape(B, H, L, v.shape[-1])


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor,
                          block: int, causal: bool = True) -> torch.Tensor:
    """Block-sparse attention over flattened positions.

    Args:
        q, k, v: (B, heads, L, d).
        layout: 0/1 (L/block, L/block) or (heads, L/block, L/block): query block i sees key block j
            iff ``layout[..., i, j]``; as ``StridedSparsityConfig.make_layout()`` makes it.
        block: block size; L must be divisible by it.
        causal: additionally hide keys after the query (j > i).
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"blocksparse_attention: expected q, k (B, heads, L, d) and v (B, heads, L, dv), "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_layout(layout, q.shape[2], block, q.shape[1], as_bool=False)
    _check_tensors("blocksparse_attention", "q, k, v", q, k, v)
    backend = resolve("blocksparse_attention", q.device, _IMPLEMENTED["blocksparse_attention"])
    if backend == "triton":
        return _kernel("blocksparse_attention").blocksparse_attention(q, k, v, layout, block, causal)
    return blocksparse_attention_torch(q, k, v, layout, block, causal)


# --------------------------------------------------------------------------------------------
# decode attention: one query per (batch, head) against a KV cache
# --------------------------------------------------------------------------------------------
def _check_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                            layout_row: Optional[torch.Tensor], block: int) -> None:
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
    if layout_row is not None:
        L = k.shape[2]
        if block <= 0 or L % block != 0:
            raise ValueError(f"decode_attention: cache length {L} is not divisible by block {block}")
        if layout_row.shape != (q.shape[1], L // block):
            raise ValueError(f"decode_attention: layout_row must be (heads, L/block) = ({q.shape[1]}, "
                             f"{L // block}), got {tuple(layout_row.shape)}")
        if layout_row.device != q.device:
            raise ValueError(f"decode_attention: layout_row on {layout_row.device} but q on {q.device}")


def decode_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                           layout_row: Optional[torch.Tensor] = None, block: int = 0) -> torch.Tensor:
    """Reference decode attention with PyTorch SDPA (scale d^-0.5) and a boolean key mask: key j is
    visible iff ``j <= pos`` and, with ``layout_row``, ``layout_row[h, j // block]``."""
    L = k.shape[2]
    p = pos.reshape(())
    keys = torch.arange(L, device=q.device)
    visible = keys <= p
    if layout_row is not None:
        mask = (visible & layout_row.bool()[:, keys // block]).unsqueeze(1)  # (H, 1, L)
    else:
        mask = visible.view(1, L)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask).squeeze(2)
    return out.masked_fill((p < 0) | (p >= L), float("nan"))  # as the kernels: no host sync on pos


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
    torch.compile traces a step that calls it and CUDA graphs capture it."""
    if layout is None:
        layout, block = _dense_decode_layout(k.shape[2], q.device)
    kernel = _kernel("blocksparse_attention").blocksparse_decode_attention
    return kernel(q.unsqueeze(2), k, v, layout, block, pos).squeeze(2)


@_triton_decode_attention.register_fake
def _(q, k, v, pos, layout, block):
    return q.new_empty((*q.shape[:2], v.shape[-1]))


def decode_attention_backend(device: torch.device) -> str:
    """The backend :func:`decode_attention` runs for tensors on ``device``, resolved now (a step
    that is compiled resolves it once, outside the traced code: resolution reads the
    environment and logs)."""
    return resolve("decode_attention", device, _IMPLEMENTED["decode_attention"])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                     layout_row: Optional[torch.Tensor] = None, block: int = 0, *,
                     layout: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Attention of the query at flattened position ``pos`` over the cached keys ``0..pos``.

    Args:
        q: (B, H, d) query of the current position.
        k, v: (B, H, L, d) and (B, H, L, dv) caches (positions after ``pos`` are ignored).
        pos: one-element int64 tensor on the device (a tensor, so CUDA graphs can replay the step);
            in [0, L): a CPU ``pos`` outside raises, a device one (never read on the host, which
            would sync) gives a NaN output with every backend.
        layout_row: optional (H, L/block) 0/1 block-sparse layout row of ``pos``'s query block.
        block: the layout's block size (needed with ``layout_row`` or ``layout``).
        layout: alternatively the whole (H, L/block, L/block) layout; the row is taken on device.
        backend: a backend already resolved by :func:`decode_attention_backend` (default: resolve now).
    Returns:
        (B, H, dv) in q's dtype.
    """
    if layout is not None and layout_row is not None:
        raise ValueError("decode_attention: pass layout_row or layout, not both")
    backend = backend or decode_attention_backend(q.device)
    if backend == "triton":
        _check_decode_attention(q, k, v, pos, None, block)
        if layout_row is not None:
            raise ValueError("decode_attention: the Triton backend takes the whole `layout`, not `layout_row`")
        return _triton_decode_attention(q, k, v, pos.reshape(1), layout, int(block))
    if layout is not None:  # the row of pos's block (clamped: an out-of-range pos gives NaN below)
        row = torch.div(pos.reshape(1).clamp(0, k.shape[2] - 1), block, rounding_mode="floor")
        layout_row = layout.index_select(1, row).squeeze(1)
    _check_decode_attention(q, k, v, pos, layout_row, block)
    if backend == "cuda":
        return torch.ops.videogpt_fast.decode_attention(q, k, v, pos.reshape(1), layout_row, int(block))
    return decode_attention_torch(q, k, v, pos, layout_row, block)
