"""``VideoDataset``: every ``sequence_length`` window of the videos in a folder, decoded with PyAV."""
from __future__ import annotations

import bisect
import logging
import os

import numpy as np
import torch
import torch.utils.data as data

from .preprocess import check_clip_args, preprocess
from .video_index import VideoEntry, VideoIndex
from .video_reader import VIDEO_EXTS, list_videos

__all__ = ["VideoDataset", "class_names", "get_parent_dir"]

logger = logging.getLogger("videogpt_fast.data")


def _class_of(rel: str) -> str | None:
    """Class of a file from its path relative to the split folder: its parent folder's name (the
    original's ``get_parent_dir``), or ``None`` for a file directly in the split folder."""
    return get_parent_dir(rel) or None


def get_parent_dir(path: str) -> str:
    """Name of the folder holding ``path``, as the original ``videogpt.data.get_parent_dir``."""
    return os.path.basename(os.path.dirname(path))


def _root_class(train_folder: str) -> str:
    """Class of the files directly in ``train_folder``: its name (``"train"``), as the original names it."""
    return os.path.basename(os.path.normpath(train_folder))


def class_names(train_folder: str) -> list[str]:
    """The class list of a dataset: sorted parent-folder names of the video files of ``train_folder``
    (readable or not, so labels never shift); files directly in it form the class ``_root_class``."""
    return sorted({_class_of(rel) or _root_class(train_folder) for rel in list_videos(train_folder)})


class VideoDataset(data.Dataset):
    """Generic dataset of video files in ``<data_folder>/train`` and ``<data_folder>/test``.

    Same items as the original (torchvision ``VideoClips`` with ``frames_per_clip=sequence_length``,
    ``step_between_clips=1``, ``frame_rate=None``): clip ``i`` of a video with ``n`` frames holds frames
    ``i .. i + sequence_length - 1`` of a straight decode for ``i`` in ``0 .. n - sequence_length``
    (videos shorter than ``sequence_length`` give none), in presentation order whatever the container's
    timestamps say (see ``video_reader``). Files: ``*.avi, .gif, .mkv, .mov, .mp4, .webm`` (any case),
    recursively, hidden ones excluded; clips are ordered by sorted relative path.

    Labels: one class list for both splits, from ``train/`` (``class_names``): a file's class is its
    parent folder's name (files nested deeper are warned about: ``cat/x/v.mp4`` and ``dog/x/w.mp4``
    share the class ``x``). ``ValueError`` when ``test/`` holds a class ``train/`` lacks. Test files
    directly in ``test/`` while ``train/`` has class folders only have no class: label ``-1``,
    counted in ``unlabeled`` and warned about (unconditional models ignore labels).
    Items: ``dict(video=(C, T, H, W) float32 in [-0.5, 0.5], label=int64)``.

    Unreadable files (corrupt, truncated, empty, no video stream, decoding fails) are skipped with a
    ``RuntimeWarning`` when indexed and listed in ``skipped_files`` (``skipped`` counts them). A clip
    that cannot be read later (the file changed or vanished) raises ``ClipReadError`` naming the file;
    an item is never replaced by another video's clip.

    Args:
        data_folder: folder with ``train/`` and ``test/`` sub-folders (``train/`` also for the test split:
            it defines the classes).
        sequence_length: frames per clip.
        train: use ``train/`` (else ``test/``).
        resolution: output height and width (see ``preprocess``).
        cache_dir: clip-index cache folder (see ``VideoIndex``; default under ``$VIDEOGPT_FAST_HOME``);
            ``False`` disables it.
        num_index_workers: threads that decode new files when building the index.
    """

    exts = [e.lstrip(".") for e in VIDEO_EXTS]  # the original's attribute (without dots)

    def __init__(self, data_folder: str, sequence_length: int, train: bool = True, resolution: int = 64,
                 cache_dir: str | None | bool = None, num_index_workers: int | None = None):
        super().__init__()
        check_clip_args(sequence_length, resolution)
        self.train = train
        self.sequence_length = sequence_length
        self.resolution = resolution
        train_folder = os.path.join(data_folder, "train")
        if not train and not os.path.isdir(train_folder):
            raise ValueError(f"{data_folder!r} has no train/ folder: the test split takes its class list from "
                             "train/ (expected a folder with train/ and test/)")
        self.index = VideoIndex(os.path.join(data_folder, "train" if train else "test"), cache_dir=cache_dir,
                                num_workers=num_index_workers)
        self.classes = class_names(train_folder)
        self.class_to_label = {c: i for i, c in enumerate(self.classes)}
        root_class = _root_class(train_folder)
        unknown = sorted({_class_of(e.path) for e in self.index.entries if _class_of(e.path) is not None}
                         - set(self.classes))
        if unknown:
            raise ValueError(f"{self.index.folder} holds class folder(s) {unknown} that train/ lacks (train classes: "
                             f"{self.classes}); labels must mean the same in both splits")
        self.skipped_files: list[tuple[str, str]] = [(self.index.abspath(e), e.error) for e in self.index.unreadable]
        self.videos: list[VideoEntry] = [e for e in self.index.readable if e.num_frames >= sequence_length]
        self.labels = [self.class_to_label.get(_class_of(e.path) or root_class, -1) for e in self.videos]
        self.unlabeled = sum(1 for e in self.index.entries
                             if _class_of(e.path) is None and root_class not in self.class_to_label)
        if self.unlabeled:
            logger.warning("%d file(s) directly in %s have no class (train/ has class folders only): their label is "
                           "-1, so class-conditional models cannot use them", self.unlabeled, self.index.folder)
        nested = [e.path for e in self.index.entries if e.path.count("/") >= 2]
        if nested:
            logger.warning("%d file(s) in %s are nested more than one folder deep (e.g. %s): as in the original, a "
                           "file's class is its parent folder's name only, so equal sub-folder names in different "
                           "classes share a label", len(nested), self.index.folder, nested[0])
        counts = [e.num_frames - sequence_length + 1 for e in self.videos]
        self._cum = np.cumsum([0] + counts).tolist()

    @property
    def skipped(self) -> int:
        """Number of files skipped as unreadable when indexed."""
        return len(self.skipped_files)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self._cum[-1]

    def empty_reason(self) -> str:
        """Why the dataset has no clip (``""`` when it has some): the length needed and what was found."""
        if len(self):
            return ""
        folder, seq = self.index.folder, self.sequence_length
        readable = self.index.readable
        skipped = f"; {self.skipped} unreadable file(s) skipped" if self.skipped else ""
        if not readable:
            return (f"{folder} has no readable video file ({', '.join(VIDEO_EXTS)}){skipped}")
        lengths = sorted(e.num_frames for e in readable)
        shown = ", ".join(map(str, lengths[-5:]))
        return (f"no video in {folder} is long enough for sequence_length={seq}: it needs >= {seq} frames, and the "
                f"{len(readable)} readable video(s) have at most {lengths[-1]} (longest: {shown}){skipped}")

    def clip_location(self, idx: int) -> tuple[int, int]:
        """``(video_index, first_frame)`` of clip ``idx``."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"clip index {idx} out of range for {len(self)} clips")
        idx %= len(self)
        v = bisect.bisect_right(self._cum, idx) - 1
        return v, idx - self._cum[v]

    def get_clip(self, idx: int) -> tuple[torch.Tensor, int]:
        """The raw uint8 (T, H, W, 3) clip ``idx`` and its video index (raises ``ClipReadError``)."""
        v, start = self.clip_location(idx)
        return torch.from_numpy(self.index.read(self.videos[v], start, self.sequence_length)), v

    def __getitem__(self, idx: int) -> dict:
        video, v = self.get_clip(idx)
        return dict(video=preprocess(video, self.resolution), label=self.labels[v])
