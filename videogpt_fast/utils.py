"""Tensor helpers with the original's names and semantics, video-grid writing, and the one
conversion of hyper-parameters to an ``argparse.Namespace``."""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np
import torch


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, else all cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def as_namespace(args: Any, *, copy: bool = False, owner: str = "model") -> argparse.Namespace:
    """Hyper-parameters as an ``argparse.Namespace``, the original models' constructor argument.

    ``args``: a Namespace (returned as is, or as a shallow copy when ``copy``; a model that fills in
    defaults copies so that the caller's object is not changed) or a mapping (a dict, Lightning's
    ``AttributeDict``), whose items become attributes. Raises TypeError for anything else, naming
    ``owner`` (e.g. "VideoGPT") and the type given.
    """
    if isinstance(args, argparse.Namespace):
        return argparse.Namespace(**vars(args)) if copy else args
    if isinstance(args, Mapping):
        return argparse.Namespace(**dict(args))
    raise TypeError(f"{owner} args must be an argparse.Namespace or a dict, got {type(args).__name__}")


def shift_dim(x: torch.Tensor, src_dim: int = -1, dest_dim: int = -1,
              make_contiguous: bool = True) -> torch.Tensor:
    """Move dimension ``src_dim`` to ``dest_dim``: ``shift_dim(x, 1, -1)`` maps BCTHW to BTHWC."""
    n_dims = x.dim()
    if src_dim < 0:
        src_dim += n_dims
    if dest_dim < 0:
        dest_dim += n_dims
    if not (0 <= src_dim < n_dims and 0 <= dest_dim < n_dims):
        raise ValueError(f"shift_dim: dims ({src_dim}, {dest_dim}) out of range for a {n_dims}-d tensor")
    x = torch.movedim(x, src_dim, dest_dim)
    return x.contiguous() if make_contiguous else x


def view_range(x: torch.Tensor, i: int, j: Optional[int], shape: Sequence[int]) -> torch.Tensor:
    """Reshape dims ``i`` (inclusive) to ``j`` (exclusive, None = end) of ``x`` to ``shape``."""
    shape = tuple(shape)
    n_dims = x.dim()
    if i < 0:
        i += n_dims
    if j is None:
        j = n_dims
    elif j < 0:
        j += n_dims
    if not 0 <= i < j <= n_dims:
        raise ValueError(f"view_range: bad range [{i}, {j}) for a {n_dims}-d tensor")
    return x.view(x.shape[:i] + shape + x.shape[j:])


def tensor_slice(x: torch.Tensor, begin: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``x[begin:begin+size]`` per dimension; a size of -1 takes the rest of that dimension."""
    if any(b < 0 for b in begin):
        raise ValueError(f"tensor_slice: negative begin {list(begin)}")
    size = [l - b if s == -1 else s for s, b, l in zip(size, begin, x.shape)]
    if any(s < 0 for s in size):
        raise ValueError(f"tensor_slice: negative size {size}")
    return x[tuple(slice(b, b + s) for b, s in zip(begin, size))]


def make_video_grid(video: torch.Tensor, nrow: Optional[int] = None, padding: int = 1) -> np.ndarray:
    """Tile a batch of videos (B, C, T, H, W) in [0, 1] into one uint8 (T, H', W', C) grid,
    laid out exactly as the original ``save_video_grid``."""
    if video.dim() != 5:
        raise ValueError(f"expected a video batch (B, C, T, H, W), got shape {tuple(video.shape)}")
    b, c, t, h, w = video.shape
    frames = (video.permute(0, 2, 3, 4, 1).detach().cpu().float().numpy() * 255).astype("uint8")
    if nrow is None:
        nrow = math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = np.zeros((t, (padding + h) * nrow + padding, (padding + w) * ncol + padding, c), dtype="uint8")
    for i in range(b):
        r, col = divmod(i, ncol)
        top, left = (padding + h) * r, (padding + w) * col
        grid[:, top:top + h, left:left + w] = frames[i]
    return grid


def encode_video(frames: np.ndarray, fname: str, codec: str, fps: int, options: Optional[dict] = None) -> str:
    """Encode uint8 RGB frames (T, H, W, 3) to ``fname`` with PyAV (imported here): ``codec`` (e.g.
    "libx264", "libvpx-vp9", "mpeg4") in yuv420p at ``fps`` frames per second, with the codec's
    ``options`` (e.g. ``{"crf": "18"}``); the container follows the extension. Sizes must suit the
    codec (H.264 in 4:2:0 needs even ones). Returns ``fname``; ValueError for other frames."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with av.open(fname, mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=dict(options or {}))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return fname


def write_video(frames: np.ndarray, fname: str, fps: int = 5) -> str:
    """Write uint8 frames (T, H, W, C with C in {1, 3}) to ``.mp4`` (H.264 via PyAV) or ``.gif``
    (Pillow). Returns ``fname``."""
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected frames (T, H, W, 1|3), got shape {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    os.makedirs(os.path.dirname(os.path.abspath(fname)), exist_ok=True)
    ext = os.path.splitext(fname)[1].lower()
    if ext == ".gif":
        from PIL import Image
        images = [Image.fromarray(f) for f in frames]
        images[0].save(fname, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif ext in (".mp4", ".mov", ".mkv", ".avi"):
        # H.264 with yuv420p needs even sizes: pad by one black row/column where odd.
        t, h, w, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        encode_video(frames, fname, "libx264" if ext != ".avi" else "mpeg4", fps,
                     {"crf": "18"} if ext != ".avi" else {})
    else:
        raise ValueError(f"unsupported video extension {ext!r}: use .mp4 or .gif")
    return fname


def save_video_grid(video: torch.Tensor, fname: str, nrow: Optional[int] = None, fps: int = 5) -> str:
    """Save a batch of videos (B, C, T, H, W) in [0, 1] as one grid video (MP4 or GIF), as the
    original does (1-pixel padding, 5 fps by default)."""
    path = write_video(make_video_grid(video, nrow), fname, fps=fps)
    print("saved videos to", fname)
    return path
