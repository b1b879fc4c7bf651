"""Data-loading case: clips/s at 16x128x128 from H.264 sources (~240p on GPU runs).

Implementations: ``reference`` = the PyAV DataLoader with one worker per usable core (this package's
CPU path; the original's torchvision ``VideoClips`` path is timed as ``torchvision`` when importable),
``dali`` = GPU decoding (CUDA + nvidia-dali). Goal on an H100: DALI >= 5x PyAV on the same machine.
Sources are generated once per process in a temporary folder.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import warnings
from typing import Iterator

import torch

from videogpt_fast.data import VideoDataset, build_dataloader, preprocess
from videogpt_fast.data.loaders import cpu_count
from videogpt_fast.data.synthetic import smooth_frames, write_video_file

from .harness import Case, Settings, register, synchronize

SEQ, RES = 16, 128


@functools.lru_cache(maxsize=None)
def _sources(n_videos: int, n_frames: int, hw: tuple) -> str:
    root = tempfile.mkdtemp(prefix="videogpt_fast_bench_videos_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for i in range(n_videos):
        path = os.path.join(root, "train", f"class{i % 2}", f"v{i}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_video_file(path, smooth_frames(n_frames, *hw, seed=i), options={"g": "16"})
    VideoDataset(root, SEQ, resolution=RES)  # index built outside the timed region
    return root


def _drain(make_iter, n_batches: int, device: torch.device, to_device: bool):
    """Clips delivered by ``n_batches`` batches (moved to ``device`` when asked)."""
    n, it = 0, make_iter()
    for i, batch in enumerate(it):
        video = batch["video"].to(device, non_blocking=True) if to_device else batch["video"]
        n += video.shape[0]
        shape = tuple(video.shape[1:])
        if i + 1 >= n_batches:
            break
    synchronize(device)
    return torch.tensor([n, *shape])


def _torchvision_loader(root: str, batch: int):
    from torchvision.datasets import video_utils
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(root, "train")) for f in fs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = video_utils.VideoClips(files, SEQ, num_workers=0)

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return clips.num_clips()

        def __getitem__(self, i):
            return dict(video=preprocess(clips.get_clip(i)[0], RES))

    return torch.utils.data.DataLoader(Clips(), batch_size=batch, num_workers=cpu_count(), shuffle=True,
                                       drop_last=True, persistent_workers=True)


@register("data_loading")
def data_cases(s: Settings) -> Iterator[Case]:
    dev = s.device
    quick = s.quick or dev.type == "cpu"
    n_videos, n_frames, hw, batch, n_batches = (4, 24, (96, 128), 4, 2) if quick else (16, 64, (240, 320), 16, 20)
    root = _sources(n_videos, n_frames, hw)
    workers = cpu_count()
    pyav = build_dataloader(dict(data_path=root, sequence_length=SEQ, resolution=RES, batch_size=batch,
                                 num_workers=workers, persistent_workers=True, drop_last=True))

    def same_shape(ref, out):
        if not torch.equal(ref, out):
            raise AssertionError(f"delivered (clips, C, T, H, W) {out.tolist()} != reference {ref.tolist()}")
        return f"delivered {out.tolist()}"

    case = Case("data_loading", "data", dict(clip=(SEQ, RES, RES), source=f"{hw[0]}x{hw[1]} H.264", batch=batch,
                                            batches=n_batches, cpu_workers=workers), "uint8->float32",
                impls={"reference": lambda: _drain(lambda: iter(pyav), n_batches, dev, dev.type == "cuda")},
                items=float(batch * n_batches), item_unit="clips", check=same_shape,
                tolerance="same clips: the same number of clips of the same shape as the reference loader")
    from videogpt_fast.data.dali import DALIVideoLoader, dali_status
    ok, reason = dali_status("gpu")
    if ok and dev.type == "cuda":
        dali = DALIVideoLoader(root, SEQ, resolution=RES, batch_size=batch, train=True, num_threads=4)
        case.impls["dali"] = lambda: _drain(lambda: iter(dali), n_batches, dev, False)
    else:
        case.skipped["dali"] = reason if not ok else "DALI decodes on the GPU: timed only with --device cuda"
    try:
        tv = _torchvision_loader(root, batch)
        case.impls["torchvision"] = lambda: _drain(lambda: iter(tv), n_batches, dev, dev.type == "cuda")
    except ImportError:
        case.skipped["torchvision"] = "torchvision (the original's VideoClips path) is not installed"
    except Exception as e:  # an incompatible torchvision: say so in the results rather than abort the run
        case.skipped["torchvision"] = f"torchvision's VideoClips failed: {type(e).__name__}: {e}"
    yield case
