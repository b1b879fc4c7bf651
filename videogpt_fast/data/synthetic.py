"""Small synthetic videos for tests and benchmarks, written with PyAV (imported when writing)."""
from __future__ import annotations

import numpy as np

__all__ = ["smooth_frames", "write_video_file"]


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
    """Encode uint8 (T, H, W, 3) RGB ``frames`` to ``path`` (container from the extension)."""
    import av

    t, h, w, c = frames.shape
    if c != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    opts = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {}
    opts.update(options or {})
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
