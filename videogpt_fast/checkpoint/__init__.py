"""Checkpoints in the original (PyTorch-Lightning 1.x) layout: safe loading, atomic saving, pretrained names.

One module per job; import the public names from here (``videogpt_fast.checkpoint.load_vqvae``, ...):

- :mod:`.errors`: :class:`CheckpointError` and its kinds (unsafe, corrupt, mismatched, write failures);
- :mod:`.reading`: :func:`safe_load`, ``torch.load(weights_only=True)`` with an allow-list;
- :mod:`.writing`: :func:`atomic_write`, :func:`atomic_save`, :func:`link_or_copy`, :func:`is_temporary`;
- :mod:`.pretrained`: the original's pretrained names, :func:`cache_dirs`, :func:`download` (never downloads);
- :mod:`.lightning`: the Lightning 1.3 layout (:func:`save_checkpoint`, :func:`split_checkpoint`, ...);
- :mod:`.loading`: :func:`load_vqvae`, :func:`load_videogpt`, and the checks of args against weights.
"""
from .errors import (CheckpointError, CheckpointMismatchError, CheckpointWriteError, CorruptCheckpointError,
                     UnsafeCheckpointError)
from .lightning import LIGHTNING_VERSION, checkpoint_kind, describe_kind, lightning_checkpoint, save_checkpoint, split_checkpoint
from .loading import check_fits, check_size, infer_vqvae_args, load_videogpt, load_vqvae
from .pretrained import (PRETRAINED_I3D, PRETRAINED_VIDEOGPT, PRETRAINED_VQVAE, cache_dirs, download,
                         resolve_name_or_path, resolve_pretrained)
from .reading import safe_load
from .writing import atomic_save, atomic_write, is_temporary, link_or_copy


__all__ = ["CheckpointError", "UnsafeCheckpointError", "CorruptCheckpointError", "CheckpointMismatchError",
           "CheckpointWriteError", "safe_load", "atomic_write", "atomic_save", "link_or_copy", "is_temporary",
           "PRETRAINED_VQVAE", "PRETRAINED_VIDEOGPT", "PRETRAINED_I3D", "cache_dirs", "download",
           "resolve_pretrained", "resolve_name_or_path", "LIGHTNING_VERSION", "lightning_checkpoint",
           "save_checkpoint", "split_checkpoint", "checkpoint_kind", "describe_kind", "load_vqvae", "load_videogpt",
           "infer_vqvae_args", "check_fits", "check_size"]
