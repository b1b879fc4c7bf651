"""Video decoding (videogpt_fast.data.video_reader): every clip equals consecutive frames of a straight decode in every
container/codec, odd sizes and GIF, B-frames and out-of-order timestamps, checked seeking; listing and reading files."""
import os

import numpy as np
import pytest

from conftest import decode_video, ramp_frames, write_test_video, corrupt_video_folder
from videogpt_fast.data import ClipReadError, VideoDataset
from videogpt_fast.data import video_reader
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

av = pytest.importorskip("av", reason="PyAV decodes the video files")
pytestmark = pytest.mark.usefixtures("video_cache_home")


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
    clip = write_test_video(root / "train" / f"clip.{ext}", ramp_frames(), codec, options)
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
    clip = write_test_video(root / "train" / "clip.avi", ramp_frames(), "libx264", {"bf": "3", "g": "12"})
    (root / "test").mkdir()
    ds = VideoDataset(str(root), 16, resolution=32)
    entry = ds.videos[0]
    assert not entry.ordered_timestamps  # decoded timestamps come in decode order here
    assert entry.num_frames == 30 and len(ds) == 15 and ds.skipped == 0
    red = ds.get_clip(0)[0][..., 0].float().mean(dim=(1, 2)).numpy()
    assert np.abs(red - 7 * np.arange(16)).max() < 3.5 and np.all(np.diff(red) > 0)
    assert np.array_equal(ds.get_clip(14)[0].numpy(), decode_video(clip)[14:30])  # the last clip is whole


def test_avi_out_of_order_timestamps_seek_by_key_frame_crc(tmp_path, monkeypatch):
    path = str(write_test_video(tmp_path / "v.avi", np.concatenate([ramp_frames(), ramp_frames()]), "libx264", {"bf": "3", "g": "12"}))
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
    path = str(write_test_video(tmp_path / "v.mp4", np.concatenate([ramp_frames(), ramp_frames()]), "libx264", {"bf": "3", "g": "12"}))
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


def test_video_files_and_read_video(video_folder, tmp_path):
    root = corrupt_video_folder(video_folder, tmp_path)
    found = video_reader.video_files([str(root / "train"), str(root / "test" / "dogs" / "c.mp4")])
    assert [os.path.relpath(f, root) for f in found] == [
        "train/cats/UPPER.MP4", "train/cats/a.mp4", "train/cats/random.mp4", "train/cats/truncated.mp4",
        "train/dogs/b.mp4", "train/dogs/empty.mp4", "train/dogs/short.mp4", "test/dogs/c.mp4"]
    assert video_reader.video_files([str(root / "train")]) == found[:-1]
    # a file named twice (directly, through its folder, through a parent folder) is listed once
    twice = video_reader.video_files([str(root / "train" / "dogs" / "b.mp4"), str(root / "train"), str(root / "train" / "dogs")])
    assert twice == [str(root / "train" / "dogs" / "b.mp4")] + [f for f in found[:-1] if not f.endswith("dogs/b.mp4")]
    with pytest.raises(FileNotFoundError, match="neither a video file nor a folder"):
        video_reader.video_files([str(root / "nope")])
    avi = str(write_test_video(tmp_path / "b.avi", ramp_frames(), "libx264", {"bf": "3", "g": "12"}))
    assert np.array_equal(video_reader.read_video(avi, 5, 3), decode_video(avi)[3:8])
    with pytest.raises(ClipReadError, match="cannot open"):
        video_reader.read_video(str(root / "train" / "dogs" / "empty.mp4"))
