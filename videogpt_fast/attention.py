"""Attention modules with the original VideoGPT's public classes, names and state-dict keys.

The math runs through :mod:`videogpt_fast.ops` (dense attention through PyTorch's
``scaled_dot_product_attention``; axial and block-sparse attention through the dispatch point), so
no DeepSpeed is needed and no dense ``seq x seq`` mask is kept in memory. The original's causal
``...attn.attn.mask`` buffer is still written to and accepted from state dicts, so checkpoints move
both ways with ``strict=True``.

Decoding follows gpt-fast: :meth:`AttentionStack.forward` takes optional flattened ``input_pos``;
with positions, every self-attention writes its keys/values into a static :class:`KVCache` (set up
by ``VideoGPT.setup_caches``) and attends over it through :func:`videogpt_fast.ops.decode_attention`
(one query) or SDPA with a position mask (several: :func:`videogpt_fast.kv_cache.positions_attention`);
the cache is :class:`videogpt_fast.kv_cache.KVCache`. The block's math exists once, here: the
teacher-forced forward, the original's ``decode_step`` API and the compiled sampler all run it. The
sparse layout (:class:`StridedSparsityConfig`) lives in :mod:`videogpt_fast.sparsity`; ``KVCache``
and ``StridedSparsityConfig`` are re-exported here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ops
from .kernels.reference import attention_reference
from .kv_cache import KVCache, decode_at_step, positions_attention
from .sparsity import StridedSparsityConfig, shape_numel
from .utils import shift_dim, view_range

__all__ = [
    "KVCache", "AttentionStack", "AttentionBlock", "MultiHeadAttention", "FullAttention", "AxialAttention",
    "SparseAttention", "StridedSparsityConfig", "AddBroadcastPosEmbed", "RightShift", "GeLU2",
    "LayerNorm", "scaled_dot_product_attention",
]


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: Optional[torch.Tensor] = None, attn_dropout: float = 0.0,
                                 training: bool = True) -> torch.Tensor:
    """The original helper: attention over the second-to-last dim with a 0/1 ``mask``."""
    return attention_reference(q, k, v, mask=mask, attn_dropout=attn_dropout, training=training)


# ----------------------------------------------------------------------------------------------
# Transformer stack
# ----------------------------------------------------------------------------------------------
class AttentionStack(nn.Module):
    """Right shift, broadcast position embeddings and ``n_layer`` attention blocks."""

    def __init__(self, shape, embd_dim, n_head, n_layer, dropout, attn_type, attn_dropout,
                 class_cond_dim, frame_cond_shape):
        super().__init__()
        self.shape = tuple(shape)
        self.embd_dim = embd_dim
        self.use_frame_cond = frame_cond_shape is not None
        self.right_shift = RightShift(embd_dim)
        self.pos_embd = AddBroadcastPosEmbed(shape=self.shape, embd_dim=embd_dim)
        self.attn_nets = nn.ModuleList([
            AttentionBlock(shape=self.shape, embd_dim=embd_dim, n_head=n_head, n_layer=n_layer,
                           dropout=dropout, attn_type=attn_type, attn_dropout=attn_dropout,
                           class_cond_dim=class_cond_dim, frame_cond_shape=frame_cond_shape)
            for _ in range(n_layer)
        ])

    @property
    def activation_checkpointing(self) -> bool:
        return all(net.activation_checkpointing for net in self.attn_nets)

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool) -> None:
        for net in self.attn_nets:
            net.activation_checkpointing = bool(value)

    def forward(self, x, cond, input_pos=None):
        """Hidden states (b, S, embd_dim) of the flattened positions.

        Args:
            x: (b, S, embd_dim) inputs. Without ``input_pos``: the whole sequence (S = L, the
                flattened latent grid; a (b, *shape, embd_dim) grid is flattened), right-shifted
                here behind the start token (teacher forcing). With ``input_pos``: the input *fed*
                at each position, i.e. the embedding of the code at ``input_pos - 1`` (ignored
                where ``input_pos == 0``: the start token is used), as the original's decoding feeds it.
            cond: dict of conditioning tensors (see :class:`AttentionBlock`).
            input_pos: optional (S,) int64 flattened positions on x's device; the caches must be
                set up (``VideoGPT.setup_caches``).
        """
        x = x.flatten(1, -2)
        x = self.right_shift(x, input_pos)
        x = self.pos_embd(x, input_pos)
        for net in self.attn_nets:
            x = net(x, cond, input_pos)
        return x


class AttentionBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to frame features, MLP."""

    def __init__(self, shape, embd_dim, n_head, n_layer, dropout, attn_type, attn_dropout,
                 class_cond_dim, frame_cond_shape):
        super().__init__()
        self.use_frame_cond = frame_cond_shape is not None
        # The original always checkpoints activations in training; it changes memory, not numbers.
        self.activation_checkpointing = False
        self.pre_attn_norm = LayerNorm(embd_dim, class_cond_dim)
        self.post_attn_dp = nn.Dropout(dropout)
        self.attn = MultiHeadAttention(shape, embd_dim, embd_dim, n_head, n_layer, causal=True,
                                       attn_type=attn_type, attn_kwargs=dict(attn_dropout=attn_dropout))
        if frame_cond_shape is not None:
            self.pre_enc_norm = LayerNorm(embd_dim, class_cond_dim)
            self.post_enc_dp = nn.Dropout(dropout)
            self.enc_attn = MultiHeadAttention(shape, embd_dim, frame_cond_shape[-1], n_head, n_layer,
                                               attn_type="full", attn_kwargs=dict(attn_dropout=0.0),
                                               causal=False)
        self.pre_fc_norm = LayerNorm(embd_dim, class_cond_dim)
        self.post_fc_dp = nn.Dropout(dropout)
        self.fc_block = nn.Sequential(
            nn.Linear(in_features=embd_dim, out_features=embd_dim * 4),
            GeLU2(),
            nn.Linear(in_features=embd_dim * 4, out_features=embd_dim),
        )

    def _run(self, fn, *args):
        if self.training and self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x, cond, input_pos=None):
        """x: (b, S, embd_dim); ``cond``: ``class_cond`` (b, classes) for class-conditional norms and,
        with frame conditioning and no cross-attention cache, ``frame_cond`` features (b, T', H',
        W', 240); ``input_pos`` as in :meth:`AttentionStack.forward`."""
        h = self.pre_attn_norm(x, cond)
        h = self._run(self.attn, h, h, h, input_pos)
        x = x + self.post_attn_dp(h)
        if self.use_frame_cond:
            h = self.pre_enc_norm(x, cond)
            fc = cond.get("frame_cond")
            h = self._run(self.enc_attn, h, fc, fc, input_pos)
            x = x + self.post_enc_dp(h)
        h = self.pre_fc_norm(x, cond)
        h = self._run(self.fc_block, h)
        return x + self.post_fc_dp(h)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over a (b, d1, ..., dn, c) grid with the original's projections
    (``w_qs``, ``w_ks``, ``w_vs``, ``fc``), initialisation and KV-cache decoding."""

    def __init__(self, shape, dim_q, dim_kv, n_head, n_layer, causal, attn_type, attn_kwargs):
        super().__init__()
        if dim_q % n_head != 0 or dim_kv % n_head != 0:
            raise ValueError(f"MultiHeadAttention: dims ({dim_q}, {dim_kv}) must be divisible by n_head={n_head}")
        self.causal = causal
        self.shape = tuple(shape)
        self.d_k = dim_q // n_head
        self.d_v = dim_kv // n_head
        self.n_head = n_head

        self.w_qs = nn.Linear(dim_q, n_head * self.d_k, bias=False)
        self.w_qs.weight.data.normal_(std=1.0 / np.sqrt(dim_q))
        self.w_ks = nn.Linear(dim_kv, n_head * self.d_k, bias=False)
        self.w_ks.weight.data.normal_(std=1.0 / np.sqrt(dim_kv))
        self.w_vs = nn.Linear(dim_kv, n_head * self.d_v, bias=False)
        self.w_vs.weight.data.normal_(std=1.0 / np.sqrt(dim_kv))
        self.fc = nn.Linear(n_head * self.d_v, dim_q, bias=True)
        self.fc.weight.data.normal_(std=1.0 / np.sqrt(dim_q * n_layer))

        if attn_type == "full":
            self.attn = FullAttention(self.shape, causal, **attn_kwargs)
        elif attn_type == "axial":
            if causal:
                raise ValueError("causal axial attention is not supported")
            self.attn = AxialAttention(len(self.shape), **attn_kwargs)
        elif attn_type == "sparse":
            self.attn = SparseAttention(self.shape, n_head, causal, **attn_kwargs)
        else:
            raise ValueError(f"attn_type must be 'full', 'axial' or 'sparse', got {attn_type!r}")
        self.kv_cache: Optional[KVCache] = None  # set by setup_cache (decoding only)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, d: int) -> torch.Tensor:
        """(b, *grid, n_head * d) -> (b, n_head, *grid, d)."""
        return shift_dim(view_range(proj(x), -1, None, (self.n_head, d)), -2, 1)

    @torch.no_grad()
    def setup_cache(self, batch: int, kv: Optional[torch.Tensor] = None) -> None:
        """Allocate the decoding cache in the projections' dtype and device.

        Causal self-attention: zeroed (batch, n_head, L, d) keys/values that decoding fills
        position by position. Cross-attention (``causal=False``): the keys/values of ``kv``
        (batch, *cond_shape, dim_kv), the conditioning, projected once.
        """
        w = self.w_ks.weight
        if self.causal:
            self.kv_cache = KVCache(batch, self.n_head, shape_numel(self.shape), self.d_k, self.d_v, w.dtype, w.device)
            self.attn.decode_backend = ops.decode_attention_backend(w.device)
            return
        if kv is None or kv.shape[0] != batch:
            raise ValueError(f"MultiHeadAttention.setup_cache: cross-attention needs the conditioning kv "
                             f"(batch={batch}, ..., {self.w_ks.in_features}), got "
                             f"{None if kv is None else tuple(kv.shape)}")
        kv = kv.to(w.dtype)
        k = self._heads(kv, self.w_ks, self.d_k).flatten(2, -2)
        v = self._heads(kv, self.w_vs, self.d_v).flatten(2, -2)
        self.kv_cache = KVCache(batch, self.n_head, k.shape[2], self.d_k, self.d_v, w.dtype, w.device)
        self.kv_cache.update(torch.arange(k.shape[2], device=w.device), k, v)

    def forward(self, q, k, v, input_pos=None):
        """q, k, v: (b, *grid, c) (the GPT passes flattened (b, S, c)); returns (b, *grid, dim_q).

        ``input_pos`` (S,) int64, with a cache set up (:meth:`setup_cache`): q holds the tokens
        at those flattened positions. Causal self-attention writes their keys/values into the
        cache and attends over it (keys <= position, and the layout for sparse attention);
        cross-attention attends to the cached conditioning (``k``, ``v`` are then not read).
        """
        n_head, d_k, d_v = self.n_head, self.d_k, self.d_v
        qh = self._heads(q, self.w_qs, d_k)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("MultiHeadAttention: decoding at input_pos needs setup_cache() first "
                                   "(VideoGPT.setup_caches)")
            qh = qh.flatten(2, -2)
            if self.causal:
                kc, vc = self.kv_cache.update(input_pos, self._heads(k, self.w_ks, d_k).flatten(2, -2),
                                              self._heads(v, self.w_vs, d_v).flatten(2, -2))
                a = self.attn.decode(qh, kc, vc, input_pos)
            else:
                a = F.scaled_dot_product_attention(qh, self.kv_cache.k_cache, self.kv_cache.v_cache)
            a = a.view(*a.shape[:2], *q.shape[1:-1], a.shape[-1])
        else:
            a = self.attn(qh, self._heads(k, self.w_ks, d_k), self._heads(v, self.w_vs, d_v))
        a = shift_dim(a, 1, -2).flatten(start_dim=-2)  # (b, *d, n_head * d)
        return self.fc(a)


# ----------------------------------------------------------------------------------------------
# Attention kernels (modules without parameters)
# ----------------------------------------------------------------------------------------------
class FullAttention(nn.Module):
    """Dense attention over all positions, causal or not, through PyTorch SDPA.

    The original keeps a ``mask`` buffer (seq x seq lower triangle); it is produced on the fly in
    :meth:`state_dict` and dropped on load instead of being held in memory.
    """

    def __init__(self, shape, causal, attn_dropout):
        super().__init__()
        self.shape = tuple(shape)
        self.causal = causal
        self.attn_dropout = attn_dropout
        self.seq_len = shape_numel(self.shape)
        self.decode_backend: Optional[str] = None  # resolved by VideoGPT.setup_caches
        if causal:
            self._register_state_dict_hook(FullAttention._add_mask)
            self._register_load_state_dict_pre_hook(FullAttention._drop_mask, with_module=True)

    @staticmethod
    def _add_mask(module, state_dict, prefix, local_metadata):
        n = module.seq_len
        state_dict[prefix + "mask"] = torch.ones(n, n).tril()
        return state_dict

    @staticmethod
    def _drop_mask(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        mask = state_dict.pop(prefix + "mask", None)
        if mask is not None and tuple(mask.shape) != (module.seq_len, module.seq_len):
            error_msgs.append(f"{prefix}mask has shape {tuple(mask.shape)}, expected "
                              f"({module.seq_len}, {module.seq_len}) for latent shape {module.shape}")

    def forward(self, q, k, v, decode_step=None, decode_idx=None):
        """q, k, v: (b, heads, *grid, d) -> (b, heads, *q_grid, d). ``decode_step`` (the
        original's signature): causal attention of q's one position over whole caches k, v."""
        if decode_step is not None and self.causal:
            return decode_at_step(self, q, k, v, decode_step)
        old_shape = q.shape[2:-1]
        q = q.flatten(start_dim=2, end_dim=-2)
        k = k.flatten(start_dim=2, end_dim=-2)
        v = v.flatten(start_dim=2, end_dim=-2)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        return view_range(out, 2, 3, old_shape)

    def decode(self, q, k, v, input_pos):
        """Queries (b, heads, S, d) at flattened positions ``input_pos`` (S,) over the caches
        (b, heads, L, d), keys up to each position: one query through
        :func:`videogpt_fast.ops.decode_attention`, several through SDPA with a position mask."""
        if q.shape[2] == 1:
            return ops.decode_attention(q[:, :, 0], k, v, input_pos, backend=self.decode_backend).unsqueeze(2)
        return positions_attention(q, k, v, input_pos)


class AxialAttention(nn.Module):
    """Attention along one axis of a (b, n_head, d1, ..., dn, d) tensor (``axial_dim`` counts
    from the spatial dims as in the original: -2 is the last spatial axis)."""

    def __init__(self, n_dim, axial_dim):
        super().__init__()
        self.axial_dim = 2 + n_dim + 1 + axial_dim if axial_dim < 0 else axial_dim + 2

    def forward(self, q, k, v, decode_step=None, decode_idx=None):
        """(b, heads, *spatial, d) tensors; ``decode_step``/``decode_idx`` are accepted and unused,
        as in the original."""
        return ops.axial_attention(q, k, v, self.axial_dim)


class SparseAttention(nn.Module):
    """Strided block-sparse self-attention (Child et al. 2019) without DeepSpeed.

    Training/teacher-forced forward runs :func:`videogpt_fast.ops.blocksparse_attention`;
    decoding attends from one position to its layout row, as the original does.
    """

    def __init__(self, shape, n_head, causal, num_local_blocks=4, block=32, attn_dropout=0.0):
        super().__init__()
        self.causal = causal
        self.shape = tuple(shape)
        self.sparsity_config = StridedSparsityConfig(shape=self.shape, n_head=n_head, causal=causal,
                                                     block=block, num_local_blocks=num_local_blocks)
        # (n_head, blocks, blocks) bool; not part of the original state dict. One tensor for the
        # module's life: the Triton kernels cache their tables by the layout tensor's identity
        self.register_buffer("block_layout", self.sparsity_config.make_layout().bool(), persistent=False)
        self.decode_backend: Optional[str] = None  # resolved by VideoGPT.setup_caches

    def forward(self, q, k, v, decode_step=None, decode_idx=None):
        """Block-sparse self-attention of (b, heads, *grid, d) tensors; with ``decode_step`` (the
        original's signature) q's one position over whole caches k, v."""
        if decode_step is not None:
            return decode_at_step(self, q, k, v, decode_step)
        old_shape = q.shape[2:-1]
        q = q.flatten(start_dim=2, end_dim=-2)
        k = k.flatten(start_dim=2, end_dim=-2)
        v = v.flatten(start_dim=2, end_dim=-2)
        if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
            raise ValueError("SparseAttention only supports self-attention (q, k, v of one length)")
        out = ops.blocksparse_attention(q, k, v, self.block_layout, self.sparsity_config.block,
                                        causal=self.causal)
        return view_range(out, 2, 3, old_shape)

    def decode(self, q, k, v, input_pos):
        """As :meth:`FullAttention.decode`, each query seeing the keys of its layout row (the
        original's ``get_non_block_layout_row``): the whole layout goes to the op, which takes
        the row of the position on the device."""
        block = self.sparsity_config.block
        if q.shape[2] == 1:
            return ops.decode_attention(q[:, :, 0], k, v, input_pos, block=block, layout=self.block_layout,
                                        backend=self.decode_backend).unsqueeze(2)
        return positions_attention(q, k, v, input_pos, self.block_layout, block)


# ----------------------------------------------------------------------------------------------
# Embeddings and small layers
# ----------------------------------------------------------------------------------------------
class AddBroadcastPosEmbed(nn.Module):
    """Sum of one learned embedding per axis, each ``embd_dim // n_dim`` wide, concatenated."""

    def __init__(self, shape, embd_dim, dim=-1):
        super().__init__()
        if dim not in (-1, 1):
            raise ValueError(f"AddBroadcastPosEmbed: dim must be -1 or 1, got {dim}")
        self.shape = tuple(shape)
        self.n_dim = n_dim = len(self.shape)
        self.embd_dim = embd_dim
        self.dim = dim
        if embd_dim % n_dim != 0:
            raise ValueError(f"embedding dim {embd_dim} must be divisible by the number of latent dims {n_dim}")
        self.emb = nn.ParameterDict({
            f"d_{i}": nn.Parameter(torch.randn(self.shape[i], embd_dim // n_dim) * 0.01 if dim == -1
                                   else torch.randn(embd_dim // n_dim, self.shape[i]) * 0.01)
            for i in range(n_dim)
        })

    def embeddings(self) -> torch.Tensor:
        """The full (1, *shape, embd_dim) (or channels-first) embedding grid."""
        embs = []
        for i in range(self.n_dim):
            e = self.emb[f"d_{i}"]
            ones_before, ones_after = (1,) * i, (1,) * (self.n_dim - i - 1)
            if self.dim == -1:
                e = e.view(1, *ones_before, self.shape[i], *ones_after, -1).expand(1, *self.shape, -1)
            else:
                e = e.view(1, -1, *ones_before, self.shape[i], *ones_after).expand(1, -1, *self.shape)
            embs.append(e)
        return torch.cat(embs, dim=self.dim)

    def forward(self, x, input_pos=None):
        """Add the embeddings to x (1, *shape, embd_dim)-broadcastable, or flattened (b, L,
        embd_dim); with ``input_pos`` (S,) int64, x is (b, S, embd_dim) at those flattened positions."""
        if input_pos is not None:  # the rows of the flattened grid at input_pos, gathered per axis
            if self.dim != -1:
                raise ValueError("AddBroadcastPosEmbed: input_pos needs channels-last embeddings (dim=-1)")
            rows, stride = [], 1
            for i in reversed(range(self.n_dim)):
                coord = torch.div(input_pos, stride, rounding_mode="floor") % self.shape[i]
                rows.append(self.emb[f"d_{i}"].index_select(0, coord))
                stride *= self.shape[i]
            return x + torch.cat(rows[::-1], dim=-1)
        embs = self.embeddings()
        if self.dim == -1:
            embs = embs.reshape(1, *x.shape[1:])
        return x + embs


class RightShift(nn.Module):
    """Shift the flattened sequence right by one, inserting a learned start token."""

    def __init__(self, embd_dim):
        super().__init__()
        self.embd_dim = embd_dim
        self.sos = nn.Parameter(torch.FloatTensor(embd_dim).normal_(std=0.02), requires_grad=True)

    def forward(self, x, input_pos=None):
        """x: (b, ..., embd_dim). Without ``input_pos``: the whole sequence, shifted by one behind
        the start token. With ``input_pos`` (S,): x is (b, S, embd_dim), already the inputs fed at
        those positions; the start token replaces the input at position 0 (no host sync)."""
        sos = self.sos.to(x.dtype)
        if input_pos is not None:
            return torch.where((input_pos == 0).view(1, -1, 1), sos.view(1, 1, -1), x)
        x_shape = list(x.shape)
        x = x.flatten(start_dim=1, end_dim=-2)
        sos = sos.view(1, 1, -1).expand(x_shape[0], 1, -1)
        return torch.cat([sos, x[:, :-1, :]], dim=1).view(*x_shape)


class GeLU2(nn.Module):
    """x * sigmoid(1.702 x)."""

    def forward(self, x):
        return (1.702 * x).sigmoid() * x


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 (eps inside the rsqrt as the original: ``1e-5 + rsqrt(var)``),
    class-conditional gain and bias when ``class_cond_dim`` is set."""

    def __init__(self, embd_dim, class_cond_dim):
        super().__init__()
        self.conditional = class_cond_dim is not None
        if self.conditional:
            self.w = nn.Linear(class_cond_dim, embd_dim, bias=False)
            nn.init.constant_(self.w.weight.data, 1.0 / np.sqrt(class_cond_dim))
            self.wb = nn.Linear(class_cond_dim, embd_dim, bias=False)
        else:
            self.g = nn.Parameter(torch.ones(embd_dim, dtype=torch.float32), requires_grad=True)
            self.b = nn.Parameter(torch.zeros(embd_dim, dtype=torch.float32), requires_grad=True)

    def forward(self, x, cond):
        if self.conditional:
            bshape = (x.shape[0], *(1,) * (x.dim() - 2), x.shape[-1])
            g = 1 + self.w(cond["class_cond"]).view(bshape)
            b = self.wb(cond["class_cond"]).view(bshape)
        else:
            g, b = self.g, self.b
        x_float = x.float()
        mu = x_float.mean(dim=-1, keepdim=True)
        s = (x_float - mu).square().mean(dim=-1, keepdim=True)
        x_float = (x_float - mu) * (1e-5 + s.rsqrt())
        return (x_float * g + b).type_as(x)
