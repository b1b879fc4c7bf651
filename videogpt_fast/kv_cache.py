"""The decode side of attention: the static KV cache and the masked attention of queries at
given flattened positions over it (gpt-fast's layout).

:class:`~videogpt_fast.attention.MultiHeadAttention` writes each position's keys/values into a
:class:`KVCache`; one query attends through :func:`videogpt_fast.ops.decode_attention` (the decode
step's hot op: its backends live in ``ops.REGISTRY``), several through :func:`positions_attention`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import view_range

__all__ = ["KVCache", "positions_attention", "decode_at_step"]


class KVCache(nn.Module):
    """Static key/value buffers (batch, heads, L, d) written in place (gpt-fast's KVCache).

    The buffers are not persistent: state dicts do not change. Writes go through ``index_copy_``
    at a position *tensor*, so a step that updates the cache has static shapes and no host sync
    (it can be compiled and captured in a CUDA graph).
    """

    def __init__(self, batch: int, heads: int, seq_len: int, head_dim: int, v_dim: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(batch, heads, seq_len, head_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros(batch, heads, seq_len, v_dim, dtype=dtype, device=device),
                             persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write k (batch, heads, S, d) and v at positions ``input_pos`` (S,) int64; return both caches."""
        self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache


def positions_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
                        visible_blocks: Optional[torch.Tensor] = None, block: int = 1) -> torch.Tensor:
    """Queries (b, h, S, d) at flattened positions ``input_pos`` over caches (b, h, L, d): key j is
    visible iff j <= position (and, with a (h, L/block, L/block) layout, its block is on)."""
    keys = torch.arange(k.shape[2], device=q.device)
    mask = keys.view(1, -1) <= input_pos.view(-1, 1)  # (S, L)
    if visible_blocks is not None:
        rows = visible_blocks[:, torch.div(input_pos, block, rounding_mode="floor")].bool()  # (h, S, L/block)
        mask = mask & rows[:, :, keys // block]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def decode_at_step(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decode_step: int) -> torch.Tensor:
    """The original kernel modules' ``forward(q, k, v, decode_step, decode_idx)``: q (b, heads,
    1, ..., 1, d) at flattened position ``decode_step`` over caches (b, heads, *shape, d)."""
    pos = torch.tensor([decode_step], dtype=torch.long, device=q.device)
    out = module.decode(q.flatten(2, -2), k.flatten(2, -2), v.flatten(2, -2), pos)
    return view_range(out, 2, 3, q.shape[2:-1])
