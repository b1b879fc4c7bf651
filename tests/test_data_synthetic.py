"""data/synthetic.py: moving-shape videos (demo, tests), their HDF5 file, smooth patterns and their encoding."""
import h5py
import numpy as np
import pytest

from conftest import decode_video
from videogpt_fast.data.synthetic import MovingShapesDataset, moving_shapes, smooth_frames, write_hdf5, write_video_file


def test_synthetic_videos_move_and_are_deterministic():
    v = moving_shapes(3, 8, 32, seed=1)
    assert v.shape == (3, 8, 32, 32, 3) and v.dtype == np.uint8
    assert np.array_equal(v, moving_shapes(3, 8, 32, seed=1))
    assert not np.array_equal(v[:, 0], v[:, -1])  # the shapes move
    ds = MovingShapesDataset(2, 8, 32)
    item = ds[1]
    assert tuple(item["video"].shape) == (3, 8, 32, 32)
    assert -0.5 <= float(item["video"].min()) and float(item["video"].max()) <= 0.5
    assert item["label"] in (0, 1) and ds.n_classes == 2


def test_moving_shapes_labels_and_bad_sizes():
    v, labels = moving_shapes(6, 4, 20, seed=3, return_labels=True)
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1}
    assert np.array_equal(v, moving_shapes(6, 4, 20, seed=3))
    assert not np.array_equal(v, moving_shapes(6, 4, 20, seed=4))
    with pytest.raises(ValueError, match="resolution >= 8"):
        moving_shapes(1, 4, 7)


def test_write_hdf5_has_the_original_layout(tmp_path):
    path = write_hdf5(tmp_path / "s.hdf5", n_train=3, n_test=2, frames_per_video=5, resolution=16, seed=2)
    with h5py.File(path, "r") as f:
        assert f["train_data"].shape == (15, 16, 16, 3) and f["test_data"].shape == (10, 16, 16, 3)
        assert f["train_idx"][:].tolist() == [0, 5, 10] and f["test_idx"][:].tolist() == [0, 5]
        assert np.array_equal(f["train_data"][:], moving_shapes(3, 5, 16, seed=2).reshape(-1, 16, 16, 3))


def test_smooth_frames_round_trip_through_a_video_file(tmp_path):
    frames = smooth_frames(6, 24, 40, seed=1)
    assert frames.shape == (6, 24, 40, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, smooth_frames(6, 24, 40, seed=1)) and not np.array_equal(frames[0], frames[-1])
    path = write_video_file(str(tmp_path / "v.mp4"), frames)
    decoded = decode_video(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 12  # lossy (4:2:0, ultrafast) but close
    with pytest.raises(ValueError, match=r"uint8 \(T, H, W, 3\)"):
        write_video_file(str(tmp_path / "bad.mp4"), frames.astype(np.float32))
