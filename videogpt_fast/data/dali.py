"""GPU video loading with NVIDIA DALI (optional: ``pip install 'videogpt_fast[dali]'``).

The pipeline decodes with NVDEC (``fn.experimental.readers.video``, or the older ``fn.readers.video``),
then resizes, centre-crops and normalises on the GPU with exactly ``preprocess``'s geometry: per
sample, the crop window of the ``ceil``-rounded resized frame is mapped back to an input region of
interest and resized bilinearly without antialias (so the sampling grid is torch's
``align_corners=False`` grid). Outputs are CUDA float32 ``(B, C, T, H, W)`` in [-0.5, 0.5] and int64
labels, as ``dict(video=..., label=...)`` like the PyAV DataLoader.

Differences from the PyAV path on the same file: DALI's YUV->RGB conversion is not libswscale's, so
pixels differ by a few 1/255 (about 3/255 mean on synthetic VP9 test clips); geometry is exact.
The file list, labels and exclusions (unreadable files, videos shorter than ``sequence_length``)
come from the same cached ``VideoIndex`` as ``VideoDataset``; the windows (every ``step`` frames,
default 1 like the original) are DALI's, counted from the container's frame count.
"""
from __future__ import annotations

import logging
import math

import torch

from .video_dataset import VideoDataset

__all__ = ["DALIVideoLoader", "dali_status", "require_dali", "INSTALL_HINT"]

logger = logging.getLogger("videogpt_fast.data")

INSTALL_HINT = ("install NVIDIA DALI for your CUDA version: pip install 'videogpt_fast[dali]' "
                "(nvidia-dali-cuda120 for CUDA 12.x; nvidia-dali-cuda130 for CUDA 13.x), "
                "or use the PyAV loader (--loader pytorch)")


def _import_dali():
    import nvidia.dali  # noqa: F401
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    return fn, dmath, types, pipeline_def, DALIGenericIterator, LastBatchPolicy


def dali_status(device: str = "gpu") -> tuple[bool, str]:
    """``(usable, reason)``: whether the DALI loader can run on ``device`` here, and why not."""
    try:
        _import_dali()
        import nvidia.dali
    except ImportError as e:
        return False, f"NVIDIA DALI is not importable ({e}); {INSTALL_HINT}"
    if device == "gpu":
        if not torch.cuda.is_available():
            return False, "the DALI loader decodes on a CUDA GPU and torch.cuda.is_available() is False; " \
                          "use the PyAV loader (--loader pytorch) on this machine"
    elif device != "cpu":
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    return True, f"NVIDIA DALI {nvidia.dali.__version__}"


def require_dali(device: str = "gpu") -> None:
    """Raise ``RuntimeError`` naming what to install when the DALI loader cannot run."""
    ok, reason = dali_status(device)
    if not ok:
        raise RuntimeError(f"DALI video loader unavailable: {reason}")


def _dali_version() -> tuple[int, int]:
    import nvidia.dali
    return tuple(int(x) for x in nvidia.dali.__version__.split(".")[:2])


def _dist_shard() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DALIVideoLoader:
    """Iterable of ``dict(video=(B, C, T, H, W) float32, label=(B,) int64)`` batches decoded by DALI.

    Args:
        data_folder: folder with ``train/`` and ``test/`` (as ``VideoDataset``).
        sequence_length, resolution, train: as ``VideoDataset``.
        batch_size: clips per batch (per rank).
        step: frames between the starts of consecutive windows (1: every window, as the original).
        shuffle: shuffle clips (default: ``train``), through a buffer of ``initial_fill`` clips.
        shard_id, num_shards: this rank's shard; default from ``torch.distributed`` (else 0 of 1).
        device: ``"gpu"`` (NVDEC; H.264, HEVC, VP8/9, AV1, MPEG-4) or ``"cpu"`` (libavcodec; only VP8,
            VP9 and MJPEG in DALI's CPU reader: used by the CPU tests).
        device_id: CUDA device (default: the current one).
        drop_last: drop the last partial batch (default: ``train``).
        cache_dir: clip-index cache (see ``VideoIndex``).
    """

    def __init__(self, data_folder: str, sequence_length: int, resolution: int = 64, batch_size: int = 16,
                 train: bool = True, step: int = 1, shuffle: bool | None = None, shard_id: int | None = None,
                 num_shards: int | None = None, device: str = "gpu", device_id: int | None = None,
                 num_threads: int = 4, seed: int | None = None, initial_fill: int = 256, prefetch_queue_depth: int = 2,
                 drop_last: bool | None = None, cache_dir: str | None | bool = None):
        require_dali(device)
        fn, dmath, types, pipeline_def, DALIGenericIterator, LastBatchPolicy = _import_dali()
        if batch_size <= 0 or step <= 0:
            raise ValueError(f"batch_size and step must be positive, got batch_size={batch_size}, step={step}")
        rank, world = _dist_shard()
        shard_id = rank if shard_id is None else shard_id
        num_shards = world if num_shards is None else num_shards
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
        shuffle = train if shuffle is None else shuffle
        drop_last = train if drop_last is None else drop_last
        # Same files, labels and exclusions as the PyAV dataset (this also validates arguments).
        ds = VideoDataset(data_folder, sequence_length, train=train, resolution=resolution, cache_dir=cache_dir)
        if not ds.videos:
            raise ValueError(f"no readable video with >= {sequence_length} frames in {ds.index.folder}")
        self.dataset = ds
        self.n_classes = ds.n_classes
        self.skipped = ds.skipped
        self.device = device
        self.batch_size = batch_size
        self.drop_last = drop_last
        files = [ds.index.abspath(e) for e in ds.videos]
        if device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        reader = fn.experimental.readers.video if hasattr(fn.experimental, "readers") and \
            hasattr(fn.experimental.readers, "video") else None
        if reader is None and device == "cpu":
            raise RuntimeError(f"this DALI has no CPU video reader (fn.experimental.readers.video); {INSTALL_HINT}")
        R = float(resolution)

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                      seed=-1 if seed is None and _dali_version() < (1, 52) else seed,
                      prefetch_queue_depth=prefetch_queue_depth)
        def pipe():
            kw = dict(device=device, filenames=files, labels=ds.labels, sequence_length=sequence_length, step=step,
                      stride=1, shard_id=shard_id, num_shards=num_shards, random_shuffle=shuffle,
                      initial_fill=initial_fill, pad_last_batch=True, name="reader")
            if reader is not None:
                frames, labels = reader(**kw)
            else:
                frames, labels = fn.readers.video(dtype=types.UINT8, **kw)
            # Per-sample geometry of preprocess, from the runtime (F, H, W, C) shape on the CPU.
            shape = frames.shape(dtype=types.FLOAT, device="cpu") if hasattr(frames, "shape") and callable(
                frames.shape) else fn.shapes(frames, dtype=types.FLOAT, device="cpu")
            h, w = shape[1], shape[2]
            scale = R / dmath.min(h, w)
            rh = dmath.max(dmath.ceil(h * scale), R)  # the shorter side is exactly R in preprocess
            rw = dmath.max(dmath.ceil(w * scale), R)
            top, left = dmath.floor((rh - R) * 0.5), dmath.floor((rw - R) * 0.5)
            sy, sx = h / rh, w / rw
            video = fn.resize(frames, size=[R, R], roi_start=fn.stack(top * sy, left * sx),
                              roi_end=fn.stack((top + R) * sy, (left + R) * sx), roi_relative=False,
                              interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)
            video = video * (1.0 / 255.0) - 0.5
            video = fn.transpose(video, perm=[3, 0, 1, 2])  # (F, H, W, C) -> (C, F, H, W)
            if device == "gpu" and labels.device == "cpu":
                labels = labels.gpu()
            return video, labels

        self.pipeline = pipe()
        self.pipeline.build()
        policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
        self._iter = DALIGenericIterator([self.pipeline], ["video", "label"], reader_name="reader",
                                         last_batch_policy=policy, auto_reset=True)
        logger.info("DALI loader on %s: %d videos, shard %d/%d, %d clips per epoch in this shard", device,
                    len(files), shard_id, num_shards, self._iter.size)

    @property
    def num_clips(self) -> int:
        """Clips per epoch in this shard."""
        return int(self._iter.size)

    def __len__(self) -> int:
        n = self.num_clips / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        for out in self._iter:
            batch = out[0]
            yield dict(video=batch["video"], label=batch["label"].reshape(-1).long())

    def reset(self) -> None:
        self._iter.reset()
