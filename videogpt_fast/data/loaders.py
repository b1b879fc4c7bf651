"""Loader factories: PyAV/HDF5 DataLoaders (the original's ``VideoData``) and the DALI/PyAV choice."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Iterable

import h5py
import torch
import torch.distributed as dist
import torch.utils.data as data

from .hdf5_dataset import HDF5Dataset
from .video_dataset import VideoDataset

__all__ = ["build_dataset", "build_dataloader", "VideoData", "make_loader", "cpu_count", "require_clips"]

logger = logging.getLogger("videogpt_fast.data")

_DEFAULTS = dict(sequence_length=16, resolution=64, batch_size=32, num_workers=8)


def cpu_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _options(args: Any = None, **overrides) -> dict:
    """Merge an ``argparse.Namespace`` / dict / ``None`` with keyword overrides (overrides win)."""
    if args is None:
        opts = {}
    elif isinstance(args, dict):
        opts = dict(args)
    elif isinstance(args, argparse.Namespace) or hasattr(args, "__dict__"):
        opts = dict(vars(args))
    else:
        raise ValueError(f"args must be an argparse.Namespace, a dict or None, got {type(args).__name__}")
    opts.update({k: v for k, v in overrides.items() if v is not None})
    if "data_path" not in opts:
        raise ValueError("data_path is required (a folder with train/ and test/, or an HDF5 file)")
    for k, v in _DEFAULTS.items():
        opts.setdefault(k, v)
    return opts


#: what a data path may be (for error messages)
DATA_PATH_FORMS = ("a folder with train/ and test/ sub-folders of videos (.mp4/.avi/.mkv/.mov/.webm/.gif, optionally "
                   "in class sub-folders), or an HDF5 file with train_data, train_idx, test_data and test_idx")


def require_clips(dataset: data.Dataset, what: str = "the dataset") -> None:
    """``ValueError`` when ``dataset`` has no item, saying why (for a ``VideoDataset``: the clip length
    needed and the longest videos found) instead of PyTorch's "num_samples should be a positive integer"."""
    if len(dataset) > 0:
        return
    reason = dataset.empty_reason() if hasattr(dataset, "empty_reason") else f"{type(dataset).__name__} is empty"
    raise ValueError(f"{what} has no clip to load: {reason}")


def require_labels(dataset: data.Dataset | None) -> None:
    """ValueError when a class-conditional model would meet label -1: files of a video folder's split
    that have no class (directly in ``test/`` while ``train/`` has class folders only)."""
    unlabeled = getattr(dataset, "unlabeled", 0)
    if unlabeled:
        folder = getattr(getattr(dataset, "index", None), "folder", "the dataset")
        raise ValueError(f"--class_cond: {unlabeled} video file(s) directly in {folder} have no class (train/ has "
                         "class folders only, so their label is -1); move them into class folders")


def build_dataset(data_path: str, sequence_length: int, train: bool = True, resolution: int = 64,
                  **kwargs) -> data.Dataset:
    """``VideoDataset`` for a folder, ``HDF5Dataset`` for a file (the original's rule)."""
    if os.path.isdir(data_path):
        return VideoDataset(data_path, sequence_length, train=train, resolution=resolution, **kwargs)
    if not os.path.isfile(data_path) or not h5py.is_hdf5(data_path):
        what = "a file but not an HDF5 file, so " if os.path.isfile(data_path) else ""
        raise ValueError(f"data_path {data_path!r} is {what}neither a folder nor an HDF5 file "
                         f"(expected {DATA_PATH_FORMS})")
    return HDF5Dataset(data_path, sequence_length, train=train, resolution=resolution)


def build_dataloader(args: Any = None, train: bool = True, dataset: data.Dataset | None = None,
                     **overrides) -> data.DataLoader:
    """A DataLoader as the original ``VideoData._dataloader`` builds it.

    Options (from ``args`` and keyword overrides): ``data_path``, ``sequence_length``, ``resolution``,
    ``batch_size``, ``num_workers`` (``-1`` or ``"all"``: every core this process may use, divided by
    the local world size), ``shuffle`` (default True for both splits, as the original), ``drop_last``
    (default False), ``pin_memory`` (default: CUDA is available), ``seed``.

    Raises ``ValueError`` (``require_clips``) when the split has no clip.
    Under an initialised ``torch.distributed`` the sampler is a ``DistributedSampler`` (call
    ``loader.sampler.set_epoch(epoch)`` each epoch to reshuffle).
    """
    opts = _options(args, **overrides)
    num_workers = opts["num_workers"]
    if num_workers in (-1, "all"):
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        num_workers = max(1, cpu_count() // max(1, local_world))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, -1 or 'all', got {num_workers!r}")
    if dataset is None:
        dataset = build_dataset(opts["data_path"], opts["sequence_length"], train=train,
                                resolution=opts["resolution"])
    require_clips(dataset, f"the {'train' if train else 'test'} split of {opts['data_path']!r}")
    shuffle = opts.get("shuffle", True)
    if dist.is_available() and dist.is_initialized():
        sampler = data.distributed.DistributedSampler(dataset, num_replicas=dist.get_world_size(),
                                                      rank=dist.get_rank(), shuffle=shuffle,
                                                      seed=int(opts.get("seed", 0)))
    else:
        sampler = None
    generator = None
    if sampler is None and "seed" in opts:
        generator = torch.Generator().manual_seed(int(opts["seed"]))
    pin_memory = opts.get("pin_memory", torch.cuda.is_available())
    return data.DataLoader(dataset, batch_size=opts["batch_size"], num_workers=num_workers, pin_memory=pin_memory,
                           sampler=sampler, shuffle=shuffle if sampler is None else False,
                           drop_last=bool(opts.get("drop_last", False)), generator=generator,
                           persistent_workers=num_workers > 0 and bool(opts.get("persistent_workers", False)))


class VideoData:
    """The original ``VideoData(args)`` without Lightning: ``train/val/test_dataloader()``, ``n_classes``.

    ``args`` needs ``data_path``, ``sequence_length``, ``resolution``, ``batch_size``, ``num_workers``.
    Datasets are built once per split and re-used.
    """

    def __init__(self, args: Any):
        self.args = args
        self._datasets: dict[bool, data.Dataset] = {}

    def _dataset(self, train: bool) -> data.Dataset:
        if train not in self._datasets:
            opts = _options(self.args)
            self._datasets[train] = build_dataset(opts["data_path"], opts["sequence_length"], train=train,
                                                  resolution=opts["resolution"])
        return self._datasets[train]

    @property
    def n_classes(self) -> int:
        return self._dataset(True).n_classes

    def _dataloader(self, train: bool) -> data.DataLoader:
        return build_dataloader(self.args, train=train, dataset=self._dataset(train))

    def train_dataloader(self) -> data.DataLoader:
        return self._dataloader(True)

    def val_dataloader(self) -> data.DataLoader:
        return self._dataloader(False)

    def test_dataloader(self) -> data.DataLoader:
        return self.val_dataloader()


def make_loader(kind: str = "auto", args: Any = None, train: bool = True, **overrides) -> tuple[Iterable, str]:
    """Pick the training loader: ``"dali"`` (GPU decode), ``"pytorch"`` (PyAV/HDF5 DataLoader) or ``"auto"``.

    ``auto`` takes DALI when it is importable, CUDA is available and ``data_path`` is a video folder,
    and the PyAV DataLoader otherwise; the choice and its reason are logged. Both yield
    ``dict(video=(B, C, T, H, W), label=(B,))`` batches (HDF5: no label). Returns ``(loader, kind)``.
    ``"dali"`` raises ``RuntimeError`` naming what to install when DALI or CUDA is missing.
    """
    from . import dali as dali_mod

    if kind not in ("auto", "pytorch", "dali"):
        raise ValueError(f"kind must be 'auto', 'pytorch' or 'dali', got {kind!r}")
    opts = _options(args, **overrides)
    if kind == "auto":
        ok, reason = dali_mod.dali_status("gpu")
        if ok and not os.path.isdir(opts["data_path"]):
            ok, reason = False, "data_path is an HDF5 file (DALI reads video files)"
        kind = "dali" if ok else "pytorch"
        logger.info("data loader: %s (%s)", "DALI (GPU decoding)" if ok else "PyAV DataLoader",
                    reason if ok else f"DALI not used: {reason}")
    else:
        logger.info("data loader: %s (requested)", kind)
    if kind == "dali":
        if not os.path.isdir(opts["data_path"]):
            raise ValueError(f"the DALI loader reads a video folder; {opts['data_path']!r} is not one")
        loader = dali_mod.DALIVideoLoader(opts["data_path"], opts["sequence_length"], resolution=opts["resolution"],
                                          batch_size=opts["batch_size"], train=train,
                                          shuffle=opts.get("shuffle"), drop_last=opts.get("drop_last"))
        return loader, "dali"
    return build_dataloader(opts, train=train), "pytorch"
