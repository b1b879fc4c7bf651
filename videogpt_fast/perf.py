"""Training-speed options of :mod:`videogpt_fast.train`: TF32, the optimiser implementation,
channels_last_3d, cuDNN autotuning, selective activation checkpointing and the DDP configuration.

Only TF32 changes the arithmetic (fp32 matmul/convolution inputs rounded to 10-bit mantissas, on
NVIDIA GPUs only). The others compute the same thing: channels_last_3d changes the memory layout of
the 3D convolutions (the kernels may sum in another order), activation checkpointing recomputes
activations in backward (same numbers, the dropout RNG replayed), and the DDP settings change when
gradients are all-reduced, not their values.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

CHECKPOINT_CHOICES = ("none", "attention", "all")
FIRST_BUCKET_MB = torch.distributed._DEFAULT_FIRST_BUCKET_BYTES / 2 ** 20 if torch.distributed.is_available() else 1.0


# ----------------------------------------------------------------------------------------------
# flags
# ----------------------------------------------------------------------------------------------
def add_perf_args(parser: argparse.ArgumentParser) -> None:
    """The ``performance`` flag group of ``train {vqvae,gpt}`` (``--compile``, ``--precision`` and
    ``--activation_checkpointing`` live with the training flags)."""
    g = parser.add_argument_group("performance (recommended on GPU: --precision bf16 --compile; "
                                  "--tf32 for fp32 runs)")
    g.add_argument("--tf32", action="store_true",
                   help="fp32 matmuls and cuDNN convolutions on TF32 tensor cores (NVIDIA Ampere or newer; "
                        "torch's default keeps fp32 matmuls in full fp32); no effect on CPU, said so at start")
    g.add_argument("--channels_last_3d", action="store_true",
                   help="store the 3D convolutions' weights and the input videos channels-last "
                        "(torch.channels_last_3d); same numbers, layout only. Opt-in: not yet measured on GPU")
    g.add_argument("--no_cudnn_benchmark", action="store_true",
                   help="do not let cuDNN autotune the convolution algorithms (on by default on CUDA: "
                        "the training shapes are fixed)")
    g.add_argument("--ddp_bucket_mb", type=float, default=None,
                   help="DDP gradient bucket size in MiB: each full bucket is all-reduced while backward "
                        "continues (default: torch's, 25 MiB with a 1 MiB first bucket; with --compile at "
                        "least 1)")


def activation_checkpointing_arg(value: str) -> Union[str, Tuple[int, ...]]:
    """Parse ``--activation_checkpointing``: ``none``, ``attention``, ``all`` or comma-separated
    block indices (``0,3``); ValueError otherwise."""
    if value is None or isinstance(value, bool):  # the former on/off flag (True: every prior block)
        return "all" if value else "none"
    s = str(value).strip().lower()
    if s in CHECKPOINT_CHOICES:
        return s
    try:
        idx = sorted({int(p) for p in s.split(",") if p.strip()})
    except ValueError:
        idx = []
    if not idx or idx[0] < 0:
        raise ValueError(f"--activation_checkpointing takes none, attention, all or comma-separated block "
                         f"indices >= 0 (e.g. 0,2), got {value!r}")
    return tuple(idx)


def validate_args(args: argparse.Namespace) -> None:
    """ValueError for a bad ``--activation_checkpointing`` or ``--ddp_bucket_mb`` (also in one process)."""
    activation_checkpointing_arg(args.activation_checkpointing)
    ddp_kwargs(torch.device("cpu"), args.ddp_bucket_mb, compiled=args.compile)


# ----------------------------------------------------------------------------------------------
# numerics and kernels
# ----------------------------------------------------------------------------------------------
def configure_backends(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> List[str]:
    """Set TF32 and cuDNN autotuning for this process; returns what was set, to be announced.
    On CPU nothing is set (``--tf32`` is reported as having no effect)."""
    if device.type != "cuda":
        return ["--tf32 has no effect on CPU (TF32 is an NVIDIA GPU number format): fp32 stays fp32"] if tf32 else []
    msgs = []
    if tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        msgs.append("TF32 on (--tf32): fp32 matmuls and cuDNN convolutions round their inputs to TF32")
    else:
        msgs.append(f"TF32 off for fp32 matmuls (torch default; --tf32 turns it on); cuDNN convolutions "
                    f"allow_tf32={torch.backends.cudnn.allow_tf32} (torch default)")
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    msgs.append(f"cuDNN autotuning {'on' if cudnn_benchmark else 'off (--no_cudnn_benchmark)'}")
    return msgs


def optimizer_kwargs(device: torch.device) -> Tuple[Dict[str, bool], str]:
    """AdamW implementation for parameters on ``device``: fused (one kernel for all tensors) on
    CUDA, foreach (multi-tensor) elsewhere; with a description to announce."""
    if device.type == "cuda":
        return {"fused": True}, "AdamW fused (CUDA)"
    return {"foreach": True}, f"AdamW foreach ({device.type})"


# ----------------------------------------------------------------------------------------------
# memory layout
# ----------------------------------------------------------------------------------------------
def to_channels_last_3d(model: nn.Module) -> nn.Module:
    """Convert the 5-D parameters (3D convolution weights) of ``model`` in place to
    ``torch.channels_last_3d``; other parameters are unchanged."""
    return model.to(memory_format=torch.channels_last_3d)


def channels_last_batch(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """The batch with its 5-D tensors (videos, (B, C, T, H, W)) stored channels-last."""
    return {k: (v.contiguous(memory_format=torch.channels_last_3d)
                if isinstance(v, torch.Tensor) and v.dim() == 5 else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# selective activation checkpointing
# ----------------------------------------------------------------------------------------------
def checkpoint_module(module: nn.Module) -> nn.Module:
    """Make ``module`` recompute its activations in backward when it runs in training mode with
    gradients on (``torch.utils.checkpoint``, non-reentrant, RNG state replayed so dropout masks
    match). Parameters and state-dict keys are unchanged; idempotent."""
    if getattr(module, "_activation_checkpointed", False):
        return module
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward
    module._activation_checkpointed = True
    return module


def _select(blocks: List[nn.Module], spec: Union[str, Tuple[int, ...]], what: str) -> List[int]:
    if spec == "none":
        return []
    if isinstance(spec, str):
        return list(range(len(blocks)))
    bad = [i for i in spec if i >= len(blocks)]
    if bad:
        raise ValueError(f"--activation_checkpointing: block indices {bad} out of range: the model has "
                         f"{len(blocks)} {what} (0..{len(blocks) - 1})")
    return list(spec)


def apply_activation_checkpointing(model: nn.Module, stage: str, spec: Union[str, Tuple[int, ...]]) -> str:
    """Recompute the parts ``spec`` names (see :func:`activation_checkpointing_arg`) in backward.

    * prior (``gpt``): blocks are ``attn_stack.attn_nets``; ``attention`` recomputes every block's
      self- (and cross-) attention, ``all`` every whole block, indices those whole blocks;
    * VQ-VAE: blocks are the attention residual blocks, encoder then decoder; ``attention`` or
      indices recompute their axial attention. ``all`` is refused: recomputing a whole residual
      block would run its BatchNorms twice and update their running statistics twice.

    Returns a description of what is recomputed. Raises ValueError for a bad spec.
    """
    if spec == "none":
        return "activation checkpointing: none"
    if stage == "gpt":
        blocks = list(model.attn_stack.attn_nets)
        chosen = _select(blocks, spec, "attention blocks (--layers)")
        if spec == "attention":
            for b in blocks:
                checkpoint_module(b.attn)
                if getattr(b, "use_frame_cond", False):
                    checkpoint_module(b.enc_attn)
            return f"activation checkpointing: the attention of all {len(blocks)} prior blocks"
        for i in chosen:
            checkpoint_module(blocks[i])
        return f"activation checkpointing: prior blocks {chosen} (whole blocks)"
    from .vqvae import AttentionResidualBlock, AxialBlock
    if spec == "all":
        raise ValueError("--activation_checkpointing all is not offered for the VQ-VAE: recomputing a residual "
                         "block would run its BatchNorms twice (their running statistics would change); use "
                         "attention or block indices (their axial attention is recomputed)")
    blocks = [m for m in model.modules() if isinstance(m, AttentionResidualBlock)]
    chosen = _select(blocks, spec, "attention residual blocks (encoder then decoder, 2 x --n_res_layers)")
    for i in chosen:
        axial = [m for m in blocks[i].modules() if isinstance(m, AxialBlock)]
        for m in axial:
            checkpoint_module(m)
    return f"activation checkpointing: the axial attention of VQ-VAE residual blocks {chosen}"


# ----------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------
def ddp_kwargs(device: torch.device, bucket_mb: Optional[float] = None, compiled: bool = False) -> Dict[str, Any]:
    """DistributedDataParallel settings: gradients all-reduced bucket by bucket while backward runs
    (``bucket_cap_mb``; None keeps torch's 25 MiB with a small first bucket), ``static_graph`` (the
    same parameters take part in every step, which lets DDP order the buckets by when their
    gradients become ready, from the second step on) and ``gradient_as_bucket_view`` (gradients
    live in the buckets: no copy, less memory).

    Raises ValueError for ``bucket_mb <= 0``, and for ``bucket_mb`` under the 1 MiB first bucket when
    ``compiled`` (torch.compile's DDP graph splitter requires buckets at least that large)."""
    if bucket_mb is not None:
        if not bucket_mb > 0:
            raise ValueError(f"--ddp_bucket_mb must be > 0, got {bucket_mb}")
        if compiled and bucket_mb < FIRST_BUCKET_MB:
            raise ValueError(f"--ddp_bucket_mb must be >= {FIRST_BUCKET_MB:g} with --compile (torch.compile splits "
                             f"the graph at DDP buckets and needs them at least as large as the first one), "
                             f"got {bucket_mb}")
    kw: Dict[str, Any] = dict(device_ids=[device.index] if device.type == "cuda" else None,
                              gradient_as_bucket_view=True, static_graph=True)
    if bucket_mb is not None:
        kw["bucket_cap_mb"] = float(bucket_mb)
    return kw
