"""The strided block-sparse layout of the prior's sparse attention (Child et al. 2019, as the
original VideoGPT builds it for DeepSpeed), with the original's class and methods."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

__all__ = ["StridedSparsityConfig", "shape_numel"]


def shape_numel(shape: Sequence[int]) -> int:
    """Number of positions of a grid of ``shape`` (1 for an empty shape)."""
    return int(np.prod(shape)) if len(shape) else 1


class StridedSparsityConfig:
    """Strided sparsity layout of https://arxiv.org/abs/1904.10509 generalised to n dims, identical
    to the original's: ``num_local_blocks`` previous blocks plus, for every axis but the last,
    the blocks that share all other block coordinates."""

    def __init__(self, shape, n_head, causal, block, num_local_blocks):
        self.n_head = n_head
        self.shape = tuple(shape)
        self.causal = causal
        self.block = block
        self.num_local_blocks = num_local_blocks
        if num_local_blocks < 1:
            raise ValueError(f"num_local_blocks must be >= 1, got {num_local_blocks}")
        if self.seq_len % block != 0:
            raise ValueError(f"sparse attention: sequence length {self.seq_len} (latent shape "
                             f"{self.shape}) is not divisible by the block size {block}")
        self._block_shape = self._compute_block_shape()
        self._block_shape_cum = self._block_shape_cum_sizes()

    @property
    def seq_len(self) -> int:
        return shape_numel(self.shape)

    @property
    def num_blocks(self) -> int:
        return self.seq_len // self.block

    def set_local_layout(self, layout: torch.Tensor) -> torch.Tensor:
        nb = self.num_blocks
        for row in range(nb):
            end = min(row + self.num_local_blocks, nb)
            stop = row + 1 if self.causal else end
            layout[:, row, max(0, row - self.num_local_blocks):max(stop, 0)] = 1
        return layout

    def set_global_layout(self, layout: torch.Tensor) -> torch.Tensor:
        n_dim = len(self._block_shape)
        for row in range(self.num_blocks):
            cur = self._to_unflattened_idx(row)
            for d in range(n_dim - 1):  # no strided attention over the last dim
                stop = cur[d] + 1 if self.causal else self._block_shape[d]
                for i in range(stop):
                    idx = list(cur)
                    idx[d] = i
                    layout[:, row, self._to_flattened_idx(idx)] = 1
        return layout

    def make_layout(self) -> torch.Tensor:
        """(n_head, blocks, blocks) int64 0/1 layout."""
        layout = torch.zeros((self.n_head, self.num_blocks, self.num_blocks), dtype=torch.int64)
        return self.set_global_layout(self.set_local_layout(layout))

    def make_sparse_attn_mask(self) -> torch.Tensor:
        """The original's per-nonzero-block mask (1, nnz, block, block): lower triangular on the
        diagonal blocks (causal layouts only)."""
        layout = self.make_layout()
        if self.causal and bool(torch.triu(layout, diagonal=1).any()):
            raise ValueError("causal layout has blocks above the diagonal")
        diag = torch.eye(self.num_blocks, dtype=torch.bool).expand_as(layout)[layout.bool()]
        mask = torch.ones(len(diag), self.block, self.block)
        mask[diag] = torch.ones(self.block, self.block).tril()
        return mask.unsqueeze(0)

    def get_non_block_layout_row(self, block_layout: torch.Tensor, row: int) -> torch.Tensor:
        """(n_head, 1, seq_len) 0/1 mask of the keys that flattened position ``row`` sees."""
        block_row = block_layout[:, [row // self.block]]
        block_row = block_row.repeat_interleave(self.block, dim=-1)
        block_row[:, :, row + 1:] = 0
        return block_row

    # helpers ------------------------------------------------------------------------------
    def _compute_block_shape(self) -> Tuple[int, ...]:
        cum = 1
        i = len(self.shape) - 1
        for i in range(len(self.shape) - 1, -1, -1):
            cum *= self.shape[i]
            if cum > self.block:
                break
        if cum % self.block != 0:
            raise ValueError(f"sparse attention: trailing latent dims {self.shape[i:]} (product {cum}) "
                             f"must be divisible by the block size {self.block}")
        return (*self.shape[:i], cum // self.block)

    def _block_shape_cum_sizes(self) -> Tuple[int, ...]:
        bs = np.flip(np.array(self._block_shape))
        return tuple(int(c) for c in np.flip(np.cumprod(bs)[:-1])) + (1,)

    def _to_flattened_idx(self, idx) -> int:
        return int(sum(i * c for i, c in zip(idx, self._block_shape_cum)))

    def _to_unflattened_idx(self, flat_idx: int) -> Tuple[int, ...]:
        idx = []
        for c in self._block_shape_cum:
            idx.append(flat_idx // c)
            flat_idx %= c
        return tuple(idx)
