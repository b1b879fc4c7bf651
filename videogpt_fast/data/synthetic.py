"""Synthetic videos made in memory, for the demo, tests, benchmarks and trying the trainer.

- :func:`moving_shapes` / :class:`MovingShapesDataset` / :func:`write_hdf5`: one square or disc in one
  of four colours moving at constant velocity on a black background and bouncing off the borders
  (labelled by shape kind). Everything is a deterministic function of ``seed`` and the video index.
- :func:`smooth_frames` / :func:`write_video_file`: smooth moving colour patterns (they compress well
  and survive 4:2:0 chroma) and their encoding to a video file with PyAV (imported when writing).
"""
from __future__ import annotations

import os
from typing import Dict, Union

import numpy as np
import torch
import torch.utils.data as data

from ..utils import encode_video

__all__ = ["moving_shapes", "MovingShapesDataset", "write_hdf5", "smooth_frames", "write_video_file"]

PALETTE = np.array([[240, 60, 50], [60, 210, 80], [70, 110, 250], [240, 210, 50]], dtype=np.uint8)
SHAPES = ("square", "disc")


def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions at times ``t`` of a point starting at ``p0`` with velocity ``v`` reflected in [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return np.full(t.shape, lo, dtype=np.float64)
    x = (p0 - lo + v * t) % (2 * span)
    return lo + np.where(x > span, 2 * span - x, x)


def moving_shapes(n: int, sequence_length: int = 16, resolution: int = 32, seed: int = 0,
                  return_labels: bool = False) -> Union[np.ndarray, tuple]:
    """``n`` uint8 videos (n, T, H, W, 3) of a moving shape; with ``return_labels`` also the shape
    kind of each (0: square, 1: disc) as int64 (n,)."""
    if n < 0 or sequence_length <= 0 or resolution < 8:
        raise ValueError(f"need n >= 0, sequence_length > 0 and resolution >= 8, got {n}, {sequence_length}, "
                         f"{resolution}")
    videos = np.zeros((n, sequence_length, resolution, resolution, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float64) + 0.5
    t = np.arange(sequence_length, dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        kind = int(rng.integers(len(SHAPES)))
        colour = PALETTE[rng.integers(len(PALETTE))]
        half = rng.uniform(0.15, 0.25) * resolution
        speed = rng.uniform(0.04, 0.09) * resolution
        angle = rng.uniform(0, 2 * np.pi)
        cx = _bounce(rng.uniform(half, resolution - half), speed * np.cos(angle), t, half, resolution - half)
        cy = _bounce(rng.uniform(half, resolution - half), speed * np.sin(angle), t, half, resolution - half)
        for f in range(sequence_length):
            if kind == 0:
                mask = (np.abs(xx - cx[f]) <= half) & (np.abs(yy - cy[f]) <= half)
            else:
                mask = (xx - cx[f]) ** 2 + (yy - cy[f]) ** 2 <= half ** 2
            videos[i, f][mask] = colour
        labels[i] = kind
    return (videos, labels) if return_labels else videos


class MovingShapesDataset(data.Dataset):
    """In-memory dataset of :func:`moving_shapes` videos with the items of the real datasets:
    ``dict(video=(3, T, H, W) float32 in [-0.5, 0.5], label=int)`` (label: 0 square, 1 disc)."""

    def __init__(self, n: int, sequence_length: int = 16, resolution: int = 32, seed: int = 0):
        videos, labels = moving_shapes(n, sequence_length, resolution, seed, return_labels=True)
        self.videos = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float().div_(255.0).sub_(0.5).contiguous()
        self.labels = labels.tolist()
        self.sequence_length, self.resolution = sequence_length, resolution

    @property
    def n_classes(self) -> int:
        return len(SHAPES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> Dict[str, Union[torch.Tensor, int]]:
        return {"video": self.videos[idx], "label": self.labels[idx]}


def write_hdf5(path: Union[str, os.PathLike], n_train: int = 8, n_test: int = 4, frames_per_video: int = 12,
               resolution: int = 32, seed: int = 0) -> str:
    """Write moving-shape videos as an HDF5 file in the original layout (``train_data`` (N, H, W, 3)
    uint8 frames, ``train_idx`` start frame of each video, and ``test_*``)."""
    import h5py

    with h5py.File(path, "w") as f:
        for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
            v = moving_shapes(n, frames_per_video, resolution, seed=s)
            f.create_dataset(f"{split}_data", data=v.reshape(-1, resolution, resolution, 3))
            f.create_dataset(f"{split}_idx", data=np.arange(n, dtype=np.int64) * frames_per_video)
    return str(path)


def smooth_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3) moving smooth colour patterns (compress well, survive 4:2:0 chroma)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    f = rng.uniform(0.5, 2.0, size=(3, 2)) * 2 * np.pi / max(height, width)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        for c in range(3):
            out[t, :, :, c] = np.clip(128 + 100 * np.sin(f[c, 0] * (xx + 3 * t) + f[c, 1] * (yy - 2 * t) + ph[c]), 0, 255)
    return out


def write_video_file(path: str, frames: np.ndarray, codec: str = "libx264", fps: int = 25,
                     options: dict | None = None) -> str:
    """Encode uint8 (T, H, W, 3) RGB ``frames`` to ``path`` (container from the extension) with
    :func:`videogpt_fast.utils.encode_video`; libx264 defaults to ``crf=18, preset=ultrafast``."""
    opts = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {}
    opts.update(options or {})
    return encode_video(frames, path, codec, fps, opts)
