"""The clip index (videogpt_fast.data.video_index): the cache outside the data, reused and invalidated; unwritable
caches; files changed after indexing; corrupt files skipped and counted."""
import logging
import os
import shutil

import pytest
import torch

from conftest import decode_video, corrupt_video_folder
from videogpt_fast.data import ClipReadError, VideoDataset, preprocess
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

av = pytest.importorskip("av", reason="PyAV decodes the video files")
pytestmark = pytest.mark.usefixtures("video_cache_home")


def test_file_changed_after_indexing_raises_naming_it(video_folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(video_folder, root)
    ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    write_video_file(str(root / "train" / "cats" / "a.mp4"), smooth_frames(12, 36, 48, seed=5))
    with pytest.raises(ClipReadError, match=r"cats/a\.mp4 changed since it was indexed"):
        ds[2]
    (root / "train" / "cats" / "a.mp4").unlink()
    with pytest.raises(ClipReadError, match=r"cats/a\.mp4 was indexed but cannot be read now"):
        ds[2]
    assert ds.skipped == 0 and ds[5]["label"] == 1  # other files still read; nothing replaced or counted


def test_index_cache_outside_the_data_reused_and_invalidated(video_folder, tmp_path, monkeypatch, caplog):
    root = tmp_path / "data"
    shutil.copytree(video_folder, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with caplog.at_level(logging.INFO, logger="videogpt_fast.data"):
        ds = VideoDataset(str(root), 8, resolution=16)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the data folder
    caches = list((tmp_path / "home" / "video_index").iterdir())
    assert len(caches) == 1 and ds.index.cache_path == str(caches[0]) and str(caches[0]) in caplog.text
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
    ds3 = VideoDataset(str(root), 8, resolution=16)
    assert len(ds3) == len(ds) + 3 and calls == ["cats/new.mp4"]
    with pytest.raises(ClipReadError, match="changed since it was indexed"):
        ds2[5]  # new.mp4 in the index made before it changed
    assert torch.equal(ds3[5]["video"], preprocess(torch.from_numpy(smooth_frames(10, 32, 32)[:8]), 16)) is False
    assert torch.equal(ds3[5]["video"], preprocess(torch.from_numpy(decode_video(root / "train/cats/new.mp4")[:8]), 16))
    # an explicit cache folder, and none at all
    VideoDataset(str(root), 8, resolution=16, cache_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c" / "video_index").iterdir())) == 1
    calls.clear()
    VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    assert len(calls) == 4


def test_unwritable_cache_is_a_warning(video_folder, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(blocker))  # a file: the cache folder cannot be made
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.data"):
        ds = VideoDataset(str(video_folder), 8, resolution=16)
    assert len(ds) == 18 and "could not write the video index" in caplog.text


def test_corrupt_files_skipped_and_counted(video_folder, tmp_path):
    root = corrupt_video_folder(video_folder, tmp_path)
    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    assert ds.skipped == 3 and {os.path.basename(p) for p, _ in ds.skipped_files} == {"random.mp4", "truncated.mp4", "empty.mp4"}
    assert len(ds) == 18 + 5 and ds.classes == ["cats", "dogs"]  # UPPER.MP4 is a video too
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=0)
    assert sum(b["video"].shape[0] for b in loader) == 23
