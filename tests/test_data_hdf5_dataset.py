"""HDF5Dataset: every problem the file can show is an error naming the file when it is opened (issue 15, item 8)."""
import h5py
import numpy as np
import pytest

from videogpt_fast.data import HDF5Dataset, build_dataset


def _write(path, data_shape=(20, 8, 8, 3), idx=(0, 10), dtype=np.uint8, idx_dtype=np.int64, test=True):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["train_data"] = rng.integers(0, 256, data_shape).astype(dtype)
        f["train_idx"] = np.asarray(idx, dtype=idx_dtype)
        if test:
            f["test_data"] = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
            f["test_idx"] = np.array([0], dtype=np.int64)
    return str(path)


def test_short_last_video_fails_at_open(tmp_path):
    """The reported case: the last video has 5 frames, sequence_length 8: an error now, not at step 16."""
    path = _write(tmp_path / "d.h5", (25, 8, 8, 3), idx=(0, 10, 20))
    with pytest.raises(ValueError, match=r"1 train video\(s\) in .*d\.h5.* shorter than sequence_length=8: "
                                         r"video 2 \(5 frames\)"):
        HDF5Dataset(path, 8, resolution=8)
    assert len(HDF5Dataset(path, 5, resolution=8)) == 3


@pytest.mark.parametrize("idx,match", [((0, 10, 40), r"train_idx\[2\]=40 in .*d\.h5.* out of range for train_data with 20 frames"),
                                       ((0, -3), r"train_idx\[1\]=-3 .* out of range"),
                                       ((0, 12, 9), r"strictly increasing: train_idx\[1\]=12 >= train_idx\[2\]=9"),
                                       ((), r"train_idx in .*d\.h5.* is empty")])
def test_bad_index_names_file_and_position(tmp_path, idx, match):
    path = _write(tmp_path / "d.h5", idx=idx)
    with pytest.raises(ValueError, match=match):
        HDF5Dataset(path, 4, resolution=8)


@pytest.mark.parametrize("kw,match", [(dict(data_shape=(20, 8, 8, 1)), r"uint8 \(N, H, W, 3\) RGB frames, got uint8 \(20, 8, 8, 1\)"),
                                      (dict(data_shape=(20, 8, 8)), r"uint8 \(N, H, W, 3\) RGB frames, got uint8 \(20, 8, 8\)"),
                                      (dict(dtype=np.float32), r"got float32"),
                                      (dict(data_shape=(20, 0, 8, 3)), r"non-empty"),
                                      (dict(idx_dtype=np.float64), r"1-D integer array .* got float64")])
def test_wrong_data_rejected_at_open(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        HDF5Dataset(_write(tmp_path / "d.h5", **kw), 4, resolution=8)


def test_missing_test_split_named(tmp_path):
    path = _write(tmp_path / "d.h5", test=False)
    assert len(HDF5Dataset(path, 4, resolution=8)) == 2
    with pytest.raises(ValueError, match=r"has no dataset 'test_data' \(found \['train_data', 'train_idx'\]\)"):
        HDF5Dataset(path, 4, train=False)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.02])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    good = _write(tmp_path / "good.h5", (200, 16, 16, 3), idx=(0, 100))
    data = open(good, "rb").read()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.h5") as e:
        build_dataset(str(bad), 4, resolution=8)
    assert "truncated" in str(e.value) or "not an HDF5 file" in str(e.value)


def test_file_damaged_after_open_names_it_on_read(tmp_path):
    path = _write(tmp_path / "d.h5", (200, 16, 16, 3), idx=(0, 100))
    ds = HDF5Dataset(path, 4, resolution=8)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read frames \d+\.\.\d+ of train_data in .*d\.h5.*truncated or damaged"):
        ds[1]


def test_file_replaced_after_open_is_named_on_read(tmp_path):
    """Attack (issue 15 follow-up): the file rewritten with fewer frames after the dataset was created
    is a ValueError naming the file and both shapes, not an empty clip deep in preprocess."""
    path = _write(tmp_path / "r.h5")
    ds = HDF5Dataset(path, 4, resolution=8)
    _write(tmp_path / "r.h5", (5, 8, 8, 3), idx=(0,))
    with pytest.raises(ValueError, match=r"train_data in .*r\.h5.* changed since the dataset was created: it was "
                                         r"uint8 \(20, 8, 8, 3\), it is now uint8 \(5, 8, 8, 3\)"):
        ds[1]


def test_uint64_index_beyond_int64_is_named_with_its_value(tmp_path):
    path = _write(tmp_path / "u.h5", idx=(0, 2 ** 63 + 5), idx_dtype=np.uint64)
    with pytest.raises(ValueError, match=r"train_idx\[1\]=9223372036854775813 in .*u\.h5.* out of range"):
        HDF5Dataset(path, 4, resolution=8)
