"""utils: the original's tensor helpers and video-grid writing."""
import numpy as np
import pytest
import torch
from PIL import Image

from videogpt_fast.utils import (as_namespace, encode_video, make_video_grid, save_video_grid, shift_dim, tensor_slice,
                                 view_range)


def test_shift_dim():
    x = torch.randn(2, 3, 4, 5, 6)
    assert shift_dim(x, 1, -1).shape == (2, 4, 5, 6, 3)
    assert torch.equal(shift_dim(x, 1, -1), x.permute(0, 2, 3, 4, 1))
    assert torch.equal(shift_dim(shift_dim(x, 1, -1), -1, 1), x)
    assert shift_dim(x, -2, 1).shape == (2, 5, 3, 4, 6)
    with pytest.raises(ValueError):
        shift_dim(x, 7, 0)


def test_view_range_and_tensor_slice():
    x = torch.randn(2, 60, 3)
    assert view_range(x, 1, 2, (3, 4, 5)).shape == (2, 3, 4, 5, 3)
    assert view_range(x, -1, None, (1, 3)).shape == (2, 60, 1, 3)
    s = tensor_slice(x, [1, 10, 0], [1, 5, -1])
    assert torch.equal(s, x[1:2, 10:15, 0:3])
    with pytest.raises(ValueError):
        tensor_slice(x, [-1, 0, 0], [1, 1, 1])


def test_video_grid_layout():
    v = torch.rand(5, 3, 4, 6, 7)
    grid = make_video_grid(v)  # nrow = ceil(sqrt(5)) = 3, ncol = 2
    assert grid.shape == (4, (1 + 6) * 3 + 1, (1 + 7) * 2 + 1, 3)
    frames = (v.permute(0, 2, 3, 4, 1).numpy() * 255).astype("uint8")
    # as the original: video i at ((1 + h) * row, (1 + w) * col), zero padding after each cell
    for i in range(5):
        r, c = divmod(i, 2)
        assert np.array_equal(grid[:, 7 * r:7 * r + 6, 8 * c:8 * c + 7], frames[i])
    assert (grid[:, 6] == 0).all() and (grid[:, :, 7] == 0).all() and (grid[:, -1] == 0).all()
    assert (grid[:, 14:20, 8:15] == 0).all()  # the empty sixth cell


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_save_video_grid_writes_readable_video(tmp_path, ext):
    v = torch.rand(4, 3, 5, 16, 12)
    path = save_video_grid(v, str(tmp_path / f"grid{ext}"))
    grid = make_video_grid(v)
    if ext == ".mp4":
        av = pytest.importorskip("av", reason="PyAV reads the MP4 back")
        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    else:
        img = Image.open(path)
        frames = []
        for i in range(img.n_frames):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGB")))
    assert len(frames) == 5
    assert frames[0].shape[:2] == (grid.shape[1] + grid.shape[1] % 2, grid.shape[2] + grid.shape[2] % 2) \
        if ext == ".mp4" else frames[0].shape == grid.shape[1:]


def test_save_video_grid_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        save_video_grid(torch.rand(3, 4, 5, 6), str(tmp_path / "x.mp4"))
    with pytest.raises(ValueError, match="extension"):
        save_video_grid(torch.rand(1, 3, 2, 4, 4), str(tmp_path / "x.webp"))


def test_as_namespace_is_the_one_conversion():
    import argparse
    ns = argparse.Namespace(a=1)
    assert as_namespace(ns) is ns  # as is: VQVAE keeps the caller's object, as the original
    copied = as_namespace(ns, copy=True)
    assert copied is not ns and vars(copied) == {"a": 1}
    assert vars(as_namespace({"a": 1, "b": [2]})) == {"a": 1, "b": [2]}
    with pytest.raises(TypeError, match=r"VideoGPT args must be an argparse.Namespace or a dict, got list"):
        as_namespace([("a", 1)], owner="VideoGPT")


def test_encode_video_checks_frames_and_writes(tmp_path):
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[:, 4:12, 4:12] = 200
    out = encode_video(frames, str(tmp_path / "v.mp4"), "libx264", 5, {"crf": "0"})
    import av
    with av.open(out) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).max() <= 8
    with pytest.raises(ValueError, match=r"uint8 \(T, H, W, 3\)"):
        encode_video(frames[..., :1], str(tmp_path / "g.mp4"), "libx264", 5)
