"""Plain-PyTorch references of every op: the bottom of the package (imports only torch).

Naming rule: the reference of op ``<op>`` is ``<op>_reference``; it is what backend ``torch`` of
:mod:`videogpt_fast.ops` runs and what each kernel is tested against. Where the tests also need a
slower, more literal formulation (the original's explicit softmax, float64 distances), it is
``<op>_reference_<how>``. The Triton kernels beside this module and ``videogpt_fast.ops`` import
from here; nothing here validates inputs (``ops`` does, once).

Shapes follow the package conventions: attention tensors are (B, heads, *positions, head_dim).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "attention_reference", "spatial_dim",
    "codebook_nearest_reference", "codebook_nearest_reference_float64", "code_counts",
    "codebook_stats_reference", "codebook_nearest_with_stats_reference", "codebook_stats_reference_onehot",
    "axial_attention_reference", "axial_attention_reference_explicit",
    "expand_layout", "padded_csr", "blocksparse_dense_mask", "blocksparse_attention_reference",
    "blocksparse_attention_reference_dense",
    "decode_layout_row", "decode_attention_reference", "decode_attention_reference_dense",
]


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


def spatial_dim(x: torch.Tensor, dim: int) -> int:
    """``dim`` as a non-negative index of a spatial axis of ``x`` (B, heads, *spatial, d).

    Raises:
        ValueError: ``dim`` names the batch, head or head-dim axis.
    """
    n = x.dim()
    d = dim + n if dim < 0 else dim
    if not 2 <= d <= n - 2:
        raise ValueError(f"axial_attention: dim {dim} is not a spatial axis of a tensor of shape "
                         f"{tuple(x.shape)} laid out (B, heads, *spatial, head_dim)")
    return d


# --------------------------------------------------------------------------------------------
# codebook
# --------------------------------------------------------------------------------------------
def codebook_nearest_reference(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 26) -> torch.Tensor:
    """argmin_k ||x_n - e_k||^2 computed as the original does (|x|^2 - 2 x.e + |e|^2), in row
    chunks so that at most ``chunk`` distances exist at once. Ties go to the lowest index.
    x (N, D), codebook (K, D) -> int64 (N,)."""
    e_sq = (codebook.t() ** 2).sum(dim=0, keepdim=True)
    rows = max(1, chunk // max(1, codebook.shape[0]))
    out = []
    for start in range(0, x.shape[0], rows):
        xs = x[start:start + rows]
        distances = (xs ** 2).sum(dim=1, keepdim=True) - 2 * xs @ codebook.t() + e_sq
        out.append(torch.argmin(distances, dim=1))
    if not out:  # N = 0
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    return torch.cat(out) if len(out) != 1 else out[0]


def codebook_nearest_reference_float64(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """The exact answer: argmin_k sum_d (x_nd - e_kd)^2 in float64, elementwise (no |x|^2 - 2x.e
    cancellation), lowest index on ties; in row chunks of at most ``chunk`` elements. (N,) int64."""
    x64, e64 = x.double(), codebook.double()
    rows = max(1, chunk // max(1, codebook.numel()))
    out = [((x64[s:s + rows, None, :] - e64[None]) ** 2).sum(-1).argmin(1) for s in range(0, x.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def code_counts(codes: torch.Tensor, n_codes: int, dtype: torch.dtype) -> torch.Tensor:
    """How often each of ``n_codes`` codes occurs in ``codes`` (int64, any shape), as ``dtype`` (K,):
    the original's ``one_hot.sum(0)``. A scatter-add of ones rather than ``bincount``, whose output
    size depends on the data (a graph break under torch.compile); exact while counts < 2^24 in fp32."""
    flat = codes.reshape(-1)
    return torch.zeros(n_codes, dtype=dtype, device=codes.device).index_add_(
        0, flat, torch.ones(flat.shape, dtype=dtype, device=codes.device))


def codebook_stats_reference(x: torch.Tensor, codes: torch.Tensor, n_codes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts (K,) and sums (K, D) of the rows of ``x`` (N, D) assigned to ``codes`` (N,):
    the original's ``one_hot.sum(0)`` and ``(x.t() @ one_hot).t()`` without the (N, K) one-hot."""
    counts = code_counts(codes, n_codes, x.dtype)
    sums = x.new_zeros(n_codes, x.shape[1]).index_add_(0, codes, x)
    return counts, sums


def codebook_nearest_with_stats_reference(x: torch.Tensor, codebook: torch.Tensor):
    """:func:`codebook_nearest_reference` and the :func:`codebook_stats_reference` of its codes:
    codes int64 (N,), counts (K,) and sums (K, D) in x's dtype."""
    codes = codebook_nearest_reference(x, codebook)
    return (codes, *codebook_stats_reference(x, codes, codebook.shape[0]))


def codebook_stats_reference_onehot(x: torch.Tensor, codes: torch.Tensor,
                                    n_codes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The original's formulas: ``counts = one_hot.sum(0)``, ``sums = (x.t() @ one_hot).t()``."""
    onehot = F.one_hot(codes, n_codes).type_as(x)
    return onehot.sum(dim=0), (x.t() @ onehot).t()


# --------------------------------------------------------------------------------------------
# axial attention
# --------------------------------------------------------------------------------------------
def axial_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """Attention along spatial axis ``dim`` with PyTorch's fused SDPA (scale d^-0.5, no mask)."""
    d = spatial_dim(q, dim)
    qm, km, vm = (torch.movedim(t, d, -2) for t in (q, k, v))
    lead = qm.shape[:-2]
    rows = math.prod(lead)  # not -1: an empty axis would leave it ambiguous
    # SDPA on 4-D (rows, 1, axis, d): faster than on 6-D views (3.5x on CPU) and traceable by
    # torch.compile, which mis-handles the 6-D case (torch 2.13)
    out = F.scaled_dot_product_attention(*(t.reshape(rows, 1, t.shape[-2], t.shape[-1]) for t in (qm, km, vm)))
    return torch.movedim(out.reshape(*lead, *out.shape[-2:]), -2, d)


def axial_attention_reference_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """The original's formulation: move the axis next to the head dim, flatten, explicit softmax
    attention (:func:`attention_reference`), move it back."""
    d = spatial_dim(q, dim)
    qm, km, vm = (torch.movedim(t, d, -2) for t in (q, k, v))
    out = attention_reference(qm.flatten(end_dim=-3), km.flatten(end_dim=-3), vm.flatten(end_dim=-3))
    return torch.movedim(out.view(*vm.shape), -2, d)


# --------------------------------------------------------------------------------------------
# block-sparse attention
# --------------------------------------------------------------------------------------------
def expand_layout(layout: torch.Tensor, n_head: int) -> torch.Tensor:
    """A 0/1 layout (nb, nb), (1, nb, nb) or (heads, nb, nb) as a bool (heads, nb, nb) tensor."""
    if layout.dim() == 2:
        layout = layout.unsqueeze(0)
    return layout.expand(n_head, -1, -1).to(dtype=torch.bool)


def blocksparse_dense_mask(layout: torch.Tensor, block: int, causal: bool) -> torch.Tensor:
    """The (heads, L, L) 0/1 mask that a block layout stands for (True = query may see key)."""
    mask = layout.bool().repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    if causal:
        L = mask.shape[-1]
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return mask


def padded_csr(lay: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded CSR of a bool (..., n, n) block layout: (idx (..., n, W) int64, counts (..., n) int64), W the
    largest row count (at least 1); each row's True columns in ascending order, then padding (column
    indices of False entries, to be masked by ``counts``). One host sync (W). Shared by the block-sparse
    reference and the kernel's layout tables."""
    cnt = lay.sum(-1)
    width = max(int(cnt.max().item()), 1)
    # stable sort of 0 (True) before 1 (False) keeps the True columns in ascending order
    return torch.argsort((~lay).to(torch.int8), dim=-1, stable=True)[..., :width], cnt


def blocksparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    layout: torch.Tensor, block: int, causal: bool = True) -> torch.Tensor:
    """Block-sparse attention in plain PyTorch, with cost proportional to the non-zero blocks.

    For every query block the key/value blocks of its layout row are gathered (rows padded to the
    longest), attended to, and the padding masked out; autograd gives the backward. Queries that
    see no key produce zeros. q, k (B, H, L, d), v (B, H, L, dv), ``layout`` as
    :func:`expand_layout` takes it, L divisible by ``block``.
    """
    B, H, L, D = q.shape
    lay = expand_layout(layout.to(q.device), H)
    nb = L // block
    order, nnz = padded_csr(lay)                          # (H, nb, W) padded with block 0, masked below; (H, nb)
    width = order.shape[-1]
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


def blocksparse_attention_reference_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                          layout: torch.Tensor, block: int, causal: bool = True) -> torch.Tensor:
    """Float64 block-sparse attention: the dense mask of the layout through
    :func:`attention_reference` (rows seeing no key give 0 and zero gradients). Differentiable."""
    lay = expand_layout(layout.to(q.device), q.shape[1])
    mask = blocksparse_dense_mask(lay, block, causal)
    seen = mask.any(-1, keepdim=True)                     # rows that see no key give 0, and
    mask = mask | ~seen                                   # no nan in the forward or gradients
    return attention_reference(q.double(), k.double(), v.double(), mask=mask) * seen


# --------------------------------------------------------------------------------------------
# decode attention: one query per (batch, head) against a KV cache
# --------------------------------------------------------------------------------------------
def decode_layout_row(layout: torch.Tensor, pos: torch.Tensor, block: int, seq_len: int) -> torch.Tensor:
    """Row ``pos // block`` of a (heads, nb, nb) layout, (heads, nb), taken on the device (``pos``
    clamped to [0, seq_len): an out-of-range position gives NaN downstream, never a host sync)."""
    row = torch.div(pos.reshape(1).clamp(0, seq_len - 1), block, rounding_mode="floor")
    return layout.index_select(-2, row).squeeze(-2)


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                               layout: Optional[torch.Tensor] = None, block: int = 0) -> torch.Tensor:
    """Decode attention with PyTorch SDPA (scale d^-0.5) and a boolean key mask: q (B, H, d) over
    caches k (B, H, L, d), v (B, H, L, dv); key j is visible iff ``j <= pos`` and, with a block
    ``layout`` (H or 1, L/block, L/block), its block is on in the layout row of ``pos``. A ``pos``
    outside [0, L) gives NaN (as the kernels: no host sync on pos). Returns (B, H, dv)."""
    L = k.shape[2]
    p = pos.reshape(())
    keys = torch.arange(L, device=q.device)
    visible = keys <= p
    if layout is not None:
        row = decode_layout_row(layout if layout.dim() == 3 else layout.unsqueeze(0), pos, block, L)
        mask = (visible & row.bool()[:, keys // block]).unsqueeze(1)  # (H, 1, L)
    else:
        mask = visible.view(1, L)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask).squeeze(2)
    return out.masked_fill((p < 0) | (p >= L), float("nan"))


def decode_attention_reference_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int,
                                     layout: Optional[torch.Tensor] = None, block: int = 0) -> torch.Tensor:
    """Float64 decode step at Python int ``pos``: the layout row of ``pos`` expanded to keys, keys
    after ``pos`` hidden (the original's ``get_non_block_layout_row``), through
    :func:`attention_reference`. q (B, H, d), k, v (B, H, L, d/dv) -> (B, H, dv) float64."""
    H, L = k.shape[1], k.shape[2]
    visible = torch.arange(L, device=q.device) <= pos
    if layout is not None:
        visible = visible & expand_layout(layout.to(q.device), H)[:, pos // block].repeat_interleave(block, dim=-1)
    mask = visible.expand(H, L)[:, None, :]                            # (H, 1, L)
    return attention_reference(q.double().unsqueeze(2), k.double(), v.double(), mask=mask).squeeze(2)
