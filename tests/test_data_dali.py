"""DALI loader: on CPU with VP9 files (DALI's CPU reader has no H.264), on the GPU with H.264."""
import numpy as np
import pytest

from conftest import decode_video
import torch

from videogpt_fast.data import preprocess
from videogpt_fast.data.synthetic import smooth_frames, write_video_file


def _dali_cpu_reader():
    try:
        import nvidia.dali.fn as fn
    except ImportError:
        pytest.skip("NVIDIA DALI is not installed (pip install 'videogpt_fast[dali]')")
    if not hasattr(getattr(fn.experimental, "readers", None), "video"):
        pytest.skip("this DALI has no CPU video reader (fn.experimental.readers.video)")
    return fn




@pytest.fixture(scope="module")
def vp9_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("vp9")
    for rel, n, hw in [("a/one.webm", 12, (36, 52)), ("b/two.webm", 10, (50, 40)), ("b/short.webm", 4, (36, 52))]:
        p = root / "train" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(p), smooth_frames(n, *hw, seed=n), codec="libvpx-vp9", options={"crf": "10", "b": "0"})
    (root / "train" / "b" / "bad.webm").write_bytes(b"not a video at all" * 50)
    return root


def _raw_dali_windows(fn, path, seq):
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def raw():
        return fn.experimental.readers.video(device="cpu", filenames=[path], sequence_length=seq, step=1)

    p = raw()
    p.build()
    return np.asarray(p.run()[0].as_array()[0])


def test_dali_cpu_matches_preprocess(vp9_folder):
    fn = _dali_cpu_reader()
    from videogpt_fast.data.dali import DALIVideoLoader

    with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
        loader = DALIVideoLoader(str(vp9_folder), sequence_length=8, resolution=16, batch_size=4, train=True,
                                 shuffle=False, drop_last=False, device="cpu", cache_dir=False,
                                 num_threads=1)
    assert loader.skipped == 1 and loader.n_classes == 2
    assert loader.num_clips == (12 - 8 + 1) + (10 - 8 + 1) and len(loader) == 2  # short one excluded
    batches = list(loader)
    video = torch.cat([b["video"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    assert video.shape == (8, 3, 8, 16, 16) and video.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [0] * 5 + [1] * 3
    one, two = vp9_folder / "train/a/one.webm", vp9_folder / "train/b/two.webm"
    frames = {0: decode_video(str(one)), 1: decode_video(str(two))}
    for i, (f, start) in enumerate([(0, s) for s in range(5)] + [(1, s) for s in range(3)]):
        ref = preprocess(torch.from_numpy(frames[f][start:start + 8]), 16)
        diff = (video[i] - ref).abs()
        # Colour conversion differs from libswscale by a few 1/255; geometry is checked exactly below.
        assert diff.mean() < 4 / 255 and diff.max() < 24 / 255, (i, diff.mean() * 255, diff.max() * 255)
    # Exact geometry: preprocess of DALI's own decoded frames equals the pipeline's output.
    raw = _raw_dali_windows(fn, str(two), 8)
    torch.testing.assert_close(video[5], preprocess(torch.from_numpy(raw), 16), rtol=0, atol=2e-5)


def test_dali_cpu_shards(vp9_folder):
    _dali_cpu_reader()
    from videogpt_fast.data.dali import DALIVideoLoader

    sizes = []
    for shard in range(2):
        with pytest.warns(RuntimeWarning):
            loader = DALIVideoLoader(str(vp9_folder), 8, resolution=8, batch_size=2, train=True, device="cpu",
                                     shard_id=shard, num_shards=2, cache_dir=False, num_threads=1)
        sizes.append(loader.num_clips)
        b = next(iter(loader))
        assert b["video"].shape == (2, 3, 8, 8, 8) and b["video"].abs().max() <= 0.5
    assert sum(sizes) == 8
    with pytest.raises(ValueError, match="shard_id"):
        DALIVideoLoader(str(vp9_folder), 8, device="cpu", shard_id=2, num_shards=2, cache_dir=False)


@pytest.mark.gpu
def test_dali_gpu_h264_matches_pyav(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("nvidia.dali", reason="needs NVIDIA DALI (pip install 'videogpt_fast[dali]')")
    from videogpt_fast.data.dali import DALIVideoLoader

    path = tmp_path / "train" / "c" / "v.mp4"
    path.parent.mkdir(parents=True)
    write_video_file(str(path), smooth_frames(24, 120, 160, seed=5))
    loader = DALIVideoLoader(str(tmp_path), 16, resolution=64, batch_size=3, train=False, cache_dir=False)
    b = next(iter(loader))
    assert b["video"].is_cuda and b["video"].shape == (3, 3, 16, 64, 64) and b["label"].tolist() == [0, 0, 0]
    frames = decode_video(str(path))
    for i in range(3):
        ref = preprocess(torch.from_numpy(frames[i:i + 16]), 64).cuda()
        diff = (b["video"][i] - ref).abs()
        assert diff.mean() < 4 / 255 and diff.max() < 24 / 255, (i, diff.mean() * 255, diff.max() * 255)
