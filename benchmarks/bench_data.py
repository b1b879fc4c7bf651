"""Clips/s of the video loaders at 16x128x128 from ~240p H.264 sources.

Cases: the PyAV DataLoader with one worker per usable core, the DALI GPU loader (skipped with the
reason when DALI or CUDA is missing), and torchvision's ``VideoClips`` (the original's path; skipped
when torchvision is not importable). Goal on an H100: DALI >= 5x PyAV on the same machine.

Sources are generated in a temporary folder. ``VIDEOGPT_FAST_BENCH_QUICK=1`` (the default without
CUDA) uses 4 short 96x128 videos and 2 batches so the file runs in seconds on a CPU;
``VIDEOGPT_FAST_BENCH_QUICK=0`` uses 16 videos of 240x320, 64 frames, and 20 batches of 16.

    pytest benchmarks/bench_data.py --benchmark-only
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from videogpt_fast.data import VideoDataset, build_dataloader
from videogpt_fast.data.loaders import cpu_count
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

QUICK = os.environ.get("VIDEOGPT_FAST_BENCH_QUICK", "0" if torch.cuda.is_available() else "1") == "1"
SEQ, RES = 16, 128
if QUICK:
    N_VIDEOS, N_FRAMES, HW, BATCH, N_BATCHES = 4, 24, (96, 128), 4, 2
else:
    N_VIDEOS, N_FRAMES, HW, BATCH, N_BATCHES = 16, 64, (240, 320), 16, 20


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_videos")
    for i in range(N_VIDEOS):
        path = root / "train" / f"class{i % 2}" / f"v{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(path), smooth_frames(N_FRAMES, *HW, seed=i), options={"g": "16"})
    VideoDataset(str(root), SEQ, resolution=RES)  # build the index cache outside the timed region
    return str(root)


def _clips_per_s(benchmark, make_iter, to_device=None):
    def run():
        n, it = 0, make_iter()
        for i, batch in enumerate(it):
            video = batch["video"]
            if to_device is not None:
                video = video.to(to_device, non_blocking=True)
            n += video.shape[0]
            if i + 1 >= N_BATCHES:
                break
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return n

    n = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=1 if not QUICK else 0)
    benchmark.extra_info.update(clips=n, clips_per_s=n / benchmark.stats.stats.mean, seq=SEQ, resolution=RES,
                                source=f"{HW[0]}x{HW[1]} H.264", quick=QUICK,
                                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    assert n == N_BATCHES * BATCH


def test_pyav_dataloader_all_cores(benchmark, sources):
    workers = cpu_count()
    loader = build_dataloader(dict(data_path=sources, sequence_length=SEQ, resolution=RES, batch_size=BATCH,
                                   num_workers=workers, persistent_workers=True, drop_last=True))
    benchmark.extra_info["num_workers"] = workers
    dev = "cuda" if torch.cuda.is_available() else None
    _clips_per_s(benchmark, lambda: iter(loader), to_device=dev)


def test_dali_gpu(benchmark, sources):
    from videogpt_fast.data.dali import DALIVideoLoader, dali_status

    ok, reason = dali_status("gpu")
    if not ok:
        pytest.skip(reason)
    loader = DALIVideoLoader(sources, SEQ, resolution=RES, batch_size=BATCH, train=True, num_threads=4)
    _clips_per_s(benchmark, lambda: iter(loader))


def test_torchvision_videoclips(benchmark, sources):
    video_utils = pytest.importorskip("torchvision.datasets.video_utils",
                                      reason="torchvision (the original's VideoClips path) is not installed")
    from videogpt_fast.data import preprocess

    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(sources, "train")) for f in fs
                   if f.endswith(".mp4"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = video_utils.VideoClips(files, SEQ, num_workers=0)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return clips.num_clips()

        def __getitem__(self, i):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dict(video=preprocess(clips.get_clip(i)[0], RES))

    loader = torch.utils.data.DataLoader(DS(), batch_size=BATCH, num_workers=cpu_count(), shuffle=True,
                                         drop_last=True, persistent_workers=True)
    _clips_per_s(benchmark, lambda: iter(loader))
