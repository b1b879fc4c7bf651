"""Loading models from checkpoints, as the original ``videogpt.download.load_vqvae`` / ``load_videogpt``.

The file is read with :func:`~videogpt_fast.checkpoint.reading.safe_load`; its ``args`` are checked
against its weights before the real model is built (:func:`check_size`, then :func:`check_fits` on
the meta device); a prior whose stored VQ-VAE path is stale gets its VQ-VAE rebuilt from its own
weights (:func:`infer_vqvae_args`).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Callable, Dict, Optional, Union

import torch

from .errors import CheckpointError, CheckpointMismatchError, short_reason
from .lightning import checkpoint_kind, describe_kind, split_checkpoint
from .pretrained import PRETRAINED_VIDEOGPT, PRETRAINED_VQVAE, resolve_name_or_path, resolve_pretrained
from .reading import safe_load

__all__ = ["load_vqvae", "load_videogpt", "infer_vqvae_args", "check_fits", "check_size"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def check_fits(build: Callable[[], torch.nn.Module], state_dict: Dict[str, Any], path: PathLike) -> None:
    """Build the model ``build()`` describes on the meta device (no memory is allocated, whatever its
    size) and compare its state-dict keys and shapes with ``state_dict`` -- before the real model is
    built, so that a small file whose ``args`` say ``n_codes=2**25`` fails at once.

    Raises:
        CheckpointMismatchError: keys are missing or unexpected, a shape differs, a floating-point
            weight is stored as integers, a weight holds NaN, or ``build`` fails (the args do not
            describe a model); the message names ``path`` and the first differences.
    """
    try:
        with torch.device("meta"):
            want = build().state_dict()
    except Exception as e:  # invalid hyper-parameters: the constructor's own message
        raise CheckpointMismatchError(f"{path}: its hyper-parameters do not describe a model that can be "
                                      f"built ({type(e).__name__}: {short_reason(e)})") from None
    problems = [f"missing {k}" for k in want if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in want]
    problems += [f"{k} is {tuple(getattr(state_dict[k], 'shape', ()))} in the file but "
                 f"{tuple(v.shape)} by its args" for k, v in want.items()
                 if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    problems += [f"{k} is {state_dict[k].dtype} in the file but {v.dtype} in the model" for k, v in want.items()
                 if isinstance(state_dict.get(k), torch.Tensor) and v.is_floating_point()
                 and not state_dict[k].is_floating_point()]
    problems += [f"{k} holds NaN (a diverged training?)" for k, v in state_dict.items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and bool(torch.isnan(v).any())]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointMismatchError(f"{path}: its hyper-parameters (args) do not match its weights: {shown}")


def check_size(build: Callable[[argparse.Namespace], torch.nn.Module], args: argparse.Namespace, layers_attr: str,
               state_dict: Dict[str, Any], path: PathLike) -> None:
    """CheckpointMismatchError when ``args`` (with more than 2 repeated layers ``layers_attr``) describe
    a model with more values than ``state_dict`` holds, found without building it (see
    :func:`videogpt_fast.model_size.estimated_params`): so
    ``n_res_layers=10**6`` in a small file fails at once instead of building a million layers. Args that
    cannot build a model are left to :func:`check_fits`, which names the error."""
    from ..model_size import estimated_params
    layers = getattr(args, layers_attr, None)
    if not isinstance(layers, int) or layers <= 2:  # check_fits builds it quickly, and names the differences
        return
    try:
        want = estimated_params(build, args, layers_attr)
    except Exception:  # invalid hyper-parameters: check_fits reports them
        return
    have = sum(int(v.numel()) for v in state_dict.values() if isinstance(v, torch.Tensor))
    if want > have:
        raise CheckpointMismatchError(f"{path}: its hyper-parameters (args) describe a model of {want:,} values "
                                      f"({layers_attr}={layers}), but its weights hold {have:,}")


def _place(model: torch.nn.Module, device) -> torch.nn.Module:
    if device is not None:
        model = model.to(device)
    return model.eval()


_KINDS = {"vqvae": ("a VQ-VAE", "load_vqvae", PRETRAINED_VQVAE),
          "videogpt": ("a VideoGPT prior", "load_videogpt", PRETRAINED_VIDEOGPT)}


def _read(name_or_path: PathLike, want: str, root: Optional[PathLike] = None):
    """``(path, args, state_dict)`` of a ``want`` ("vqvae" or "videogpt") checkpoint, safely
    loaded; a checkpoint of the other kind is a clear error naming the right loader."""
    what, _, table = _KINDS[want]
    path = resolve_name_or_path(name_or_path, table, root)
    args, state_dict = split_checkpoint(safe_load(path), path)
    kind = checkpoint_kind(state_dict)
    if kind != want:
        raise CheckpointError(f"{path} is {describe_kind(kind)}, not {what}"
                         + (f"; load it with {_KINDS[kind][1]}" if kind in _KINDS else ""))
    return path, args, state_dict


def load_vqvae(model_name: PathLike, device: Optional[Union[str, torch.device]] = None,
               root: Optional[PathLike] = None):
    """Load a VQ-VAE in eval mode, as the original ``videogpt.download.load_vqvae``.

    ``model_name``: a pretrained name (looked up in ``root``, or in :func:`cache_dirs` when None;
    never downloaded) or the path of an original (Lightning) checkpoint. ``device`` (positional as
    in the original): where to move the model; None leaves it on the CPU. Raises FileNotFoundError
    (see :func:`download`) or :class:`UnsafeCheckpointError`.
    """
    from ..vqvae import VQVAE

    path, args, state_dict = _read(model_name, "vqvae", root)
    check_size(VQVAE, args, "n_res_layers", state_dict, path)
    check_fits(lambda: VQVAE(args), state_dict, path)
    model = VQVAE(args)
    model.load_state_dict(state_dict, strict=True)
    return _place(model, device)


def infer_vqvae_args(gpt_args: argparse.Namespace, state_dict: Dict[str, torch.Tensor],
                     path: Optional[PathLike] = None) -> argparse.Namespace:
    """Rebuild the VQ-VAE hyper-parameters from the ``vqvae.*`` weights a prior checkpoint holds
    and the prior's data arguments (``resolution``, ``sequence_length``; ``vqvae_temporal_padding``,
    which training stores for a VQ-VAE that does not pad time with zeros). Raises
    :class:`CheckpointMismatchError` (naming ``path`` when given) when the weights lack them."""
    where = f"{path}: " if path is not None else ""
    sd = {k[len("vqvae."):]: v for k, v in state_dict.items() if k.startswith("vqvae.")}
    if "codebook.embeddings" not in sd:
        raise CheckpointMismatchError(f"{where}the prior checkpoint holds no VQ-VAE weights (vqvae.*) to rebuild "
                                      "it from")
    missing = [k for k in ("vqvae.encoder.convs.0.conv.weight", *(f"attn_stack.pos_embd.emb.d_{i}" for i in range(3)))
               if k not in state_dict] + [a for a in ("sequence_length", "resolution") if not hasattr(gpt_args, a)]
    if missing or sd["codebook.embeddings"].dim() != 2:
        raise CheckpointMismatchError(f"{where}the prior checkpoint cannot describe its VQ-VAE: it lacks {missing} "
                                      f"or its codebook is not 2-D")
    from ..vqvae import TEMPORAL_PADDINGS
    padding = _recorded_padding(gpt_args)
    if not isinstance(padding, str) or padding not in TEMPORAL_PADDINGS:
        raise CheckpointMismatchError(f"{where}the prior checkpoint's vqvae_temporal_padding must be one of "
                                      f"{TEMPORAL_PADDINGS}, got {padding!r}")
    n_codes, embedding_dim = sd["codebook.embeddings"].shape
    n_res = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.res_stack\.(\d+)\.block\.", k))})
    latent = [int(state_dict[f"attn_stack.pos_embd.emb.d_{i}"].shape[0]) for i in range(3)]
    sizes = (gpt_args.sequence_length, gpt_args.resolution, gpt_args.resolution)
    downsample = [s // l for s, l in zip(sizes, latent)]
    return argparse.Namespace(embedding_dim=int(embedding_dim), n_codes=int(n_codes),
                              n_hiddens=int(sd["encoder.convs.0.conv.weight"].shape[0]), n_res_layers=n_res,
                              downsample=downsample, sequence_length=gpt_args.sequence_length,
                              resolution=gpt_args.resolution,
                              temporal_padding=padding)


def _recorded_padding(gpt_args: argparse.Namespace) -> Any:
    """The VQ-VAE temporal padding a prior's args record; absent: the original's zeros."""
    padding = getattr(gpt_args, "vqvae_temporal_padding", None)
    return "zeros" if padding is None else padding


def load_videogpt(model_name: PathLike, device: Optional[Union[str, torch.device]] = None,
                  root: Optional[PathLike] = None, vqvae: Any = None):
    """Load a VideoGPT prior in eval mode, as the original ``videogpt.download.load_videogpt``.

    ``model_name``, ``device`` (positional as in the original) and ``root`` as :func:`load_vqvae`.
    ``vqvae`` (a VQVAE module, a path or a pretrained name) overrides the VQ-VAE path stored in the
    checkpoint, which is usually stale. Without it, the stored path is used when it exists;
    otherwise the VQ-VAE is rebuilt from the weights the prior checkpoint itself holds (logged).
    """
    from ..gpt import VideoGPT
    from ..vqvae import VQVAE

    path, args, state_dict = _read(model_name, "videogpt", root)
    if vqvae is None:
        stored = getattr(args, "vqvae", None)
        if stored and (os.path.isfile(str(stored)) or _cached(str(stored), root)):
            vqvae = load_vqvae(stored, root=root)
        else:
            log.info("VQ-VAE %r of %s not found: rebuilding it from the weights in the checkpoint", stored, path)
            vqvae = VQVAE(infer_vqvae_args(args, state_dict, path))
    elif not isinstance(vqvae, torch.nn.Module):
        vqvae = load_vqvae(vqvae, root=root)
    recorded = _recorded_padding(args)
    given = getattr(vqvae, "temporal_padding", "zeros")
    if given != recorded:  # its codes would mean something else to the prior
        raise CheckpointMismatchError(f"{path}: the prior was trained on a VQ-VAE with temporal_padding={recorded!r}, "
                                      f"the VQ-VAE given has {given!r}")
    check_size(lambda a: VideoGPT(a, vqvae=vqvae), args, "layers", state_dict, path)
    check_fits(lambda: VideoGPT(args, vqvae=vqvae), state_dict, path)
    model = VideoGPT(args, vqvae=vqvae)
    model.load_state_dict(state_dict, strict=True)
    return _place(model, device)


def _cached(name: str, root: Optional[PathLike] = None) -> bool:
    if name not in PRETRAINED_VQVAE:
        return False
    try:
        resolve_pretrained(name, PRETRAINED_VQVAE, root)
        return True
    except FileNotFoundError:
        return False
