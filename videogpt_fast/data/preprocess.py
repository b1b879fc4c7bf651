"""``preprocess``: uint8 (T, H, W, C) frames -> float (C, T, H, W) in [-0.5, 0.5].

Numerically identical to the original ``videogpt/data.py::preprocess``: the same op order
(scale to [0, 1] first, bilinear resize without antialias and ``align_corners=False`` of the
shorter side to ``resolution`` with the longer side rounded *up*, floor-centred crop, shift by 0.5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["preprocess", "resize_crop_frames", "resize_crop_geometry", "check_clip_args"]


def resize_crop_geometry(height: int, width: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ``((resized_h, resized_w), (crop_top, crop_left))`` that ``preprocess`` uses.

    The shorter side is scaled to ``resolution`` and the longer one to ``ceil(side * scale)``;
    the crop starts at ``(resized - resolution) // 2`` on each axis.
    """
    scale = resolution / min(height, width)
    if height < width:
        size = (resolution, math.ceil(width * scale))
    else:
        size = (math.ceil(height * scale), resolution)
    return size, ((size[0] - resolution) // 2, (size[1] - resolution) // 2)


def resize_crop_frames(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """The resize-and-crop step shared by :func:`preprocess` and the FVD's I3D preprocessing.

    ``frames``: (N, H, W, C) values in {0, ..., 255} (any real dtype). Returns a float32
    (N, C, resolution, resolution) view in [0, 1]: scaled to [0, 1] first, resized with bilinear
    ``F.interpolate`` (no antialias, ``align_corners=False``; channels-last memory, as the original)
    to :func:`resize_crop_geometry`'s size, then centre-cropped. Callers shift it by 0.5 (and scale).
    """
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    size, (top, left) = resize_crop_geometry(x.shape[2], x.shape[3], resolution)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[:, :, top:top + resolution, left:left + resolution]


def check_clip_args(sequence_length: int, resolution: int) -> None:
    """ValueError unless a dataset's ``sequence_length`` and ``resolution`` are positive ints."""
    if not isinstance(sequence_length, int) or sequence_length <= 0:
        raise ValueError(f"sequence_length must be a positive int, got {sequence_length!r}")
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")


def preprocess(video: torch.Tensor, resolution: int, sequence_length: int | None = None) -> torch.Tensor:
    """Resize, centre-crop and normalise a clip the way the original VideoGPT does.

    Args:
        video: (T, H, W, C) tensor of values in {0, ..., 255} (uint8 or any real dtype), any device.
        resolution: output height and width.
        sequence_length: if given, keep only the first ``sequence_length`` frames.

    Returns:
        float32 (C, T', H', W') tensor with values in [-0.5, 0.5], ``H' = W' = resolution``.
    """
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 4:
        raise ValueError(f"video must have rank 4 (T, H, W, C), got shape {tuple(video.shape)}")
    if video.shape[-1] not in (1, 3):
        raise ValueError(f"video must be channels-last (T, H, W, C) with C in (1, 3), got shape {tuple(video.shape)}")
    if video.is_complex() or video.dtype == torch.bool:
        raise ValueError(f"video must have a real numeric dtype, got {video.dtype}")
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    t, h, w, c = video.shape
    if min(t, h, w) == 0:
        raise ValueError(f"video must be non-empty in T, H and W, got shape (T, H, W, C)={(t, h, w, c)}")
    if sequence_length is not None:
        if not 0 < sequence_length <= t:
            raise ValueError(f"sequence_length must be in [1, T={t}], got {sequence_length}")
        video = video[:sequence_length]
    video = resize_crop_frames(video, resolution).permute(1, 0, 2, 3).contiguous()  # TCHW -> CTHW
    video -= 0.5
    return video
