"""The decode step of sampling: one position of :class:`videogpt_fast.gpt.VideoGPT` per call, over
its KV caches, the gpt-fast way. This is the place to change the decode step.

* :class:`DecodePlan` sets the prior up for a batch: :meth:`VideoGPT.setup_caches` gives every
  self-attention a static :class:`~videogpt_fast.kv_cache.KVCache` (n, heads, L, d) and, for
  frame-conditional priors, caches every block's cross-attention keys/values once.
* :func:`decode_step` (logits) and the sampler's step (logits and the draw) embed the previous code
  and call :meth:`VideoGPT.forward_positions` at a position *tensor*: the blocks write their
  key/value in place and attend through :func:`videogpt_fast.ops.decode_attention`. Static shapes,
  no host sync.
* :func:`sample_logits` is the draw, on the device: temperature, top-k, top-p, then
  ``argmax(probs / Exp(1) noise)``, exactly how ``torch.multinomial(probs, 1)`` draws.
* ``Stepper`` runs a step eager, compiled by ``torch.compile`` (inductor), compiled and replayed as
  CUDA graphs (``mode="reduce-overhead"``), or eager captured in a CUDA graph by hand.

:mod:`videogpt_fast.sample` drives these steps over the positions and windows.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import LayerNorm

__all__ = ["sample_logits", "check_sampling_args", "DecodePlan", "decode_step", "step_logits", "sample_step",
           "step_modes", "Stepper", "default_generator_seeded_from"]


# --------------------------------------------------------------------------------------------
# the draw
# --------------------------------------------------------------------------------------------
def check_sampling_args(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if not temperature > 0:
        raise ValueError(f"sample: temperature must be > 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"sample: top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p must be in (0, 1], got {top_p}")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one code per row of (n, n_codes) ``logits``: int64 (n,), on the logits' device.

    With the defaults this is the original's ``multinomial(softmax(logits), 1)``, computed as
    ``torch.multinomial`` computes it (``argmax(probs / q)``, q ~ Exp(1) from ``generator`` or
    the global RNG: the same codes for the same random state) minus its host-synchronising
    checks. ``top_k=1`` is the argmax (greedy, no random numbers drawn); ``top_k`` keeps the k
    largest logits, ``top_p`` the smallest set of most likely codes whose probability reaches
    ``top_p`` (at least one); ``temperature`` divides the logits. Raises ValueError for
    temperature <= 0, top_k < 1 or top_p outside (0, 1].
    """
    check_sampling_args(temperature, top_k, top_p)
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
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


# --------------------------------------------------------------------------------------------
# decoding state
# --------------------------------------------------------------------------------------------
def _prior_in_dtype(model: nn.Module, dtype: Optional[torch.dtype]) -> nn.Module:
    """``model`` itself, or (another ``dtype``) a copy of its prior in ``dtype`` sharing the frozen
    VQ-VAE; the LayerNorms (fp32 math, as the original) and the frame encoder stay in fp32.
    ValueError unless ``dtype`` is None or a floating ``torch.dtype``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"sample: dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    if dtype is None or dtype == model.fc_in.weight.dtype:
        return model
    prior = copy.deepcopy(model, memo={id(model.vqvae): model.vqvae})
    for name, child in prior.named_children():
        if name not in ("vqvae", "resnet", "cond_pos_embd"):
            child.to(dtype)
    for m in prior.modules():
        if isinstance(m, LayerNorm):
            m.float()
    return prior


@dataclass
class DecodePlan:
    """What one decode step reads besides the weights: the prior that decodes (``model``: the
    caller's, or its copy in another dtype) with its caches set up for a batch of ``n``, the
    step's conditioning ``cond`` (``class_cond`` for class-conditional norms) and the static step
    inputs ``prev`` (n,) int64 (the previous codes) and ``pos`` () int64 (the position)."""
    model: nn.Module
    n: int
    cond: Dict[str, torch.Tensor]
    prev: torch.Tensor
    pos: torch.Tensor

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.model.shape)

    @property
    def seq_len(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.fc_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.fc_in.weight.device

    def caches(self) -> List[torch.Tensor]:
        """Every cache buffer (self- and cross-attention keys/values of every layer)."""
        return [t for m in self.model.modules() if getattr(m, "kv_cache", None) is not None
                for t in (m.kv_cache.k_cache, m.kv_cache.v_cache)]

    def cache_data_ptrs(self) -> List[int]:
        """Addresses of the cache buffers (they never change while sampling)."""
        return [t.data_ptr() for t in self.caches()]

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.caches())

    def weight_bytes(self) -> int:
        """Bytes of the weights one step reads (embeddings, projections, MLPs, norms, output layer;
        not the frozen VQ-VAE, the frame encoder or the cached cross-attention key/value weights)."""
        skip = ("vqvae.", "resnet.", "cond_pos_embd.")
        return sum(p.numel() * p.element_size() for name, p in self.model.named_parameters()
                   if not name.startswith(skip) and ".enc_attn.w_ks." not in name and ".enc_attn.w_vs." not in name)

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, n: int, cond: Optional[Mapping[str, torch.Tensor]] = None,
                   dtype: Optional[torch.dtype] = None) -> "DecodePlan":
        """Set up decoding of ``n`` sequences from ``model`` with conditioning ``cond``
        (``class_cond`` (n, classes) one-hot, ``frame_cond`` (n, 3, n_cond_frames, H, W) frames, as
        :meth:`VideoGPT.make_cond` builds it). ``dtype`` (e.g. ``torch.bfloat16``) decodes with a
        copy of the prior in that dtype (default: the model's own parameters, no copy).
        :meth:`close` frees the caches."""
        cond = dict(cond or {})
        if n < 1:
            raise ValueError(f"sample: n must be >= 1, got {n}")
        device = model.fc_in.weight.device
        prior = _prior_in_dtype(model, dtype)
        step_cond: Dict[str, torch.Tensor] = {}
        if model.args.class_cond:
            class_cond = cond.get("class_cond")
            if class_cond is None or class_cond.shape != (n, model.args.class_cond_dim):
                raise ValueError(f"sample: a class-conditional model needs cond['class_cond'] of shape "
                                 f"({n}, {model.args.class_cond_dim}), got "
                                 f"{None if class_cond is None else tuple(class_cond.shape)}")
            step_cond["class_cond"] = class_cond.to(device=device, dtype=prior.norm.w.weight.dtype)
        prior.setup_caches(n, cond)
        return cls(model=prior, n=n, cond=step_cond, prev=torch.zeros(n, dtype=torch.long, device=device),
                   pos=torch.zeros((), dtype=torch.long, device=device))

    def close(self) -> None:
        """Free the caches."""
        self.model.clear_decode_cache()


def step_logits(model: nn.Module, prev: torch.Tensor, pos: torch.Tensor,
                 cond: Dict[str, torch.Tensor]) -> torch.Tensor:
    x = F.embedding(prev, model.vqvae.codebook.embeddings).to(model.fc_in.weight.dtype).unsqueeze(1)
    return model.forward_positions(x, cond, pos.reshape(1))[:, 0]


def decode_step(plan: DecodePlan, prev: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits (n, n_codes) for flattened position ``pos`` (0-d int64 tensor) given the codes
    ``prev`` (n,) int64 at ``pos - 1`` (ignored at ``pos == 0``: the start token is used).
    Writes this position's keys/values into the caches in place."""
    return step_logits(plan.model, prev, pos, plan.cond)


def sample_step(model: nn.Module, prev: torch.Tensor, pos: torch.Tensor, cond: Dict[str, torch.Tensor],
                 temperature: float, top_k: Optional[int], top_p: Optional[float],
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One sampling step: the codes (n,) drawn at ``pos`` (what the sampler compiles)."""
    return sample_logits(step_logits(model, prev, pos, cond), temperature, top_k, top_p, generator)


# --------------------------------------------------------------------------------------------
# running the step: eager, compiled, CUDA graphs
# --------------------------------------------------------------------------------------------
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


def step_modes(device: torch.device, compile: Optional[bool], cuda_graph: Optional[bool]) -> Tuple[bool, bool]:
    """(compile, cuda_graph): both default to ``device`` being CUDA; CUDA graphs need CUDA."""
    on_cuda = device.type == "cuda"
    compile = on_cuda if compile is None else bool(compile)
    cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
    if cuda_graph and not on_cuda:
        raise ValueError(f"sample: cuda_graph=True needs the model on a CUDA device, it is on {device}")
    return compile, cuda_graph


class Stepper:
    """Runs ``fn(model, plan.prev, plan.pos, plan.cond, *args)`` at a position, in one of four modes
    (:func:`step_modes`): eager; compiled by inductor; compiled and replayed as CUDA graphs
    (``reduce-overhead``); eager captured in a CUDA graph by hand."""

    def __init__(self, plan: DecodePlan, fn: Callable[..., torch.Tensor], args: tuple, compile: bool,
                 cuda_graph: bool):
        self.plan = plan
        self.graph = None
        self.mark_step = False
        call = lambda f: f(plan.model, plan.prev, plan.pos, plan.cond, *args)  # noqa: E731
        if compile:
            mode = "reduce-overhead" if cuda_graph else None
            compiled = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
            self.run = lambda: call(compiled)
            self.mark_step = cuda_graph
            self.mode = "compiled (inductor, CUDA graphs)" if cuda_graph else "compiled (inductor)"
        elif cuda_graph:
            self.graph, self.out = _capture_graph(lambda: call(fn))
            self.run = self.graph.replay
            self.mode = "eager, captured in a CUDA graph"
        else:
            self.run = lambda: call(fn)
            self.mode = "eager"

    def __call__(self, pos: int) -> torch.Tensor:
        self.plan.pos.fill_(pos)
        if self.graph is not None:
            self.run()
            return self.out
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        return self.run()


@contextlib.contextmanager
def default_generator_seeded_from(generator: Optional[torch.Generator], device: torch.device) -> Iterator[None]:
    """Seed ``device``'s default generator from ``generator`` (one draw) and restore its state
    afterwards; nothing without a generator (the global RNG is used, as the original)."""
    if generator is None:
        yield
        return
    if device.type == "cuda":
        default = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    else:
        default = torch.default_generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    state = default.get_state()
    default.manual_seed(seed)
    try:
        yield
    finally:
        default.set_state(state)
