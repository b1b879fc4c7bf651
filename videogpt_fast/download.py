"""The original's module path ``videogpt.download``: ``download``, ``load_vqvae``, ``load_videogpt``,
``load_i3d_pretrained`` (and the Google Drive id tables ``_VQVAE``, ``_VIDEOGPT``,
``_I3D_PRETRAINED_ID``). The code lives in :mod:`videogpt_fast.checkpoint` (``loading``, ``pretrained``) and
:mod:`videogpt_fast.fvd.fvd`; nothing is ever downloaded: a missing file is a FileNotFoundError that
names where to put it and the ``gdown`` command that fetches it.
"""
from .checkpoint.loading import load_videogpt, load_vqvae
from .checkpoint.pretrained import PRETRAINED_I3D, PRETRAINED_VIDEOGPT, PRETRAINED_VQVAE, download
from .fvd.fvd import I3D_FILENAME, load_i3d_pretrained
from .gpt import VideoGPT
from .vqvae import VQVAE

__all__ = ["download", "load_vqvae", "load_videogpt", "load_i3d_pretrained", "VQVAE", "VideoGPT"]

_VQVAE = {name: entry[0] for name, entry in PRETRAINED_VQVAE.items()}
_VIDEOGPT = {name: entry[0] for name, entry in PRETRAINED_VIDEOGPT.items()}
_I3D_PRETRAINED_ID = PRETRAINED_I3D[I3D_FILENAME][0]
