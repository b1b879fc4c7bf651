"""Frechet Video Distance: I3D preprocessing, logits, Frechet distance and pretrained loading.

Same numbers as the original ``videogpt/fvd/fvd.py``, ``videogpt.download.load_i3d_pretrained``
and ``scripts/compute_fvd.py``. Differences: ``get_fvd_logits`` moves each uint8 batch to the device
before preprocessing it (a quarter of the transfer, and no 224x224 float copy of the whole set in
host memory) and takes any batch count; ``frechet_distance`` does not centre its inputs in place;
the I3D weights are never downloaded and load with ``weights_only=True``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint.errors import CheckpointError
from ..checkpoint.pretrained import PRETRAINED_I3D, cache_dirs, download
from ..checkpoint.reading import safe_load
from ..data.preprocess import resize_crop_frames
from .i3d import InceptionI3d

__all__ = ["I3D_FILENAME", "preprocess", "get_fvd_logits", "get_logits", "frechet_distance",
           "trace_sqrt_product", "cov", "load_i3d_pretrained", "compute_fvd", "i3d_search_dirs"]

I3D_FILENAME = "i3d_pretrained_400.pt"
_I3D_PRETRAINED_ID = PRETRAINED_I3D[I3D_FILENAME][0]  # Google Drive id of the original's file

VideoArray = Union[np.ndarray, torch.Tensor]
Device = Union[str, torch.device]


def _as_uint8_videos(videos: VideoArray) -> torch.Tensor:
    """Validate (B, T, H, W, C) uint8 videos (numpy or torch) and return them as a tensor."""
    if isinstance(videos, np.ndarray):
        videos = torch.from_numpy(videos)
    if not isinstance(videos, torch.Tensor):
        raise TypeError(f"videos must be a numpy array or a torch tensor, got {type(videos).__name__}")
    if videos.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 in {{0, ..., 255}}, got dtype {videos.dtype}")
    if videos.dim() != 5:
        raise ValueError(f"videos must have shape (B, T, H, W, C), got {tuple(videos.shape)}")
    return videos


def preprocess(videos: VideoArray, target_resolution: int = 224) -> torch.Tensor:
    """uint8 (B, T, H, W, C) videos -> float (B, C, T, R, R) in [-1, 1] for I3D, R=target_resolution.

    Per frame, as the original (``videogpt.data.preprocess`` then ``* 2``): the training preprocessing's
    :func:`~videogpt_fast.data.preprocess.resize_crop_frames` (scale to [0, 1], bilinear resize of the
    shorter side to R, the longer to ``ceil(side * R / shorter)``, centre-crop R x R), subtract 0.5,
    multiply by 2. The whole batch is resized in one call; the result stays on the input's device.
    """
    videos = _as_uint8_videos(videos)
    b, t, h, w, c = videos.shape
    if target_resolution < 1:
        raise ValueError(f"target_resolution must be >= 1, got {target_resolution}")
    x = resize_crop_frames(videos.reshape(b * t, h, w, c), target_resolution)
    x = x.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4).contiguous()  # B C T H W
    x -= 0.5
    return x * 2  # [-0.5, 0.5] -> [-1, 1]


def get_logits(i3d: nn.Module, videos: torch.Tensor, device: Device, bs: int = 10) -> torch.Tensor:
    """I3D logits of already preprocessed float videos (B, C, T, H, W), ``bs`` videos at a time."""
    if bs < 1:
        raise ValueError(f"bs must be >= 1, got {bs}")
    with torch.no_grad():
        return torch.cat([i3d(videos[i:i + bs].to(device)) for i in range(0, videos.shape[0], bs)], dim=0)


def get_fvd_logits(videos: VideoArray, i3d: nn.Module, device: Device, bs: int = 10) -> torch.Tensor:
    """I3D logits (B, 400) of uint8 (B, T, H, W, C) videos, ``bs`` videos per forward pass.

    Each uint8 batch is moved to ``device`` and preprocessed there (``preprocess``), under no_grad.
    """
    videos = _as_uint8_videos(videos)
    if bs < 1:
        raise ValueError(f"bs must be >= 1, got {bs}")
    if videos.shape[0] == 0:
        raise ValueError("videos must hold at least one video, got batch size 0")
    logits: List[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, videos.shape[0], bs):
            logits.append(i3d(preprocess(videos[i:i + bs].to(device))))
    return torch.cat(logits, dim=0)


# https://github.com/tensorflow/gan/blob/de4b8da3853058ea380a6152bd3bd454013bf619/tensorflow_gan/python/eval/classifier_metrics.py#L161
def _symmetric_matrix_square_root(mat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Square root of a symmetric PSD matrix through its SVD (singular values < eps kept as is)."""
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    si = torch.where(s < eps, s, torch.sqrt(s))
    # (u * si) == u @ diag(si) exactly; made row-major like the matmul result so the product with vh
    # runs the same GEMM as the original (bit-identical on CPU).
    return torch.matmul((u * si).contiguous(), vh)


# https://github.com/tensorflow/gan/blob/de4b8da3853058ea380a6152bd3bd454013bf619/tensorflow_gan/python/eval/classifier_metrics.py#L400
def trace_sqrt_product(sigma: torch.Tensor, sigma_v: torch.Tensor) -> torch.Tensor:
    """trace(sqrt(sigma @ sigma_v)), computed as trace(sqrt(sqrt(sigma) @ sigma_v @ sqrt(sigma)))."""
    sqrt_sigma = _symmetric_matrix_square_root(sigma)
    sqrt_a_sigmav_a = torch.matmul(sqrt_sigma, torch.matmul(sigma_v, sqrt_sigma))
    return torch.trace(_symmetric_matrix_square_root(sqrt_a_sigmav_a))


def cov(m: torch.Tensor, rowvar: bool = False) -> torch.Tensor:
    """Unbiased covariance matrix; rows are observations unless ``rowvar``. Does not modify ``m``."""
    if m.dim() > 2:
        raise ValueError(f"cov: m must have at most 2 dimensions, got shape {tuple(m.shape)}")
    if m.dim() < 2:
        m = m.view(1, -1)
    if not rowvar and m.size(0) != 1:
        m = m.t()
    if m.size(1) < 2:
        raise ValueError(f"cov: needs at least 2 observations, got {m.size(1)}")
    fact = 1.0 / (m.size(1) - 1)
    m = m - torch.mean(m, dim=1, keepdim=True)
    return fact * m.matmul(m.t()).squeeze()


def frechet_distance(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Frechet distance between Gaussians fitted to the rows of ``x1`` and ``x2`` (0-d tensor).

    ``||mu1 - mu2||^2 + tr(S1 + S2) - 2 tr(sqrt(S1 S2))`` in the inputs' dtype, as the original.
    Inputs are flattened from dim 1 and are not modified.
    """
    if x1.dim() < 2 or x2.dim() < 2:
        raise ValueError(f"frechet_distance: inputs must be (N, features...), got shapes {tuple(x1.shape)} "
                         f"and {tuple(x2.shape)}")
    if not (x1.is_floating_point() and x2.is_floating_point()):
        raise ValueError(f"frechet_distance: inputs must be floating point, got {x1.dtype} and {x2.dtype}")
    x1 = x1.flatten(start_dim=1)
    x2 = x2.flatten(start_dim=1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ: {x1.shape[1]} vs {x2.shape[1]}")
    if x1.shape[0] < 2 or x2.shape[0] < 2:
        raise ValueError(f"frechet_distance: needs at least 2 samples per set, got {x1.shape[0]} and {x2.shape[0]}")
    m, m_w = x1.mean(dim=0), x2.mean(dim=0)
    sigma, sigma_w = cov(x1, rowvar=False), cov(x2, rowvar=False)
    sqrt_trace_component = trace_sqrt_product(sigma, sigma_w)
    trace = torch.trace(sigma + sigma_w) - 2.0 * sqrt_trace_component
    mean = torch.sum((m - m_w) ** 2)
    return trace + mean


def i3d_search_dirs() -> List[Path]:
    """Folders searched for ``i3d_pretrained_400.pt``: ``$VIDEOGPT_FAST_HOME`` (default
    ``~/.cache/videogpt_fast``), then the original's ``~/.cache/videogpt``."""
    return cache_dirs()


def _resolve_i3d_path(path: Optional[Union[str, os.PathLike]],
                      root: Optional[Union[str, os.PathLike]] = None) -> Path:
    if path is None:  # root, else i3d_search_dirs(); the error names the file, the folder and a gdown command
        return Path(download(_I3D_PRETRAINED_ID, I3D_FILENAME, root))
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / I3D_FILENAME
    if not p.is_file():
        raise FileNotFoundError(
            f"I3D weights file {p} not found. Nothing is downloaded: put the original VideoGPT "
            f"{I3D_FILENAME} (Google Drive id {_I3D_PRETRAINED_ID}) there, or in $VIDEOGPT_FAST_HOME "
            f"(default ~/.cache/videogpt_fast) and pass path=None.")
    return p


def _as_device(x) -> Optional[torch.device]:
    """``x`` as a device when it is one (a torch.device, a CUDA index, or a device string such as
    "cuda:0" that is not an existing path), else None."""
    if isinstance(x, torch.device):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return torch.device(x)
    if isinstance(x, str) and not os.path.exists(x):
        try:
            return torch.device(x)
        except (RuntimeError, ValueError):
            return None
    return None


def load_i3d_pretrained(path: Optional[Union[str, os.PathLike, torch.device]] = None,
                        device: Device = "cpu", root: Optional[Union[str, os.PathLike]] = None) -> InceptionI3d:
    """The pretrained Kinetics-400 I3D in eval mode, loaded from a local file (never downloaded),
    as the original ``videogpt.download.load_i3d_pretrained(device)``.

    ``path``: the ``i3d_pretrained_400.pt`` file or a folder holding it; None looks for that file in
    ``root``, or in ``i3d_search_dirs()`` when ``root`` is None. A device as first argument
    (``torch.device``, CUDA index, or a device string that is not an existing path) is taken as the
    device with ``path=None``, so the original's call ``load_i3d_pretrained(device)`` keeps working.
    Raises FileNotFoundError naming the file, where to put it and a ``gdown`` command.
    """
    as_device = _as_device(path)
    if as_device is not None:
        path, device = None, as_device
    file = _resolve_i3d_path(path, root)
    state_dict = safe_load(file, map_location=device)  # one-line CheckpointError for a bad file
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{file} must hold an I3D state dict, got {type(state_dict).__name__}")
    i3d = InceptionI3d(400, in_channels=3).to(device)
    missing = [k for k in i3d.state_dict() if k not in state_dict]
    unexpected = [k for k in state_dict if k not in i3d.state_dict()]
    if missing or unexpected:  # e.g. a VQ-VAE or prior checkpoint given as --i3d
        parts = [f"{len(keys)} key(s) {what} (first: {keys[0]})" for keys, what in
                 ((missing, "missing"), (unexpected, "unexpected")) if keys]
        raise CheckpointError(f"{file} is not the I3D network's state dict (i3d_pretrained_400.pt): "
                              f"{', '.join(parts)}")
    try:
        i3d.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # shapes differ
        raise CheckpointError(f"{file} does not fit the I3D network: "
                              f"{' '.join(str(e).split())[:300]}") from None
    i3d.eval()
    return i3d


def compute_fvd(real_videos: VideoArray, fake_videos: VideoArray, i3d: nn.Module, device: Device,
                bs: int = 10) -> float:
    """FVD between two sets of uint8 (B, T, H, W, C) videos, as ``scripts/compute_fvd.py``:
    ``frechet_distance(fake_logits, real_logits)`` of their I3D logits (16 frames each in the paper)."""
    fake = get_fvd_logits(fake_videos, i3d=i3d, device=device, bs=bs)
    real = get_fvd_logits(real_videos, i3d=i3d, device=device, bs=bs)
    return frechet_distance(fake, real).item()
