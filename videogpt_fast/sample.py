"""Fast autoregressive sampling for :class:`videogpt_fast.gpt.VideoGPT`, the gpt-fast way.

The original samples position by position through ``VideoGPT.forward(..., decode_step=i)``: every
step re-embeds the whole code grid, allocates its caches at step 0 and attends over a dense mask.
Here one step runs the model's own transformer, once, on what it needs: the step itself (KV caches,
the draw on the device, the eager/compiled/CUDA-graph runner) is :mod:`videogpt_fast.decode`; this
module drives it over the positions, and over sliding windows in latent time for longer videos.

* :func:`sample_codes` runs the step compiled by ``torch.compile`` (inductor fuses the original's
  LayerNorm, GeLU2, the residuals and the draw) and, on CUDA, replayed as CUDA graphs
  (``mode="reduce-overhead"``); or eager; or eager captured in a CUDA graph by hand. Which one
  ran is logged at INFO. Compiled and graph steps draw from the device's default generator; a
  ``generator`` seeds it (one draw at the start, state restored at the end), so the same seed
  gives the same codes in every mode.

:func:`sample_codes_reference` is the original algorithm (the per-position loop through the
module's ``decode_step`` API), kept for tests and benchmarks.
"""
from __future__ import annotations

import itertools
import logging
import math
import operator
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .decode import (DecodePlan, Stepper, check_sampling_args, decode_step, default_generator_seeded_from,
                     sample_logits, sample_step, step_logits, step_modes)
from .ops import decode_attention, decode_attention_backend

__all__ = [
    "decode_attention", "DecodePlan", "decode_step", "sample_logits",
    "teacher_forced_decode", "latent_windows", "HANDOVERS", "CONTEXT_PADS", "encode_context", "reencode_context",
    "sample_codes", "sample", "sample_codes_reference",
]

log = logging.getLogger(__name__)


def _check_windows(latent_frames: Any, window: int, context_frames: Any) -> Tuple[int, int]:
    """(latent_frames, context_frames) as ints; the checks of :func:`latent_windows`."""
    for name, value in (("latent_frames", latent_frames), ("context_frames", context_frames)):
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"sample: {name} must be an int, got {value!r} ({type(value).__name__})")
    latent_frames, context_frames = operator.index(latent_frames), operator.index(context_frames)
    if not latent_frames >= window > context_frames >= 0:
        raise ValueError(f"sample: need latent_frames >= T > context_frames >= 0 (T = {window}, the prior's "
                         f"latent frames), got latent_frames={latent_frames}, context_frames={context_frames}")
    return latent_frames, context_frames


def latent_windows(latent_frames: int, window: int, context_frames: int) -> List[Tuple[int, int]]:
    """The windows of sliding-window sampling: (first latent frame, teacher-forced prefix frames)
    for each window of ``window`` latent frames covering ``latent_frames``.

    The first window is (0, 0): plain sampling. Each later one starts ``window - context_frames``
    frames after the previous one and keeps the frames it shares with it as its prefix; the last
    one ends at the last frame (it may overlap more). ValueError unless
    ``latent_frames >= window > context_frames >= 0``; TypeError for non-int frame counts (2.5, "4").
    """
    latent_frames, context_frames = _check_windows(latent_frames, window, context_frames)
    windows, start = [(0, 0)], 0
    while start + window < latent_frames:
        end = start + window
        start = min(start + window - context_frames, latent_frames - window)
        windows.append((start, end - start))
    return windows


#: how a later window receives the latent frames it shares with the previous one (``sample_codes``'
#: ``handover``): ``"reencode"`` the previous window's pixels through :func:`encode_context`, or
#: ``"codes"`` the previous window's own codes, copied. The default is :func:`default_handover`'s.
HANDOVERS = ("reencode", "codes")


def default_handover(vqvae: nn.Module) -> str:
    """The hand-over for windows of ``vqvae``'s codes (``sample_codes``' default): ``"codes"`` for a
    VQ-VAE whose convolutions pad time by replicating frames (``temporal_padding="replicate"``,
    TATS): its codes say little about where in the clip a frame sits, so a window's codes can start
    the next window as they are (no decode / re-encode round trip, which costs the shape 4-5% per
    hand-over). ``"reencode"`` for the original's zero-padded VQ-VAE, whose codes carry their
    position (README, "Longer videos and continuation")."""
    return "codes" if getattr(vqvae, "temporal_padding", "zeros") == "replicate" else "reencode"


#: how :func:`encode_context` pads context frames to the trained clip length: ``"last"`` repeats the
#: last frame, ``"repeat"`` replays the context frames from their first
CONTEXT_PADS = ("last", "repeat")


@torch.no_grad()
def encode_context(vqvae: nn.Module, frames: torch.Tensor, window: int, pad: str = "last") -> torch.Tensor:
    """Codes (n, c, h, w) int64 of pixel ``frames`` (n, 3, c * ds_t, H, W) in [-0.5, 0.5] as they
    are at the START of a clip of ``window`` latent frames (the prior's T): the frames are padded
    to ``window * ds_t`` (``pad="last"``: by repeating the last one; ``"repeat"``: by replaying
    the frames themselves, f0 f1 .. f0 f1 ..; :data:`CONTEXT_PADS`), encoded as one clip, and the
    first c latent frames kept.

    Why: the VQ-VAE's codes depend on where a latent frame sits in its clip (zero-padded 3D convs,
    temporal attention over the clip). On the demo's data the position of a latent frame in an
    8-frame clip is read off its codes alone 89% of the time, and the same frames encoded at
    another position share 5-13% of their codes. A prior trained on whole clips has only seen
    clip-start codes at positions 0..c-1. Encoded this way (``pad="last"``), 2 latent frames of
    context share 85% of their codes with those of a clip that really starts there (11% encoded
    alone, 7% copied from the end of the previous clip), and the prior's NLL of the real next latent frame is 1.10 nats
    (1.04 with the real clip's codes, 3.43 encoded alone, 3.18 copied). Which padding: ``"last"``
    (the default, used by ``continue`` for real frames) fits real clips best (64 held-out clips
    with the demo's trained prior: NLL of the real next two latent frames 1.12 / 0.81 nats, 76% of
    the context's codes those of the real clip's start; ``"repeat"`` 1.20 / 0.81 and 71%), but it
    loses more of a generated shape (see :func:`reencode_context`).
    ValueError unless 0 < c < ``window``, or for another ``pad``.
    """
    if pad not in CONTEXT_PADS:
        raise ValueError(f"encode_context: pad must be one of {CONTEXT_PADS}, got {pad!r}")
    ds = int(vqvae.downsample[0])
    if not isinstance(frames, torch.Tensor) or frames.dim() != 5:
        raise ValueError(f"encode_context: frames must be a (n, 3, c * {ds}, H, W) tensor, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    f = frames.shape[2]
    if f % ds or not 0 < f // ds < window:
        raise ValueError(f"encode_context: frames must be (n, 3, c * {ds}, H, W) with 0 < c < {window}, "
                         f"got {tuple(frames.shape)}")
    rest = window * ds - f
    if pad == "last":
        tail = frames[:, :, -1:].expand(-1, -1, rest, -1, -1)
    else:
        tail = frames.repeat(1, 1, -(-rest // f), 1, 1)[:, :, :rest]
    return vqvae.encode(torch.cat([frames, tail], dim=2))[:, :f // ds]


@torch.no_grad()
def reencode_context(vqvae: nn.Module, window_codes: torch.Tensor, frames: int,
                     pixels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The last ``frames`` latent frames of a window's codes (n, T, h, w) handed to the next window
    with ``handover="reencode"``: the window decoded to pixels (``pixels``: its decode, when the
    caller has it; clamped to [-0.5, 0.5]) and its last ``frames * ds_t`` pixel frames re-encoded
    by :func:`encode_context` with ``pad="repeat"``. (n, frames, h, w) int64.

    Why "repeat": the prior's own shapes are fainter than real ones, and the decode / re-encode
    round trip loses more of them when the clip is padded with a still last frame. With the demo's
    trained prior (32 samples of 32 frames, context 2, README) the context frames keep 89% of
    their shape's area per hand-over padded with the last frame and 95% replayed, and the area per
    8-frame window goes 0.156 0.123 0.093 0.069 instead of 0.156 0.087 0.050 0.036 (training
    videos 0.155), colour drift from the first window 0.15 0.23 0.30 instead of 0.25 0.40 0.44."""
    ds = int(vqvae.downsample[0])
    pixels = (vqvae.decode(window_codes) if pixels is None else pixels).clamp(-0.5, 0.5)
    return encode_context(vqvae, pixels[:, :, pixels.shape[2] - frames * ds:], window_codes.shape[1], pad="repeat")


def _write_prefix(plan: DecodePlan, codes: torch.Tensor) -> None:
    """Teacher-force ``codes`` (n, P) at positions 0..P-1 in one pass: their keys/values go into the
    caches, and the last becomes ``plan.prev``."""
    model = plan.model
    x = F.embedding(codes, model.vqvae.codebook.embeddings).to(plan.dtype)
    fed = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # position p is fed the code at p - 1 (p = 0: the start token)
    model.forward_positions(fed, plan.cond, torch.arange(codes.shape[1], device=plan.device))
    plan.prev.copy_(codes[:, -1])


def check_n(n: Any) -> int:
    """``n`` (the number of samples) as an int >= 1; ValueError otherwise (e.g. 2.5, 0, True)."""
    if isinstance(n, bool) or not isinstance(n, (int, torch.SymInt)) and not (
            isinstance(n, torch.Tensor) and n.dim() == 0 and not n.is_floating_point()):
        raise ValueError(f"sample: n must be a positive int, got {n!r} ({type(n).__name__})")
    if int(n) < 1:
        raise ValueError(f"sample: n must be a positive int, got {int(n)}")
    return int(n)


def _cond_from_batch(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    if not (model.use_frame_cond or model.args.class_cond):
        return {}
    if not isinstance(batch, Mapping) or not isinstance(batch.get("video"), torch.Tensor):
        raise ValueError("sample: a conditional model needs a batch dict with 'video' (n, 3, T, H, W), a float "
                         "tensor in [-0.5, 0.5] (and 'label' (n,) when class_cond)")
    cond = model.make_cond(batch)  # checks the video's dtype, rank, size and the labels
    if batch["video"].shape[0] != n:
        raise ValueError(f"sample: batch['video'] holds {batch['video'].shape[0]} videos but n={n}")
    weight = model.fc_in.weight  # the conditioning runs in the weights' dtype, on their device
    return {k: v.to(device=weight.device, dtype=weight.dtype if v.is_floating_point() else v.dtype)
            for k, v in cond.items()}


@torch.no_grad()
def sample_codes(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, progress: bool = True,
                 dtype: Optional[torch.dtype] = None, cuda_graph: Optional[bool] = None,
                 compile: Optional[bool] = None,
                 plan_hook: Optional[Callable[[DecodePlan], None]] = None,
                 latent_frames: Optional[int] = None, context_frames: Optional[int] = None,
                 prefix: Optional[torch.Tensor] = None, handover: Optional[str] = None) -> torch.Tensor:
    """Sample ``n`` code grids (n, *latent_shape) int64 from a VideoGPT prior, or longer ones
    (n, latent_frames, H', W') by sliding a window of the prior's T latent frames.

    Args:
        model: a :class:`videogpt_fast.gpt.VideoGPT` (dropout is not applied while decoding).
        n: number of samples.
        batch: ``video`` (n, 3, T, H, W) (and ``label`` (n,) integers) for frame-/class-conditional
            models, as the original's ``sample(n, batch)``.
        temperature, top_k, top_p: see :func:`sample_logits`; the defaults reproduce the original.
        generator: a ``torch.Generator`` on the model's device for reproducible draws (default: the
            global RNG, as the original). Eager steps draw from it directly (the original's
            codes for the same seed); compiled/graph steps from the device's default generator
            seeded from it.
        progress: show a tqdm bar over positions.
        dtype: compute dtype (e.g. ``torch.bfloat16`` on GPU); default the model's parameter dtype.
        cuda_graph: replay the step as CUDA graphs (default: on CUDA devices; ValueError on CPU).
        compile: compile the step with ``torch.compile`` (inductor; default: on CUDA devices).
            On CPU inductor needs a C++ compiler.
        plan_hook: called with the :class:`DecodePlan` after every step (tests, introspection).
        latent_frames: latent frames to generate (default: T, the prior's). More than T: windows
            of T frames (:func:`latent_windows`); the first is plain sampling (the same codes as
            without ``latent_frames`` for the same seed), each later one advances by
            ``T - context_frames`` frames, writes the frames it shares with the previous window
            into the KV cache in one teacher-forced pass, at the window's own positions, and
            samples the rest. A class label holds throughout; a frame-conditional prior keeps
            the batch's real conditioning frames for every window (they are the only real frames;
            re-conditioning on generated frames would need a VQ-VAE decode per window and feed
            the prior its own reconstructions).
        context_frames: latent frames a later window keeps from the previous one (default T // 2:
            every generated frame then sees at least half a window of earlier frames, at twice the
            cost per new frame of independent windows).
        handover: how a later window gets the latent frames it shares with the previous one
            (:data:`HANDOVERS`; default :func:`default_handover`: ``"codes"`` for a time-agnostic
            VQ-VAE, else ``"reencode"``). ``"reencode"``: the previous window is decoded to
            pixels and the shared frames re-encoded as the start of a fresh clip
            (:func:`reencode_context`), because the VQ-VAE's codes carry their position in the
            clip and a prior trained on whole clips has only seen clip-start codes at the window's
            first positions. ``"codes"``: the previous window's codes are copied. The returned
            codes hold each latent frame as its window sampled it, not the re-encoded contexts;
            :func:`videogpt_fast.long_video.decode_latents` with the same ``handover`` and
            ``context_frames`` rebuilds the sampled windows (``VideoGPT.sample`` does). Measured
            with the fully trained default demo prior (32 samples of 32 frames, context 2, README):
            NLL of the latent frames sampled after the context 2.28/1.36 nats copied, 0.83/0.65
            re-encoded (1.12/0.83 in training clips); the shape's area per 8-frame window 0.158
            0.208 0.212 0.215 copied (a new shape at every window), 0.154 0.118 0.090 0.068
            re-encoded (training videos 0.155; the prior's own within-window shrinking compounds
            over the windows), its colour's drift from the first window 0.22 0.27 0.30 copied,
            0.15 0.23 0.31 re-encoded, its frame-to-frame area change 2.7 vs 0.72.
        prefix: int64/int32 codes in [0, n_codes), (n, P, H', W'), of the first P latent frames, 0 < P < T, given
            (e.g. a real clip's, to continue it): they are teacher-forced into the first window in one pass and
            returned unchanged; sampling starts at latent frame P.
    """
    n = check_n(n)
    check_sampling_args(temperature, top_k, top_p)
    T, grid = int(model.shape[0]), tuple(int(s) for s in model.shape[1:])
    latent_frames = T if latent_frames is None else latent_frames
    context_frames = T // 2 if context_frames is None else context_frames
    latent_frames, _ = _check_windows(latent_frames, T, context_frames)
    # the codes first: a latent_frames too long for memory fails here, before listing its windows
    samples = torch.zeros((n, latent_frames * math.prod(grid)), dtype=torch.long, device=model.fc_in.weight.device)
    windows = latent_windows(latent_frames, T, context_frames)
    handover = default_handover(model.vqvae) if handover is None else handover
    if handover not in HANDOVERS:
        raise ValueError(f"sample: handover must be one of {HANDOVERS}, got {handover!r}")
    if prefix is not None:
        if not isinstance(prefix, torch.Tensor) or prefix.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"sample: prefix must be int64/int32 codes (n, P, H', W'), got "
                             f"{prefix.dtype if isinstance(prefix, torch.Tensor) else type(prefix).__name__}")
        if prefix.dim() != 4 or prefix.shape[0] != n or tuple(prefix.shape[2:]) != grid or not 0 < prefix.shape[1] < T:
            raise ValueError(f"sample: prefix must be codes (n={n}, P, *{grid}) with 0 < P < T={T}, "
                             f"got {tuple(prefix.shape)}")
        n_codes = int(model.vqvae.n_codes)
        if not 0 <= int(prefix.min()) <= int(prefix.max()) < n_codes:  # once per call, before any work
            raise ValueError(f"sample: prefix codes must be in [0, n_codes={n_codes}), got values in "
                             f"[{int(prefix.min())}, {int(prefix.max())}]")
        windows[0] = (0, int(prefix.shape[1]))
    cond = _cond_from_batch(model, n, batch)
    device = model.fc_in.weight.device
    compile, cuda_graph = step_modes(device, compile, cuda_graph)
    eager = not (compile or cuda_graph)  # eager steps draw from `generator` itself
    if generator is not None and not (isinstance(generator, torch.Generator) and
                                      (not eager or generator.device.type == device.type)):
        raise ValueError(f"sample: generator must be a torch.Generator on the model's device type ({device.type}) "
                         f"for eager steps, got "
                         f"{generator.device if isinstance(generator, torch.Generator) else type(generator).__name__}")
    plan = DecodePlan.from_model(model, n, cond, dtype)
    try:
        stepper = Stepper(plan, sample_step, (temperature, top_k, top_p) + ((generator,) if eager else ()),
                           compile, cuda_graph)
        log.info("videogpt_fast.sample: decoding %d positions x batch %d, step %s (%s, attention backend %s)%s",
                 plan.seq_len, n, stepper.mode, plan.dtype, decode_attention_backend(plan.device),
                 f"; {len(windows)} windows, {handover} hand-over" if len(windows) > 1 else "")
        per_frame = math.prod(grid)
        if prefix is not None:
            samples[:, :prefix[0].numel()] = prefix.reshape(n, -1).to(plan.device)
        window = samples.new_zeros(n, plan.seq_len)  # the codes the current window is conditioned on / samples
        bar = tqdm(total=sum(plan.seq_len - f * per_frame for _, f in windows), disable=not progress,
                   desc="sampling", unit="pos")
        with bar, default_generator_seeded_from(None if eager else generator, plan.device):
            for w, (start, forced) in enumerate(windows):
                offset = start * per_frame  # the window's first position in `samples`
                if len(windows) > 1:
                    bar.set_postfix_str(f"window {w + 1}/{len(windows)}, {handover} hand-over", refresh=False)
                if forced:
                    if w > 0 and handover == "reencode":
                        context = reencode_context(model.vqvae, window.view(n, T, *grid), forced).reshape(n, -1)
                    else:  # the given prefix, or the previous window's codes
                        context = samples[:, offset:offset + forced * per_frame]
                    window[:, :forced * per_frame] = context
                    _write_prefix(plan, context)
                for i in range(forced * per_frame, plan.seq_len):
                    code = stepper(i)
                    window[:, i] = code
                    plan.prev.copy_(code)
                    bar.update()
                    if plan_hook is not None:
                        plan_hook(plan)
                # the window's sampled codes into the result at once (not one more write per step)
                samples[:, offset + forced * per_frame:offset + plan.seq_len] = window[:, forced * per_frame:]
    finally:
        plan.close()
    return samples.view(n, latent_frames, *grid)


@torch.no_grad()
def sample(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None, **kwargs) -> torch.Tensor:
    """:func:`sample_codes` then the VQ-VAE decoder: videos (n, 3, T, H, W) in [0, 1]."""
    codes = sample_codes(model, n, batch, **kwargs)
    videos = model.vqvae.decode(codes)
    return torch.clamp(videos, -0.5, 0.5) + 0.5


@torch.no_grad()
def teacher_forced_decode(model: nn.Module, codes: torch.Tensor, batch: Optional[Mapping[str, torch.Tensor]] = None,
                          dtype: Optional[torch.dtype] = None, cuda_graph: Optional[bool] = None,
                          compile: Optional[bool] = False) -> torch.Tensor:
    """Logits (n, L, n_codes) float32 of :func:`decode_step` fed ``codes`` (n, *latent_shape) one
    position at a time: what the original's KV-cache decoding gives for the same codes."""
    n = codes.shape[0]
    cond = _cond_from_batch(model, n, batch)
    plan = DecodePlan.from_model(model, n, cond, dtype)
    try:
        if tuple(codes.shape[1:]) != plan.shape:
            raise ValueError(f"teacher_forced_decode: codes must be (n, *{plan.shape}), got {tuple(codes.shape)}")
        flat = codes.reshape(n, -1).to(plan.device)
        stepper = Stepper(plan, step_logits, (), *step_modes(plan.device, compile, cuda_graph))
        out = []
        for i in range(plan.seq_len):
            if i > 0:
                plan.prev.copy_(flat[:, i - 1])
            out.append(stepper(i).float().clone())
    finally:
        plan.close()
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------------------------
# the original algorithm, for tests and benchmarks
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_codes_reference(model: nn.Module, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None,
                           generator: Optional[torch.Generator] = None, progress: bool = False,
                           max_positions: Optional[int] = None, greedy: bool = False) -> torch.Tensor:
    """The original ``VideoGPT.sample`` loop (codes only): per position, look up the embeddings of
    the whole grid, run ``model(..., decode_step=i, decode_idx=idx)`` and draw from
    ``multinomial(softmax(logits))`` (``greedy``: take the argmax). Same random-number
    consumption as eager :func:`sample_codes` with the default arguments. ``max_positions``
    stops after that many positions (benchmarks: the original's cost per position does not
    depend on the position)."""
    device = model.fc_in.weight.device
    n = check_n(n)
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
            logits = model(embeddings[src], samples[src], cond, decode_step=i, decode_idx=idx)[1].reshape(n, -1)
            if greedy:
                code = logits.argmax(dim=-1)
            else:
                code = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
            samples[(slice(None), *idx)] = code
            prev = cur
    finally:
        model.clear_decode_cache()
    return samples
