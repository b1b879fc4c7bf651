"""``VideoDataset``: every ``sequence_length`` window of the videos in a folder, decoded with PyAV."""
from __future__ import annotations

import bisect
import os
import warnings

import numpy as np
import torch
import torch.utils.data as data

from .preprocess import check_clip_args, preprocess
from .video_index import VIDEO_EXTS, VideoEntry, VideoIndex, read_clip

__all__ = ["VideoDataset"]


class VideoDataset(data.Dataset):
    """Generic dataset of video files in ``<data_folder>/train`` and ``<data_folder>/test``.

    Same items as the original (torchvision ``VideoClips`` with ``frames_per_clip=sequence_length``,
    ``step_between_clips=1``, ``frame_rate=None``): clip ``i`` of a video with ``n`` frames holds frames
    ``i .. i + sequence_length - 1`` for ``i`` in ``0 .. n - sequence_length`` (videos shorter than
    ``sequence_length`` give none). Classes are the sorted names of the files' parent folders (a flat
    folder is one class named after the split). Items: ``dict(video=(C, T, H, W) float32 in [-0.5, 0.5],
    label=int)``. Clips are ordered by sorted relative path (the original used file-system order).

    Unreadable files (corrupt, truncated, empty) are skipped with a warning and counted in
    ``skipped``; a clip that fails to decode later marks its file bad (in that process) and the item
    is replaced by the first clip of the next readable video, so a training run never crashes on one.

    Args:
        data_folder: folder with ``train/`` and ``test/`` sub-folders.
        sequence_length: frames per clip.
        train: use ``train/`` (else ``test/``).
        resolution: output height and width (see ``preprocess``).
        cache_dir: where the clip index is cached (see ``VideoIndex``); ``False`` disables it.
        num_index_workers: threads that probe new files when building the index.
    """

    exts = list(VIDEO_EXTS)

    def __init__(self, data_folder: str, sequence_length: int, train: bool = True, resolution: int = 64,
                 cache_dir: str | None | bool = None, num_index_workers: int | None = None):
        super().__init__()
        check_clip_args(sequence_length, resolution)
        self.train = train
        self.sequence_length = sequence_length
        self.resolution = resolution
        folder = os.path.join(data_folder, "train" if train else "test")
        self.index = VideoIndex(folder, cache_dir=cache_dir, num_workers=num_index_workers)
        # Classes from every matched file, readable or not, as the original (so labels never shift).
        self.classes = sorted({_parent_dir(os.path.join(self.index.folder, e.path)) for e in self.index.entries})
        self.class_to_label = {c: i for i, c in enumerate(self.classes)}
        self.skipped_files: list[tuple[str, str]] = [(self.index.abspath(e), e.error) for e in self.index.unreadable]
        self.videos: list[VideoEntry] = [e for e in self.index.readable if e.num_frames >= sequence_length]
        self.labels = [self.class_to_label[_parent_dir(self.index.abspath(e))] for e in self.videos]
        counts = [e.num_frames - sequence_length + 1 for e in self.videos]
        self._cum = np.cumsum([0] + counts).tolist()
        self._bad: set[int] = set()

    @property
    def skipped(self) -> int:
        """Number of files skipped as unreadable (at indexing, plus failed reads in this process)."""
        return len(self.skipped_files)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self._cum[-1]

    def clip_location(self, idx: int) -> tuple[int, int]:
        """``(video_index, first_frame)`` of clip ``idx``."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"clip index {idx} out of range for {len(self)} clips")
        idx %= len(self)
        v = bisect.bisect_right(self._cum, idx) - 1
        return v, idx - self._cum[v]

    def get_clip(self, idx: int) -> tuple[torch.Tensor, int]:
        """The raw uint8 (T, H, W, 3) clip ``idx`` and its video index (raises on decode errors)."""
        v, start = self.clip_location(idx)
        entry = self.videos[v]
        frames = read_clip(self.index.abspath(entry), entry.pts[start:start + self.sequence_length])
        return torch.from_numpy(frames), v

    def __getitem__(self, idx: int) -> dict:
        v, _ = self.clip_location(idx)
        n = len(self.videos)
        for k in range(n):
            j = (v + k) % n
            if j in self._bad:
                continue
            clip_idx = idx if k == 0 else self._cum[j]
            try:
                video, j = self.get_clip(clip_idx)
            except Exception as e:  # never crash a training run on one bad file
                self._bad.add(j)
                path = self.index.abspath(self.videos[j])
                self.skipped_files.append((path, f"{type(e).__name__}: {e}"))
                warnings.warn(f"skipping unreadable video {path}: {e}", RuntimeWarning, stacklevel=2)
                continue
            return dict(video=preprocess(video, self.resolution), label=self.labels[j])
        raise RuntimeError(f"no readable video left in {self.index.folder} ({self.skipped} skipped)")


def _parent_dir(path: str) -> str:
    return os.path.basename(os.path.dirname(path))
