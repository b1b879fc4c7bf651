"""Exact data order (videogpt_fast.train.sampling): the resumable sampler and per-sample seeds."""
from __future__ import annotations

import pytest
import torch

from videogpt_fast import train


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    full = list(train.ResumableSampler(7, num_replicas=2, rank=1, seed=3))
    s = train.ResumableSampler(7, num_replicas=2, rank=1, seed=3)
    s.set_epoch(0, start=2)
    assert list(s) == full[2:] and len(s) == len(full) - 2 == 2
    r0 = list(train.ResumableSampler(7, num_replicas=2, rank=0, seed=3))
    assert len(r0) == len(full) == 4
    assert sorted({i for i, _ in r0 + full}) == list(range(7))  # every item, padded by wrapping
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new permutation each epoch
    with pytest.raises(ValueError, match="non-empty"):
        train.ResumableSampler(0)


def test_items_do_not_depend_on_workers(shapes_hdf5):
    """Random crops come from each sample's own seed: the same with 0 or 2 workers, from any start."""
    from videogpt_fast.data.hdf5_dataset import HDF5Dataset
    import argparse
    ds = HDF5Dataset(shapes_hdf5, 4, train=True, resolution=16)

    def batches(workers, start):
        s = train.ResumableSampler(len(ds), seed=5)
        s.set_epoch(0, start)
        args = argparse.Namespace(batch_size=2, num_workers=workers)
        return [b["video"] for b in train.seeded_loader(ds, s, args, torch.device("cpu"))]

    ref = batches(0, 0)
    for got in (batches(2, 0), batches(0, 2)[-2:]):
        for x, y in zip(ref[-len(got):], got):
            assert torch.equal(x, y)
