"""Fast autoregressive sampling for :class:`videogpt_fast.gpt.VideoGPT` (gpt-fast style).

The original samples position by position through ``VideoGPT.forward(..., decode_step=i)``: every
step re-embeds the whole code grid, rebuilds the position-embedding grid, allocates its caches at
step 0 and attends over a dense mask. Here the work of one step is reduced to what it needs:

* :class:`DecodePlan` gathers the weights once: a (n_codes, hidden) table ``fc_in(codebook)``, the
  start token, a flattened (L, hidden) position-embedding table, fused q/k/v projections, the
  class-conditional LayerNorm gains and biases (fixed for a batch), and, for frame-conditional
  models, the cross-attention keys and values of every layer (the ResNet runs once).
* :class:`StaticKVCache` preallocates the (n, heads, L, d) key/value buffers of every layer once;
  a step writes its key/value in place at a *tensor* position, so the step is CUDA-graph capturable.
* :func:`decode_step` runs one position: embed the previous code, add the position row, the
  blocks (one-query attention over the cache through :func:`decode_attention`; sparse models pass
  the block-sparse layout row of the position, never a dense L x L mask), final norm, logits.
* :func:`sample_codes` captures :func:`decode_step` in a CUDA graph on CUDA and replays it once per
  position; on CPU (no graphs) it runs the same step eagerly. Which mode ran is logged at INFO.

:func:`decode_attention` routes through :func:`videogpt_fast.backends.resolve`: ``cuda`` runs
``torch.ops.videogpt_fast.decode_attention`` (split-K flash-decoding in ``csrc/``), ``triton`` the
block-sparse decode kernel of ``kernels/blocksparse_attention.py`` (the whole layout on device; an
all-ones layout for dense priors), ``torch`` PyTorch SDPA with a boolean key mask.

:func:`sample_codes_reference` is the original algorithm (the per-position loop through the
module's KV-cache ``forward``), kept for tests and benchmarks.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .backends import resolve
from .ops import _IMPLEMENTED, decode_attention, decode_attention_torch

__all__ = [
    "decode_attention", "decode_attention_torch", "StaticKVCache", "DecodePlan", "decode_step",
    "sample_logits", "teacher_forced_decode", "sample_codes", "sample", "sample_codes_reference",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# static cache and decode plan
# --------------------------------------------------------------------------------------------
class StaticKVCache:
    """Preallocated self-attention key/value buffers (n, heads, L, d) for every layer, plus the
    cross-attention keys/values of frame-conditional models (computed once per batch)."""

    def __init__(self, n_layers: int, batch: int, heads: int, seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, heads, seq_len, head_dim)
        self.k: List[torch.Tensor] = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v: List[torch.Tensor] = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.cross_k: List[torch.Tensor] = []
        self.cross_v: List[torch.Tensor] = []

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write (B, H, d) key/value of position ``pos`` (one-element int64 tensor) in place."""
        self.k[layer].index_copy_(2, pos.reshape(1), k.unsqueeze(2))
        self.v[layer].index_copy_(2, pos.reshape(1), v.unsqueeze(2))

    def data_ptrs(self) -> List[int]:
        """Addresses of every buffer (they never change while sampling)."""
        return [t.data_ptr() for t in (*self.k, *self.v, *self.cross_k, *self.cross_v)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, *self.cross_k, *self.cross_v))


@dataclass
class _Layer:
    norm_attn: Tuple[torch.Tensor, torch.Tensor]
    w_qkv: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    norm_fc: Tuple[torch.Tensor, torch.Tensor]
    mlp: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    norm_enc: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    enc_wq: Optional[torch.Tensor] = None
    enc_fc_w: Optional[torch.Tensor] = None
    enc_fc_b: Optional[torch.Tensor] = None


@dataclass
class DecodePlan:
    """Everything one decode step reads, gathered from a VideoGPT once per batch (see module doc).

    ``prev`` (n,) int64 and ``pos`` () int64 are the static inputs of :func:`decode_step`.
    """
    n: int
    shape: Tuple[int, ...]
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    code_table: torch.Tensor          # (n_codes, hidden): fc_in(codebook embeddings)
    sos: torch.Tensor                 # (hidden,)
    pos_table: torch.Tensor           # (L, hidden)
    layers: List[_Layer]
    norm_out: Tuple[torch.Tensor, torch.Tensor]
    fc_out: torch.Tensor
    cache: StaticKVCache
    layout: Optional[torch.Tensor] = None   # (heads, nb, nb) bool for sparse models
    block: int = 0
    prev: torch.Tensor = field(default=None)  # type: ignore[assignment]
    pos: torch.Tensor = field(default=None)   # type: ignore[assignment]

    @property
    def seq_len(self) -> int:
        return self.pos_table.shape[0]

    def weight_bytes(self) -> int:
        """Bytes of the weights one step reads (projections, MLPs, output layer)."""
        ts = [self.fc_out]
        for lay in self.layers:
            ts += [lay.w_qkv, lay.fc_w, lay.fc_b, *lay.mlp]
            if lay.enc_wq is not None:
                ts += [lay.enc_wq, lay.enc_fc_w, lay.enc_fc_b]
        return sum(t.numel() * t.element_size() for t in ts)

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, n: int, cond: Optional[Mapping[str, torch.Tensor]] = None,
                   dtype: Optional[torch.dtype] = None) -> "DecodePlan":
        """Gather the decode weights of ``model`` for a batch of ``n`` with conditioning ``cond``
        (``class_cond`` (n, classes) one-hot, ``frame_cond`` (n, C, n_cond_frames, H, W) frames, as
        :meth:`VideoGPT.make_cond` builds it). ``dtype`` casts weights, activations and the cache
        (default: the model's parameter dtype); LayerNorms always compute in fp32."""
        cond = dict(cond or {})
        stack = model.attn_stack
        device = model.fc_in.weight.device
        dtype = dtype or model.fc_in.weight.dtype
        if n < 1:
            raise ValueError(f"sample: n must be >= 1, got {n}")
        shape = tuple(int(s) for s in model.shape)
        L = math.prod(shape)
        class_cond = cond.get("class_cond")
        if model.args.class_cond:
            if class_cond is None or class_cond.shape != (n, model.args.class_cond_dim):
                raise ValueError(f"sample: a class-conditional model needs cond['class_cond'] of shape "
                                 f"({n}, {model.args.class_cond_dim}), got "
                                 f"{None if class_cond is None else tuple(class_cond.shape)}")
            class_cond = class_cond.to(device=device, dtype=torch.float32)

        def norm_params(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
            if norm.conditional:
                return (1 + F.linear(class_cond, norm.w.weight.float()), F.linear(class_cond, norm.wb.weight.float()))
            return norm.g.detach().float(), norm.b.detach().float()

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        codebook = model.vqvae.codebook.embeddings
        code_table = cast(F.linear(codebook.to(model.fc_in.weight.dtype), model.fc_in.weight))
        pos_table = cast(stack.pos_embd.embeddings().reshape(L, -1))

        first = stack.attn_nets[0].attn
        heads, head_dim = first.n_head, first.d_k
        cache = StaticKVCache(len(stack.attn_nets), n, heads, L, head_dim, dtype, device)

        frame = None
        if model.use_frame_cond:
            if cond.get("frame_cond") is None or cond["frame_cond"].shape[0] != n:
                raise ValueError(f"sample: a frame-conditional model needs cond['frame_cond'] with batch {n}")
            frame = model.cond_pos_embd(model.resnet(cond["frame_cond"].to(device)))  # (n, T', H', W', 240)

        layers: List[_Layer] = []
        for net in stack.attn_nets:
            attn = net.attn
            lay = _Layer(
                norm_attn=norm_params(net.pre_attn_norm),
                w_qkv=cast(torch.cat([attn.w_qs.weight, attn.w_ks.weight, attn.w_vs.weight], dim=0)),
                fc_w=cast(attn.fc.weight), fc_b=cast(attn.fc.bias),
                norm_fc=norm_params(net.pre_fc_norm),
                mlp=(cast(net.fc_block[0].weight), cast(net.fc_block[0].bias),
                     cast(net.fc_block[2].weight), cast(net.fc_block[2].bias)),
            )
            if frame is not None:
                enc = net.enc_attn
                lay.norm_enc = norm_params(net.pre_enc_norm)
                lay.enc_wq = cast(enc.w_qs.weight)
                lay.enc_fc_w, lay.enc_fc_b = cast(enc.fc.weight), cast(enc.fc.bias)
                fk = enc.w_ks(frame).flatten(1, -2).view(n, -1, enc.n_head, enc.d_k).transpose(1, 2)
                fv = enc.w_vs(frame).flatten(1, -2).view(n, -1, enc.n_head, enc.d_v).transpose(1, 2)
                cache.cross_k.append(fk.to(dtype).contiguous())
                cache.cross_v.append(fv.to(dtype).contiguous())
            layers.append(lay)

        layout, block = None, 0
        if model.args.attn_type == "sparse":
            sp = first.attn
            layout = sp.block_layout.to(device=device, dtype=torch.bool)
            block = sp.sparsity_config.block

        plan = cls(n=n, shape=shape, heads=heads, head_dim=head_dim, dtype=dtype, device=device,
                   code_table=code_table, sos=cast(stack.right_shift.sos), pos_table=pos_table,
                   layers=layers, norm_out=norm_params(model.norm), fc_out=cast(model.fc_out.weight),
                   cache=cache, layout=layout, block=block)
        plan.prev = torch.zeros(n, dtype=torch.long, device=device)
        plan.pos = torch.zeros((), dtype=torch.long, device=device)
        return plan


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` on CUDA; ``mm``/``addmm`` on CPU, where a 2-D ``F.linear`` of decode-sized
    operands can be 100x slower (oneDNN thread hand-offs)."""
    if x.device.type == "cuda":
        return F.linear(x, w, b)
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


def _layer_norm(x: torch.Tensor, gb: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The original LayerNorm (fp32, ``(x - mu) * (1e-5 + rsqrt(var))``) with precomputed gain/bias."""
    xf = x.float()
    mu = xf.mean(dim=-1, keepdim=True)
    s = (xf - mu).square().mean(dim=-1, keepdim=True)
    xf = (xf - mu) * (1e-5 + s.rsqrt())
    return (xf * gb[0] + gb[1]).to(x.dtype)


def decode_step(plan: DecodePlan, prev: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits (n, n_codes) for flattened position ``pos`` given the code at ``pos - 1``.

    Writes this position's keys/values into ``plan.cache`` in place. ``prev`` (n,) int64 is ignored
    at ``pos == 0`` (the start token is used, as ``RightShift`` does); ``pos`` is a 0-d int64 tensor.
    No host synchronisation, no shape depending on ``pos``: the step is CUDA-graph capturable.
    """
    n, H, d = plan.n, plan.heads, plan.head_dim
    cache = plan.cache
    pos1 = pos.reshape(1)
    x = plan.code_table.index_select(0, prev)
    x = torch.where(pos1 == 0, plan.sos.unsqueeze(0), x)
    x = x + plan.pos_table.index_select(0, pos1)
    for i, lay in enumerate(plan.layers):
        h = _layer_norm(x, lay.norm_attn)
        q, k, v = _linear(h, lay.w_qkv).view(n, 3, H, d).unbind(1)
        cache.update(i, pos, k, v)
        a = decode_attention(q, cache.k[i], cache.v[i], pos, block=plan.block, layout=plan.layout)
        x = x + _linear(a.reshape(n, H * d), lay.fc_w, lay.fc_b)
        if lay.enc_wq is not None:
            h = _layer_norm(x, lay.norm_enc)
            q = _linear(h, lay.enc_wq).view(n, H, 1, -1)
            a = F.scaled_dot_product_attention(q, cache.cross_k[i], cache.cross_v[i])
            x = x + _linear(a.reshape(n, -1), lay.enc_fc_w, lay.enc_fc_b)
        h = _layer_norm(x, lay.norm_fc)
        w1, b1, w2, b2 = lay.mlp
        h = _linear(h, w1, b1)
        h = (1.702 * h).sigmoid() * h
        x = x + _linear(h, w2, b2)
    return _linear(_layer_norm(x, plan.norm_out), plan.fc_out)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def _check_sampling_args(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if not temperature > 0:
        raise ValueError(f"sample: temperature must be > 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"sample: top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p must be in (0, 1], got {top_p}")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one code per row of (n, n_codes) ``logits``.

    With the defaults this is the original's ``multinomial(softmax(logits), 1)``; ``top_k=1`` is the
    argmax (greedy, no random numbers drawn); ``top_k`` keeps the k largest logits, ``top_p`` the
    smallest set of most likely codes whose probability reaches ``top_p`` (at least one).
    """
    _check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()
    if top_k == 1:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely codes
        drop = (before >= top_p).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cond_from_batch(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    if not (model.use_frame_cond or model.args.class_cond):
        return {}
    if batch is None:
        raise ValueError("sample: a conditional model needs a batch with 'video' (and 'label' when class_cond)")
    if batch["video"].shape[0] != n:
        raise ValueError(f"sample: batch['video'] holds {batch['video'].shape[0]} videos but n={n}")
    device = model.fc_in.weight.device
    return {k: v.to(device) for k, v in model.make_cond(batch).items()}


def _capture_graph(step: Callable[[], torch.Tensor]) -> Tuple["torch.cuda.CUDAGraph", torch.Tensor]:
    """Warm ``step`` up on a side stream, then capture it in a CUDA graph; returns (graph, output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


class _Stepper:
    """Runs :func:`decode_step` on ``plan.prev``/``plan.pos``: graph replay on CUDA, else eager."""

    def __init__(self, plan: DecodePlan, cuda_graph: Optional[bool]):
        on_cuda = plan.device.type == "cuda"
        if cuda_graph is None:
            cuda_graph = on_cuda
        if cuda_graph and not on_cuda:
            raise ValueError(f"sample: cuda_graph=True needs the model on a CUDA device, it is on {plan.device}")
        self.plan = plan
        self.graph = None
        if cuda_graph:
            self.graph, self.out = _capture_graph(lambda: decode_step(plan, plan.prev, plan.pos))
        self.mode = "cuda-graph" if cuda_graph else "eager"

    def __call__(self, pos: int, prev: Optional[torch.Tensor]) -> torch.Tensor:
        self.plan.pos.fill_(pos)
        if prev is not None:
            self.plan.prev.copy_(prev)
        if self.graph is not None:
            self.graph.replay()
            return self.out
        return decode_step(self.plan, self.plan.prev, self.plan.pos)


@torch.no_grad()
def sample_codes(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, progress: bool = True,
                 dtype: Optional[torch.dtype] = None, cuda_graph: Optional[bool] = None,
                 plan_hook: Optional[Callable[[DecodePlan], None]] = None) -> torch.Tensor:
    """Sample ``n`` code grids (n, *latent_shape) int64 from a VideoGPT prior.

    Args:
        model: a :class:`videogpt_fast.gpt.VideoGPT` (dropout is not applied while decoding).
        n: number of samples.
        batch: ``video`` (n, C, T, H, W) (and ``label`` (n,)) for frame-/class-conditional models,
            as the original's ``sample(n, batch)``.
        temperature, top_k, top_p: see :func:`sample_logits`; the defaults reproduce the original.
        generator: a ``torch.Generator`` on the model's device for reproducible draws (default: the
            global RNG, as the original).
        progress: show a tqdm bar over positions.
        dtype: compute dtype (e.g. ``torch.bfloat16`` on GPU); default the model's parameter dtype.
        cuda_graph: capture the step in a CUDA graph (default: on CUDA devices; CPU has no graphs).
        plan_hook: called with the :class:`DecodePlan` after every step (tests, introspection).
    """
    _check_sampling_args(temperature, top_k, top_p)
    cond = _cond_from_batch(model, n, batch)
    plan = DecodePlan.from_model(model, n, cond, dtype)
    stepper = _Stepper(plan, cuda_graph)
    log.info("videogpt_fast.sample: decoding %d positions x batch %d in %s mode (%s, attention backend %s)",
             plan.seq_len, n, stepper.mode, plan.dtype,
             resolve("decode_attention", plan.device, _IMPLEMENTED["decode_attention"]))
    L = plan.seq_len
    samples = torch.zeros((n, L), dtype=torch.long, device=plan.device)
    code = None
    for i in tqdm(range(L), disable=not progress, desc="sampling", unit="pos"):
        logits = stepper(i, code)
        code = sample_logits(logits, temperature, top_k, top_p, generator)
        samples[:, i] = code
        if plan_hook is not None:
            plan_hook(plan)
    return samples.view(n, *plan.shape)


@torch.no_grad()
def sample(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None, **kwargs) -> torch.Tensor:
    """:func:`sample_codes` then the VQ-VAE decoder: videos (n, C, T, H, W) in [0, 1]."""
    codes = sample_codes(model, n, batch, **kwargs)
    videos = model.vqvae.decode(codes)
    return torch.clamp(videos, -0.5, 0.5) + 0.5


@torch.no_grad()
def teacher_forced_decode(model: nn.Module, codes: torch.Tensor, batch: Optional[Mapping[str, torch.Tensor]] = None,
                          dtype: Optional[torch.dtype] = None, cuda_graph: Optional[bool] = None) -> torch.Tensor:
    """Logits (n, L, n_codes) of :func:`decode_step` fed ``codes`` (n, *latent_shape) one position
    at a time: what the original's KV-cache decoding gives for the same codes."""
    n = codes.shape[0]
    cond = _cond_from_batch(model, n, batch)
    plan = DecodePlan.from_model(model, n, cond, dtype)
    if tuple(codes.shape[1:]) != plan.shape:
        raise ValueError(f"teacher_forced_decode: codes must be (n, *{plan.shape}), got {tuple(codes.shape)}")
    flat = codes.reshape(n, -1).to(plan.device)
    stepper = _Stepper(plan, cuda_graph)
    out = []
    for i in range(plan.seq_len):
        out.append(stepper(i, flat[:, i - 1] if i > 0 else None).float().clone())
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------------------------
# the original algorithm, for tests and benchmarks
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_codes_reference(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None,
                           generator: Optional[torch.Generator] = None, progress: bool = False,
                           max_positions: Optional[int] = None) -> torch.Tensor:
    """The original ``VideoGPT.sample`` loop (codes only): per position, look up the embeddings of
    the whole grid, run ``model(..., decode_step=i, decode_idx=idx)`` and draw from
    ``multinomial(softmax(logits))``. Same random-number consumption as :func:`sample_codes` with
    the default arguments. ``max_positions`` stops after that many positions (benchmarks: the
    original's cost per position does not depend on the position)."""
    device = model.fc_in.weight.device
    cond = _cond_from_batch(model, n, batch)
    shape = tuple(model.shape)
    samples = torch.zeros((n, *shape), dtype=torch.long, device=device)
    idxs = list(itertools.product(*[range(s) for s in shape]))[:max_positions]
    prev = None
    try:
        for i, idx in enumerate(tqdm(idxs, disable=not progress)):
            cur = (slice(None), *[slice(j, j + 1) for j in idx])
            src = cur if prev is None else prev
            embeddings = model.vqvae.codebook.dictionary_lookup(samples)
            logits = model(embeddings[src], samples[src], cond, decode_step=i, decode_idx=idx)[1]
            probs = F.softmax(logits.reshape(n, -1), dim=-1)
            samples[(slice(None), *idx)] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            prev = cur
    finally:
        model.frame_cond_cache = None
    return samples
