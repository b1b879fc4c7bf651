"""Shared test fixtures: the reference fixture folder and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Triton kernels run compiled on CUDA, else in Triton's CPU interpreter; this must be set before
# triton is first imported, which is why it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
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
