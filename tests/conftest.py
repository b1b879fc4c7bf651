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
