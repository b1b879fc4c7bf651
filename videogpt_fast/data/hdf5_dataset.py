"""``HDF5Dataset``: clips from the original's HDF5 format, opened lazily in each worker."""
from __future__ import annotations

import os

import h5py
import numpy as np
import torch
import torch.utils.data as data

from .preprocess import check_clip_args, preprocess

__all__ = ["HDF5Dataset"]


class HDF5Dataset(data.Dataset):
    """Videos stored as uint8 frames in one HDF5 file, as in the original.

    File layout: ``train_data`` (N, H, W, 3) uint8, ``train_idx`` (V,) int64 start frame of each video,
    and the same with ``test_``. Item ``i`` is a random window of ``sequence_length`` frames of video
    ``i``, drawn like the original with ``np.random.randint(0, n - sequence_length)`` (so the global
    NumPy seed gives the same windows); a video of exactly ``sequence_length`` frames gives its only
    window (the original raises there). Items: ``dict(video=(C, T, H, W) float32 in [-0.5, 0.5])``.

    The file is opened on first access in each process (and re-opened after a fork), so the dataset
    pickles cheaply into DataLoader workers.
    """

    def __init__(self, data_file: str, sequence_length: int, train: bool = True, resolution: int = 64):
        super().__init__()
        check_clip_args(sequence_length, resolution)
        self.train = train
        self.sequence_length = sequence_length
        self.resolution = resolution
        self.data_file = data_file
        self.prefix = "train" if train else "test"
        if not os.path.isfile(data_file):
            raise FileNotFoundError(f"HDF5 file {data_file!r} does not exist or is not a file")
        if not h5py.is_hdf5(data_file):
            raise ValueError(f"{data_file!r} is not an HDF5 file (expected one with train_data, train_idx, "
                             "test_data and test_idx, the original's format)")
        with h5py.File(data_file, "r") as f:
            for key in (f"{self.prefix}_data", f"{self.prefix}_idx"):
                if key not in f:
                    raise ValueError(f"{data_file!r} has no dataset {key!r} (found {sorted(f.keys())})")
            images = f[f"{self.prefix}_data"]
            if images.ndim != 4 or images.dtype != np.uint8:
                raise ValueError(f"{self.prefix}_data must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
            self.size = len(f[f"{self.prefix}_idx"])
        self._file = None
        self._pid = None

    @property
    def n_classes(self) -> int:
        raise ValueError("class conditioning is not supported for HDF5Dataset (it has no labels)")

    def _open(self) -> None:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.data_file, "r")
            self._pid = os.getpid()
            self._images = self._file[f"{self.prefix}_data"]
            self._idx = self._file[f"{self.prefix}_idx"][:]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_file", "_images", "_idx"):
            state.pop(key, None)
        state["_file"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        self._open()
        if not -self.size <= idx < self.size:
            raise IndexError(f"video index {idx} out of range for {self.size} videos")
        idx %= self.size
        start = int(self._idx[idx])
        end = int(self._idx[idx + 1]) if idx < self.size - 1 else len(self._images)
        n = end - start
        if n < self.sequence_length:
            raise ValueError(f"video {idx} of {self.data_file!r} has {n} frames < sequence_length={self.sequence_length}")
        if n > self.sequence_length:
            start += np.random.randint(low=0, high=n - self.sequence_length)
        video = torch.from_numpy(self._images[start:start + self.sequence_length])
        return dict(video=preprocess(video, self.resolution))
