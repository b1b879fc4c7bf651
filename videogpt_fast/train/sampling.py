"""Exact, resumable data order for training: a :class:`ResumableSampler` draws each epoch's
permutation, and one seed per sample, from ``seed + epoch``; :class:`SeededDataset` loads every item
with NumPy / ``random`` / torch seeded from its own seed, so the random crop of a sample depends
neither on the number of workers nor on where a run resumed."""
from __future__ import annotations

import argparse
import math
import random
from typing import Any, Iterator, Tuple

import numpy as np
import torch
import torch.utils.data as data


class SeededDataset(data.Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded with NumPy, ``random`` and torch
    seeded from ``seed`` (the calling process's streams are restored afterwards)."""

    def __init__(self, dataset: data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                np.random.seed(seed)
                random.seed(seed)
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ResumableSampler(data.Sampler):
    """Distributed, epoch-seeded sampler of ``(index, seed)`` pairs that can start mid-epoch.

    Epoch ``e`` uses a generator seeded with ``seed + e``: a permutation of the ``n`` items (or
    ``0..n-1`` without shuffling) and one 31-bit seed per position. As ``DistributedSampler``
    (drop_last=False), the list is padded by wrapping to a multiple of ``num_replicas`` and rank ``r``
    takes every ``num_replicas``-th item from ``r``. :meth:`set_epoch` picks the epoch and how many
    of this rank's samples to skip.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        if n <= 0:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got {n} items")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.n, self.num_replicas, self.rank, self.shuffle, self.seed = n, num_replicas, rank, shuffle, seed
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 31 - 1, (self.n,), generator=g)
        total = self.per_rank * self.num_replicas
        pos = torch.arange(total) % self.n  # pad by wrapping around
        mine = pos[self.rank::self.num_replicas][self.start:]
        return iter(list(zip(order[mine].tolist(), seeds[mine].tolist())))  # one gather, not 2 per sample

    def __len__(self) -> int:
        return self.per_rank - self.start


def seeded_loader(dataset: data.Dataset, sampler: ResumableSampler, args: argparse.Namespace,
                  device: torch.device) -> data.DataLoader:
    """The training / validation DataLoader of ``dataset`` in ``sampler``'s order, each item seeded
    (see :class:`SeededDataset`); ``args.batch_size`` and ``args.num_workers``, pinned memory on CUDA."""
    # a private generator: creating an iterator must not draw from the global torch RNG (it would shift
    # the dropout stream of a resumed run); items are seeded per sample anyway
    g = torch.Generator()
    g.manual_seed(sampler.seed)
    return data.DataLoader(SeededDataset(dataset), batch_size=args.batch_size, sampler=sampler, generator=g,
                           num_workers=args.num_workers, pin_memory=device.type == "cuda", drop_last=False)
