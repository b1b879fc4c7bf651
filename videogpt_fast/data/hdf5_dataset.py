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

    File layout: ``train_data`` (N, H, W, 3) uint8, ``train_idx`` (V,) integer start frame of each video,
    and the same with ``test_``. Item ``i`` is a random window of ``sequence_length`` frames of video
    ``i``, drawn like the original with ``np.random.randint(0, n - sequence_length)`` (so the global
    NumPy seed gives the same windows); a video of exactly ``sequence_length`` frames gives its only
    window (the original raises there). Items: ``dict(video=(C, T, H, W) float32 in [-0.5, 0.5])``.

    Everything that can be checked is checked when the dataset is created, each error a ``ValueError``
    naming the file (``FileNotFoundError`` when it is missing): not an HDF5 file or unreadable
    (truncated); a dataset missing; data not uint8 (N, H, W, 3) with N, H, W > 0 (1-channel data is
    rejected); the index not 1-D integers; an index entry out of ``[0, N)`` or not increasing (named
    with its position); a video shorter than ``sequence_length`` (the first ones named); the first or
    last frame unreadable. Later read errors raise ``ValueError`` naming the file and frames, and so
    does a file whose data changed dtype or shape since the dataset was created.

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
        try:
            with h5py.File(data_file, "r") as f:
                self._idx_cache = self._validate(f)
        except OSError as e:  # truncated or damaged: h5py raises OSError from the HDF5 library
            raise ValueError(f"cannot read HDF5 file {data_file!r} (truncated or damaged?): {e}") from e
        self.size = len(self._idx_cache)
        self._file = None
        self._pid = None

    def _validate(self, f: h5py.File) -> np.ndarray:
        name, dk, ik = self.data_file, f"{self.prefix}_data", f"{self.prefix}_idx"
        for key in (dk, ik):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ValueError(f"{name!r} has no dataset {key!r} (found {sorted(f.keys())})")
        images, index = f[dk], f[ik]
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != 3 or min(images.shape) == 0:
            raise ValueError(f"{dk} in {name!r} must be non-empty uint8 (N, H, W, 3) RGB frames, got {images.dtype} "
                             f"{images.shape}")
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ValueError(f"{ik} in {name!r} must be a 1-D integer array of video start frames, got "
                             f"{index.dtype} {index.shape}")
        idx = index[:]
        if idx.dtype.kind == "u" and len(idx) and idx.max() > np.iinfo(np.int64).max:
            bad = int(np.argmax(idx > np.iinfo(np.int64).max))
            raise ValueError(f"{ik}[{bad}]={idx[bad]} in {name!r} is out of range for {dk} with {images.shape[0]} "
                             "frames")
        idx = idx.astype(np.int64)
        n = images.shape[0]
        self._shape = tuple(images.shape)
        if len(idx) == 0:
            raise ValueError(f"{ik} in {name!r} is empty: no video")
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if len(bad):
            raise ValueError(f"{ik}[{bad[0]}]={idx[bad[0]]} in {name!r} is out of range for {dk} with {n} frames "
                             f"({len(bad)} entries out of range)")
        ends = np.append(idx[1:], n)
        lengths = ends - idx
        bad = np.flatnonzero(lengths <= 0)
        if len(bad):
            raise ValueError(f"{ik} in {name!r} must be strictly increasing: {ik}[{bad[0]}]={idx[bad[0]]} >= "
                             f"{ik}[{bad[0] + 1}]={ends[bad[0]]}")
        short = np.flatnonzero(lengths < self.sequence_length)
        if len(short):
            shown = ", ".join(f"video {i} ({lengths[i]} frames)" for i in short[:5])
            raise ValueError(f"{len(short)} {self.prefix} video(s) in {name!r} are shorter than sequence_length="
                             f"{self.sequence_length}: {shown}{', ...' if len(short) > 5 else ''}")
        images[0], images[n - 1]  # noqa: B018 - a truncated file fails here, not mid-training
        return idx

    @property
    def n_classes(self) -> int:
        raise ValueError("class conditioning is not supported for HDF5Dataset (it has no labels)")

    def _open(self) -> None:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.data_file, "r")
            self._pid = os.getpid()
            self._images = self._file[f"{self.prefix}_data"]
            if tuple(self._images.shape) != self._shape or self._images.dtype != np.uint8:
                found = (self._images.dtype, tuple(self._images.shape))
                self._file.close()
                self._file = None
                raise ValueError(f"{self.prefix}_data in {self.data_file!r} changed since the dataset was created: "
                                 f"it was uint8 {self._shape}, it is now {found[0]} {found[1]}; create the dataset "
                                 "again")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_file", "_images"):
            state.pop(key, None)
        state["_file"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        if not -self.size <= idx < self.size:
            raise IndexError(f"video index {idx} out of range for {self.size} videos")
        idx %= self.size
        start = int(self._idx_cache[idx])
        end = int(self._idx_cache[idx + 1]) if idx < self.size - 1 else None
        try:
            self._open()
            end = len(self._images) if end is None else end
            n = end - start
            if n > self.sequence_length:
                start += np.random.randint(low=0, high=n - self.sequence_length)
            frames = self._images[start:start + self.sequence_length]
        except OSError as e:
            raise ValueError(f"cannot read frames {start}..{start + self.sequence_length - 1} of {self.prefix}_data "
                             f"in {self.data_file!r} (truncated or damaged?): {e}") from e
        return dict(video=preprocess(torch.from_numpy(frames), self.resolution))
