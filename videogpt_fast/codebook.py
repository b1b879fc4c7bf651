"""The VQ-VAE's EMA codebook: the original VideoGPT ``videogpt/vqvae.py`` ``Codebook`` without
Lightning (re-exported by :mod:`videogpt_fast.vqvae`; module, buffer and state-dict names are the
original's).

Differences, none of which change results: the nearest code comes from
:func:`videogpt_fast.ops.codebook_nearest` (chunked, or a kernel); EMA statistics use
``index_add_`` instead of a dense (rows x codes) one-hot; random restarts pick ``n_codes`` rows of
the tiled inputs without materialising the tiling; a codebook loaded from a state dict is not
re-initialised on its first training batch.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import ops

__all__ = ["Codebook"]


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized()


# Functional collectives (new tensors, not in-place c10d calls): torch.compile traces them into the
# graph, where an in-place dist.all_reduce / dist.broadcast is a graph break.
def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself without a process group)."""
    if not _dist_active():
        return t
    from torch.distributed import _functional_collectives as funcol
    return funcol.wait_tensor(funcol.all_reduce(t, "sum", dist.group.WORLD))


def _broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (``t`` itself without a process group)."""
    if not _dist_active():
        return t
    from torch.distributed import _functional_collectives as funcol
    return funcol.wait_tensor(funcol.broadcast(t, 0, dist.group.WORLD))


class Codebook(nn.Module):
    """EMA vector-quantisation codebook (decay 0.99) with data-dependent init and dead-code restart.

    Buffers: ``embeddings`` (K, D), ``N`` (K,) EMA counts, ``z_avg`` (K, D) EMA sums. The first
    training-mode batch initialises the codebook from (tiled, noised) inputs unless a state dict
    was loaded into it (see :meth:`_on_load_state_dict`).

    Under an initialised process group (DDP), as in the original, the batch statistics (counts and
    sums) are summed over all ranks before the EMA update and the init / restart rows come from
    rank 0, so every rank keeps the same codebook. The collectives are functional ones, which
    torch.compile keeps inside the graph.
    """

    def __init__(self, n_codes: int, embedding_dim: int):
        super().__init__()
        if n_codes < 1 or embedding_dim < 1:
            raise ValueError(f"Codebook needs n_codes >= 1 and embedding_dim >= 1, got {n_codes}, {embedding_dim}")
        self.register_buffer("embeddings", torch.randn(n_codes, embedding_dim))
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", self.embeddings.data.clone())
        self.n_codes = n_codes
        self.embedding_dim = embedding_dim
        self._need_init = True
        self._register_load_state_dict_pre_hook(self._on_load_state_dict, with_module=True)

    @staticmethod
    def _on_load_state_dict(module: "Codebook", state_dict, prefix, local_metadata, strict,
                            missing_keys, unexpected_keys, error_msgs) -> None:
        """A loaded codebook is initialised unless its EMA counts are all zero (the state of a
        codebook that never saw a training batch). The original always re-initialised."""
        n = state_dict.get(prefix + "N")
        if isinstance(n, torch.Tensor):
            module._need_init = not bool(n.detach().ne(0).any())
        elif prefix + "embeddings" in state_dict:
            module._need_init = False

    def _random_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """``n_codes`` rows drawn without replacement from the original's tiling of ``flat`` (rows
        repeated up to ``n_codes``, plus N(0, (0.01/sqrt(D))^2) noise when there are fewer rows than
        codes), identical on all ranks: the distribution of the original's
        ``_tile(flat)[randperm][:n_codes]`` without building the tiling."""
        d, ew = flat.shape
        total = d if d >= self.n_codes else d * ((self.n_codes + d - 1) // d)
        idx = torch.randperm(total, device=flat.device)[:self.n_codes]
        rows = flat[idx % d]
        if d < self.n_codes:
            rows = rows + torch.randn_like(rows) * (0.01 / math.sqrt(ew))
        return _broadcast_from_rank0(rows)

    @torch.no_grad()
    def _init_embeddings(self, z: torch.Tensor) -> None:
        self._need_init = False
        flat = z.movedim(1, -1).reshape(-1, self.embedding_dim).to(self.embeddings.dtype)
        rows = self._random_rows(flat)
        self.embeddings.copy_(rows)
        self.z_avg.copy_(rows)
        self.N.fill_(1.0)

    @staticmethod
    def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of the code histogram, as the original computes it from the one-hot."""
        avg_probs = counts / counts.sum()
        return torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))

    def forward(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Quantise ``z`` (B, D, T, H, W). Returns ``embeddings`` (straight-through, shaped like
        ``z``), ``encodings`` (B, T, H, W) int64, ``commitment_loss`` and ``perplexity``.
        In training mode also updates the EMA buffers."""
        if z.dim() != 5 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"Codebook expects (B, {self.embedding_dim}, T, H, W), got shape {tuple(z.shape)}")
        # the codebook runs in its own dtype (fp32), also under autocast
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z)

    def _forward(self, z_in: torch.Tensor) -> Dict[str, torch.Tensor]:
        z = z_in.to(self.embeddings.dtype)
        if self._need_init and self.training:
            self._init_embeddings(z)
        flat = z.detach().movedim(1, -1).reshape(-1, self.embedding_dim)
        if self.training:  # the EMA statistics come with the search (one fused kernel on GPU)
            indices, counts, sums = ops.codebook_nearest_with_stats(flat, self.embeddings)
        else:
            indices = ops.codebook_nearest(flat, self.embeddings)
            counts = ops.code_counts(indices, self.n_codes, flat.dtype)
        encoding_indices = indices.view(z.shape[0], *z.shape[2:])

        embeddings = F.embedding(encoding_indices, self.embeddings).movedim(-1, 1)
        commitment_loss = 0.25 * F.mse_loss(z, embeddings.detach())

        with torch.no_grad():
            perplexity = self.perplexity_from_counts(counts)
            if self.training:
                self._ema_update(flat, counts, sums)

        embeddings_st = (embeddings - z).detach() + z
        return dict(embeddings=embeddings_st, encodings=encoding_indices,
                    commitment_loss=commitment_loss, perplexity=perplexity)

    def _ema_update(self, flat: torch.Tensor, n_total: torch.Tensor, encode_sum: torch.Tensor) -> None:
        if _dist_active():  # the statistics of all ranks' batches, in one all-reduce
            packed = _all_reduce_sum(torch.cat([n_total.unsqueeze(1), encode_sum], dim=1))
            n_total, encode_sum = packed[:, 0], packed[:, 1:]
        self.N.mul_(0.99).add_(n_total, alpha=0.01)
        self.z_avg.mul_(0.99).add_(encode_sum, alpha=0.01)

        n = self.N.sum()
        weights = (self.N + 1e-7) / (n + self.n_codes * 1e-7) * n
        normalized = self.z_avg / weights.unsqueeze(1)

        # restart codes whose EMA count fell below 1 from random (tiled, noised) inputs
        rows = self._random_rows(flat)
        usage = (self.N.view(self.n_codes, 1) >= 1).to(normalized.dtype)
        self.embeddings.copy_(normalized * usage + rows * (1 - usage))

    def dictionary_lookup(self, encodings: torch.Tensor) -> torch.Tensor:
        """Embeddings (..., D) of integer codes (...)."""
        return F.embedding(encodings, self.embeddings)
