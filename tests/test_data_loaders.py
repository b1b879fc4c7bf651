"""HDF5Dataset, the DataLoader factory / VideoData, make_loader's choice and the DALI error paths."""
import argparse
import logging
import pickle

import h5py
import numpy as np
import pytest
import torch

from videogpt_fast.data import (HDF5Dataset, VideoData, build_dataloader, choose_loader, make_loader, open_datasets,
                                preprocess, rank0_first)
from videogpt_fast.data import dali as dali_mod
from videogpt_fast.data.synthetic import smooth_frames, write_video_file


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    """Index caches go to a per-test $VIDEOGPT_FAST_HOME, never to the user's ~/.cache."""
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "home"))


@pytest.fixture
def h5file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["train_data"] = rng.integers(0, 256, (30, 20, 24, 3), dtype=np.uint8)
        f["train_idx"] = np.array([0, 10, 22], dtype=np.int64)  # lengths 10, 12, 8
        f["test_data"] = rng.integers(0, 256, (9, 20, 24, 3), dtype=np.uint8)
        f["test_idx"] = np.array([0], dtype=np.int64)
    return str(path)


def test_hdf5_items_match_original_sampling(h5file):
    ds = HDF5Dataset(h5file, sequence_length=8, resolution=16)
    assert len(ds) == 3
    with h5py.File(h5file) as f:
        data = f["train_data"][:]
    np.random.seed(3)
    item = ds[1]
    np.random.seed(3)
    start = 10 + np.random.randint(low=0, high=12 - 8)  # the original's draw
    assert torch.equal(item["video"], preprocess(torch.from_numpy(data[start:start + 8]), 16))
    assert torch.equal(ds[2]["video"], preprocess(torch.from_numpy(data[22:30]), 16))  # exactly 8 frames
    assert set(item) == {"video"}
    with pytest.raises(ValueError, match="class conditioning"):
        ds.n_classes
    test = HDF5Dataset(h5file, 8, train=False, resolution=16)
    assert len(test) == 1 and test[0]["video"].shape == (3, 8, 16, 16)


def test_hdf5_pickles_and_runs_in_workers(h5file):
    ds = HDF5Dataset(h5file, 8, resolution=16)
    ds[0]  # opens the file in this process
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2._file is None and ds2[2]["video"].shape == (3, 8, 16, 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    assert next(iter(loader))["video"].shape == (3, 3, 8, 16, 16)


def test_hdf5_errors(h5file, tmp_path):
    with pytest.raises(ValueError, match="no dataset 'train_data'"):
        with h5py.File(tmp_path / "e.h5", "w") as f:
            f["x"] = np.zeros(3)
        HDF5Dataset(str(tmp_path / "e.h5"), 8)
    with pytest.raises(ValueError, match=r"2 train video\(s\) in .*d\.h5.* shorter than sequence_length=11: "
                                        r"video 0 \(10 frames\), video 2 \(8 frames\)"):
        HDF5Dataset(h5file, 11)  # at open, not at the item


def test_file_that_is_not_hdf5_is_a_clear_error(tmp_path):
    txt = tmp_path / "list.txt"
    txt.write_text("a.mp4\n")
    with pytest.raises(ValueError, match=r"not an HDF5 file \(expected one with train_data, train_idx"):
        HDF5Dataset(str(txt), 8)
    with pytest.raises(ValueError, match=r"neither a folder nor an HDF5 file \(expected a folder with train/ and test/"):
        build_dataloader(dict(data_path=str(txt)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HDF5Dataset(str(tmp_path / "missing.h5"), 8)


@pytest.fixture(scope="module")
def vfolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("vids")
    for split, rel, n in [("train", "x/a.mp4", 10), ("train", "y/b.mp4", 9), ("test", "x/c.mp4", 8)]:
        p = root / split / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(p), smooth_frames(n, 24, 32, seed=n))
    return str(root)


def test_videodata_like_the_original(vfolder, h5file):
    args = argparse.Namespace(data_path=vfolder, sequence_length=8, resolution=16, batch_size=2, num_workers=0)
    vd = VideoData(args)
    assert vd.n_classes == 2
    train = vd.train_dataloader()
    assert len(train.dataset) == 3 + 2 and train.batch_size == 2
    batch = next(iter(train))
    assert batch["video"].shape == (2, 3, 8, 16, 16) and batch["label"].dtype == torch.int64
    assert len(vd.val_dataloader().dataset) == 1 and len(vd.test_dataloader().dataset) == 1
    h5 = VideoData(argparse.Namespace(data_path=h5file, sequence_length=8, resolution=16, batch_size=2, num_workers=0))
    assert isinstance(h5.train_dataloader().dataset, HDF5Dataset)


def test_build_dataloader_options(vfolder, monkeypatch):
    monkeypatch.setattr("videogpt_fast.data.loaders.cpu_count", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    loader = build_dataloader(dict(data_path=vfolder, sequence_length=8, resolution=16), batch_size=4, num_workers=-1,
                              shuffle=False, pin_memory=False)
    assert loader.num_workers == 3 and loader.batch_size == 4 and not loader.pin_memory
    assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    with pytest.raises(ValueError, match="num_workers"):
        build_dataloader(dict(data_path=vfolder), num_workers=-2)
    with pytest.raises(ValueError, match="data_path is required"):
        build_dataloader({})
    with pytest.raises(ValueError, match="neither a folder"):
        build_dataloader(dict(data_path=vfolder + "/missing.h5"))


def test_distributed_sampler_under_process_group(vfolder, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        loader = build_dataloader(dict(data_path=vfolder, sequence_length=8, resolution=16, num_workers=0))
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    finally:
        dist.destroy_process_group()


def test_auto_picks_pyav_without_cuda(vfolder, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="videogpt_fast.data"):
        loader, kind = make_loader("auto", dict(data_path=vfolder, sequence_length=8, resolution=16, num_workers=0))
    assert kind == "pytorch" and isinstance(loader, torch.utils.data.DataLoader)
    assert "PyAV DataLoader" in caplog.text and "DALI not used" in caplog.text
    with pytest.raises(ValueError, match="kind must be"):
        make_loader("fast", dict(data_path=vfolder))


def test_dali_errors_name_what_to_install(vfolder, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = dali_mod.dali_status("gpu")
    assert not ok and ("CUDA" in reason or "nvidia-dali" in reason)
    with pytest.raises(RuntimeError, match="DALI video loader unavailable"):
        make_loader("dali", dict(data_path=vfolder, sequence_length=8, resolution=16))
    # Without the package at all: the message names the pip package.
    import builtins
    real_import = builtins.__import__

    def no_dali(name, *a, **k):
        if name.startswith("nvidia.dali"):
            raise ImportError("No module named 'nvidia.dali'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    ok, reason = dali_mod.dali_status("cpu")
    assert not ok and "nvidia-dali-cuda120" in reason and "videogpt_fast[dali]" in reason
    with pytest.raises(RuntimeError, match="pip install"):
        dali_mod.DALIVideoLoader(vfolder, 8, device="cpu")


def test_loader_choice_on_cuda(monkeypatch):
    """The auto/dali decision on a CUDA device, with DALI usable or not (no GPU needed)."""
    import os

    def choose(kind, path="videos"):
        return choose_loader(kind, path, torch.device("cuda", 0))

    monkeypatch.setattr(os.path, "isdir", lambda p: p == "videos")
    monkeypatch.setattr(dali_mod, "dali_status", lambda device="gpu": (True, "NVIDIA DALI 1.50"))
    assert choose("auto") == (True, "auto: CUDA device and NVIDIA DALI 1.50")
    assert choose("dali") == (True, "--loader dali")
    assert choose("auto", "d.hdf5")[0] is False
    monkeypatch.setattr(dali_mod, "dali_status", lambda device="gpu": (False, "pip install nvidia-dali"))
    assert choose("auto") == (False, "auto: DALI unavailable: pip install nvidia-dali")
    with pytest.raises(ValueError, match="--loader dali: pip install nvidia-dali"):
        choose("dali")
    with pytest.raises(RuntimeError, match="DALI video loader unavailable: --loader dali: pip install nvidia-dali"):
        choose("dali")  # LoaderUnavailable is both: a bad option (ValueError) and a missing library
    assert choose("pytorch") == (False, "--loader pytorch")
    with pytest.raises(ValueError, match="--loader dali reads a video folder; 'd.hdf5' is not one"):
        choose("dali", "d.hdf5")
    with pytest.raises(ValueError, match="--loader dali decodes on the GPU: it needs a CUDA device"):
        choose_loader("dali", "videos", torch.device("cpu"))
    with pytest.raises(ValueError, match="kind must be"):
        choose("fast")


def test_open_datasets_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_datasets(dict(data_path=str(tmp_path / "missing.hdf5")))
    (tmp_path / "v" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no test/ sub-folder"):
        open_datasets(dict(data_path=str(tmp_path / "v")))


def test_rank0_builds_the_clip_index_first(labelled_video_folder, tmp_path, monkeypatch):
    """Under a process group rank 0 indexes (and caches) first; other ranks wait, then read the cache."""
    import shutil
    import torch.distributed as dist
    import videogpt_fast.data.video_index as vi
    root = tmp_path / "data"
    shutil.copytree(labelled_video_folder, root, ignore=shutil.ignore_patterns(vi.INDEX_NAME))
    events = []
    real_barrier, real_probe = dist.barrier, vi._probe_entry
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append("barrier") or real_barrier(*a, **k))
    monkeypatch.setattr(vi, "_probe_entry", lambda t: events.append("probe") or real_probe(t))
    args = argparse.Namespace(data_path=str(root), sequence_length=4, resolution=16)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
            open_datasets(args)
        assert events == ["probe"] * 4 + ["barrier"]  # 3 train files + 1 test file, then release the others
        events.clear()
        monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
        tr, te = open_datasets(args)
        assert events == ["barrier"]  # waited for rank 0, then read its cache: nothing probed
        assert tr.skipped == 1 and len(tr) == 3 + 4 and len(te) == 3
    finally:
        dist.destroy_process_group()
    monkeypatch.undo()
    events.clear()
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append("barrier"))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    with pytest.raises(KeyError):
        with rank0_first():
            raise KeyError("indexing failed")
    assert events == ["barrier"]  # rank 0 still releases the waiting ranks when it fails
