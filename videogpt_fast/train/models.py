"""The models a training run builds: a fresh VQ-VAE or prior for the flags, the hyper-parameters
stored with it, and :class:`LossModule`, the ``batch -> (loss, metrics)`` module DDP wraps (each
model computes its own loss: ``VQVAE.compute_loss``, ``VideoGPT.compute_loss``)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint import infer_vqvae_args, load_vqvae
from ..model_size import check_model_memory, estimated_params


def stage_loss(model: nn.Module, stage: str, batch: Dict[str, torch.Tensor]
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``(loss, metrics)`` of one batch (``video`` (B, 3, T, H, W) in [-0.5, 0.5], ``label``): the
    VQ-VAE's loss and its recon_loss / commitment_loss / perplexity, or the prior's cross-entropy
    (no metrics). What training and validation both run."""
    if stage == "vqvae":
        return model.compute_loss(batch["video"])
    return model.compute_loss(batch), {}


class LossModule(nn.Module):
    """``batch -> (loss, metrics)`` for one stage (see :func:`stage_loss`); the module DDP wraps (so
    gradients sync)."""

    def __init__(self, model: nn.Module, stage: str):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return stage_loss(self.model, self.stage, batch)


def check_latent_fit(vqvae: nn.Module, args: argparse.Namespace) -> None:
    """Raise ValueError when the VQ-VAE's latent grid does not fit the prior's
    ``--sequence_length`` x ``--resolution``^2 videos."""
    ds = tuple(int(d) for d in vqvae.args.downsample)
    size = (args.sequence_length, args.resolution, args.resolution)
    if any(s % d for s, d in zip(size, ds)):
        raise ValueError(f"the VQ-VAE {args.vqvae!r} downsamples (T, H, W) by {ds}, which does not divide the "
                         f"requested videos (sequence_length, resolution, resolution) = {size}")
    want = tuple(s // d for s, d in zip(size, ds))
    have = tuple(int(s) for s in vqvae.latent_shape)
    if want != have:
        raise ValueError(
            f"the VQ-VAE {args.vqvae!r} was trained on (T, H, W) = ({vqvae.args.sequence_length}, "
            f"{vqvae.args.resolution}, {vqvae.args.resolution}) with latent shape {have}, but the prior asks for "
            f"{size}, whose latent shape is {want}: set --sequence_length {vqvae.args.sequence_length} "
            f"--resolution {vqvae.args.resolution} or use a matching VQ-VAE")
    if args.n_cond_frames >= args.sequence_length:
        raise ValueError(f"--n_cond_frames {args.n_cond_frames} must be < --sequence_length {args.sequence_length}")


def model_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The hyper-parameters stored with the model (the original saved the whole parsed namespace);
    only plain values, so ``torch.load(weights_only=True)`` reads them."""
    keep = {}
    for k, v in vars(args).items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and all(
                isinstance(x, (bool, int, float, str)) for x in v)):
            keep[k] = v
    return argparse.Namespace(**keep)


def build_model(args: argparse.Namespace, resume_ckpt: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A fresh VQVAE / VideoGPT for the completed ``args`` (see ``complete_args``): the prior's
    VQ-VAE comes from ``--vqvae``, or is rebuilt from the checkpoint's own ``vqvae.*`` weights when
    resuming. ValueError when the VQ-VAE does not fit the prior's videos or the model would not fit
    in memory. Does not change ``args``."""
    from ..gpt import VideoGPT
    from ..vqvae import VQVAE

    if args.stage == "vqvae":
        return VQVAE(model_namespace(args))
    if resume_ckpt is not None:
        vqvae = VQVAE(infer_vqvae_args(args, resume_ckpt["state_dict"]))
    else:
        vqvae = load_vqvae(args.vqvae)
    check_latent_fit(vqvae, args)
    n_params = estimated_params(lambda a: VideoGPT(model_namespace(a), vqvae=vqvae), args, "layers")
    check_model_memory(n_params, "the prior", "--hidden_dim or --layers", args.device)
    hparams = model_namespace(args)
    if vqvae.temporal_padding != "zeros":  # what its weights cannot tell (infer_vqvae_args reads it back)
        hparams.vqvae_temporal_padding = vqvae.temporal_padding
    return VideoGPT(hparams, vqvae=vqvae)
