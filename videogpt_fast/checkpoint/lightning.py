"""The original's checkpoint layout (PyTorch-Lightning 1.3): writing it, splitting it, telling its kind."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..utils import as_namespace
from .errors import CheckpointError
from .writing import atomic_save

__all__ = ["LIGHTNING_VERSION", "lightning_checkpoint", "save_checkpoint", "split_checkpoint", "checkpoint_kind"]

PathLike = Union[str, os.PathLike]
LIGHTNING_VERSION = "1.3.3"


def lightning_checkpoint(model: torch.nn.Module, *, global_step: int = 0, epoch: int = 0,
                         extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A dict in the original's Lightning 1.3 layout (``state_dict`` with the original keys,
    ``hyper_parameters['args']``, ``global_step``, ``epoch``); ``extra`` (optimiser, scheduler,
    RNG state for exact resume) goes under the key ``videogpt_fast``."""
    ckpt = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": model.state_dict(),
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "args",
        "hyper_parameters": {"args": as_namespace(model.args)},
    }
    if extra:
        ckpt["videogpt_fast"] = extra
    return ckpt


def save_checkpoint(path: PathLike, model: torch.nn.Module, *, global_step: int = 0, epoch: int = 0,
                    extra: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write ``model`` as an original-format checkpoint (see :func:`lightning_checkpoint`)."""
    return atomic_save(lightning_checkpoint(model, global_step=global_step, epoch=epoch, extra=extra), path)


def split_checkpoint(ckpt: Any, path: Path) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """``(args, state_dict)`` of a loaded checkpoint dict (``hyper_parameters['args']``, or a top-level
    ``args``). Raises :class:`CheckpointError` naming ``path`` when it is not a model checkpoint."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a model checkpoint: expected a dict with 'state_dict' "
                         f"(and 'hyper_parameters' with 'args'), got {type(ckpt).__name__}")
    hp = ckpt.get("hyper_parameters") or {}
    args = hp.get("args", ckpt.get("args"))
    if args is None:
        raise CheckpointError(f"{path} has no hyper_parameters['args']: cannot rebuild the model")
    if not isinstance(args, (argparse.Namespace, dict)) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path} is not a model checkpoint: its args are a {type(args).__name__} and its "
                              f"state_dict a {type(ckpt['state_dict']).__name__}")
    return as_namespace(args), ckpt["state_dict"]


def describe_kind(kind: str) -> str:
    """``kind`` of :func:`checkpoint_kind` as an error message names it: 'a vqvae checkpoint', 'a videogpt
    checkpoint', 'a checkpoint of neither model (unknown state-dict keys)'."""
    return "a checkpoint of neither model (unknown state-dict keys)" if kind == "unknown" else f"a {kind} checkpoint"


def checkpoint_kind(state_dict: Dict[str, torch.Tensor]) -> str:
    """'videogpt' (a prior), 'vqvae', or 'unknown', from the state-dict keys."""
    if any(k.startswith("attn_stack.") for k in state_dict):
        return "videogpt"
    if "codebook.embeddings" in state_dict and any(k.startswith("encoder.") for k in state_dict):
        return "vqvae"
    return "unknown"
