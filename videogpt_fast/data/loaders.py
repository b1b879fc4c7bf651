"""Loader factories: PyAV/HDF5 DataLoaders (the original's ``VideoData``), the train/test datasets
of a data path, and the one DALI-or-PyTorch choice (:func:`choose_loader`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from typing import Any, Iterable, Optional, Tuple

import h5py
import torch
import torch.distributed as dist
import torch.utils.data as data

from ..utils import cpu_count
from .hdf5_dataset import HDF5Dataset
from .video_dataset import VideoDataset

__all__ = ["build_dataset", "build_dataloader", "VideoData", "make_loader", "choose_loader", "LoaderUnavailable",
           "open_datasets", "rank0_first", "cpu_count", "require_clips"]

logger = logging.getLogger("videogpt_fast.data")

_DEFAULTS = dict(sequence_length=16, resolution=64, batch_size=32, num_workers=8)


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


class LoaderUnavailable(ValueError, RuntimeError):
    """The requested DALI loader cannot run here (a ValueError, as other bad options; a RuntimeError,
    as ``DALIVideoLoader`` raises when DALI or CUDA is missing)."""


def choose_loader(kind: str, data_path: str, device: Optional[torch.device] = None) -> Tuple[bool, str]:
    """``(use DALI, why)`` for loader ``kind`` (``auto``, ``pytorch`` or ``dali``, the ``--loader``
    choices) on ``data_path`` for a run on ``device`` (default: CUDA when available, else CPU).

    ``auto`` takes DALI for a video folder when the device is CUDA and NVIDIA DALI is usable, and
    the PyTorch DataLoader otherwise; ``why`` says which rule decided. ``dali`` raises
    :class:`LoaderUnavailable` when it cannot run (no CUDA device, DALI missing) and ValueError for
    a path that is not a video folder. Nothing is logged here: the caller reports the choice once."""
    if kind not in ("auto", "pytorch", "dali"):
        raise ValueError(f"kind must be 'auto', 'pytorch' or 'dali', got {kind!r}")
    if kind == "pytorch":
        return False, "--loader pytorch"
    from . import dali as dali_mod
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    is_folder = os.path.isdir(data_path)
    if kind == "dali":
        if device.type != "cuda":
            raise LoaderUnavailable("DALI video loader unavailable: --loader dali decodes on the GPU: it needs a CUDA "
                                    f"device (this run is on {device}); use --loader pytorch or auto")
        if not is_folder:
            raise ValueError(f"--loader dali reads a video folder; {data_path!r} is not one")
        ok, why = dali_mod.dali_status("gpu")
        if not ok:
            raise LoaderUnavailable(f"DALI video loader unavailable: --loader dali: {why}")
        return True, "--loader dali"
    if not is_folder:
        return False, "auto: --data_path is an HDF5 file; DALI reads video folders"
    if device.type != "cuda":
        return False, "auto: no CUDA device"
    ok, why = dali_mod.dali_status("gpu")
    return ok, f"auto: CUDA device and {why}" if ok else f"auto: DALI unavailable: {why}"


def dali_loader(args: Any = None, train: bool = True, **overrides) -> Iterable:
    """The DALI GPU-decoding loader of a video folder (``data_path``, ``sequence_length``,
    ``resolution``, ``batch_size``, optional ``shuffle`` / ``drop_last``); RuntimeError naming what
    to install when DALI or CUDA is missing."""
    from . import dali as dali_mod
    opts = _options(args, **overrides)
    return dali_mod.DALIVideoLoader(opts["data_path"], opts["sequence_length"], resolution=opts["resolution"],
                                    batch_size=opts["batch_size"], train=train,
                                    shuffle=opts.get("shuffle"), drop_last=opts.get("drop_last"))


def make_loader(kind: str = "auto", args: Any = None, train: bool = True, **overrides) -> tuple[Iterable, str]:
    """The loader :func:`choose_loader` picks for ``kind``: ``"dali"`` (GPU decode), ``"pytorch"``
    (PyAV/HDF5 DataLoader, :func:`build_dataloader`) or ``"auto"``; the choice and its reason are
    logged. Both yield ``dict(video=(B, C, T, H, W), label=(B,))`` batches (HDF5: no label).
    Returns ``(loader, kind)``. ``"dali"`` raises :class:`LoaderUnavailable` (a RuntimeError)
    naming what is missing."""
    opts = _options(args, **overrides)
    use_dali, reason = choose_loader(kind, opts["data_path"])
    if use_dali:
        logger.info("data loader: DALI (GPU decoding) (%s)", reason)
        return dali_loader(opts, train=train), "dali"
    logger.info("data loader: %s DataLoader (%s)", "PyAV" if os.path.isdir(opts["data_path"]) else "HDF5",
                reason if kind == "pytorch" else f"DALI not used: {reason}")
    return build_dataloader(opts, train=train), "pytorch"


@contextlib.contextmanager
def rank0_first():
    """Under an initialised process group, run the block on rank 0 first, then on the other ranks
    (which wait at a barrier): rank 0 builds and caches the clip index, the others read the cache."""
    if not dist.is_initialized():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()
        yield
        return
    try:
        yield
    finally:  # also on an error, so that the other ranks fail on their own instead of waiting forever
        dist.barrier()


def open_datasets(args: Any) -> Tuple[data.Dataset, data.Dataset]:
    """Train and test datasets for ``args.data_path`` (with ``sequence_length``, ``resolution``; a
    Namespace or dict) as the original ``VideoData``: a folder gives a ``VideoDataset``, an HDF5 file
    an ``HDF5Dataset``; a missing path or split raises FileNotFoundError, anything else a clear
    ValueError. Under a process group rank 0 indexes a video folder first (see :func:`rank0_first`)."""
    opts = _options(args)
    path = opts["data_path"]
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path {path!r} does not exist (expected {DATA_PATH_FORMS})")
    if os.path.isdir(path):
        for split in ("train", "test"):
            if not os.path.isdir(os.path.join(path, split)):
                raise FileNotFoundError(f"--data_path folder {path!r} has no {split}/ sub-folder (expected "
                                        f"{DATA_PATH_FORMS})")
    kw = dict(sequence_length=opts["sequence_length"], resolution=opts["resolution"])
    with rank0_first() if os.path.isdir(path) else contextlib.nullcontext():
        return build_dataset(path, train=True, **kw), build_dataset(path, train=False, **kw)
