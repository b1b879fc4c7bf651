"""Triton axial attention (kernels/axial_attention.py) against float64 references.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here before
Triton is imported) on small shapes; with CUDA the same small cases run compiled on the GPU, and
the ``gpu`` cases check the paper sizes in fp32/bf16/fp16.
"""
from __future__ import annotations

import pytest
import torch

from conftest import KERNEL_DEVICE as DEVICE, poison_allocations, require_triton  # noqa: E402

require_triton()

from videogpt_fast import ops  # noqa: E402
from videogpt_fast.backends import use_backend  # noqa: E402
from videogpt_fast.kernels import axial_attention as ax  # noqa: E402
from videogpt_fast.kernels import reference as R  # noqa: E402


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the launcher allocates (outputs, gradients, log-sum-exp) starts as NaN."""
    poison_allocations(monkeypatch)


def _f64_reference(q, k, v, dim, grad):
    """Output and (dq, dk, dv) of the original formulation in float64."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = R.axial_attention_reference_explicit(q64, k64, v64, dim)
    return (out, *torch.autograd.grad(out, (q64, k64, v64), grad.double()))


def _run(q, k, v, dim, grad, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = ax.axial_attention(q, k, v, dim, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def _check(got, want, atol, rtol, what=""):
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape, f"{what} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{what} {name}: non-finite values (unwritten output?)"
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m: f"{what} {name}: {m}")


# (shape (B, heads, *spatial, d), dv, dim, block): odd axis lengths, every spatial axis, head dims
# 8/12/20/120, dv != d, axes longer than one block (-> loops and the separate dq kernel)
CASES = [
    ((2, 2, 3, 5, 12), 12, 2, 64),
    ((2, 2, 3, 5, 12), 12, 3, 64),
    ((2, 2, 3, 5, 12), 12, -2, 64),
    ((2, 1, 3, 5, 7, 8), 8, 2, 64),
    ((2, 1, 3, 5, 7, 8), 8, 3, 64),
    ((1, 1, 3, 5, 7, 8), 8, 4, 64),
    ((1, 2, 2, 3, 120), 120, 3, 64),
    ((2, 2, 6, 20), 12, 2, 64),
    ((1, 2, 7, 4, 20), 20, 2, 4),
    ((1, 1, 2, 13, 8), 12, 3, 4),
    ((1, 1, 17, 2, 120), 120, 2, 64),   # fp32 at d=120 caps tiles at 16 positions: two blocks
    # the GPT's head dim 144 (576 / 4), padded to 256 lanes by masking
    ((1, 2, 3, 5, 144), 144, 2, 64),
    ((1, 2, 3, 5, 144), 144, 3, 64),
    ((1, 2, 4, 3, 144), 120, 3, 64),    # dv != d
    ((1, 1, 11, 2, 144), 144, 2, 64),   # fp32 at d=144 caps tiles at 8 positions: two blocks, dq kernel
    ((1, 1, 2, 9, 120), 144, 3, 64),    # d=120 with dv=144: 256-lane tiles, two blocks
]


@pytest.mark.parametrize("shape,dv,dim,block", CASES)
def test_forward_backward_fp32(shape, dv, dim, block):
    q, k = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    v = torch.randn(*shape[:-1], dv, device=DEVICE)
    grad = torch.randn(*shape[:-1], dv, device=DEVICE)
    want = _f64_reference(q, k, v, dim, grad)
    got = _run(q, k, v, dim, grad, block=block)
    _check(got, want, atol=2e-5, rtol=1e-4, what=f"{shape} dim={dim}")


def test_strided_inputs_and_output_layout():
    """q, k, v as views of one (B, T, W, 3, heads, d + pad) projection, a transposed grad and a
    head-dim stride != 1: no copies, and the output keeps q's memory order."""
    B, T, W, heads, d = 2, 3, 5, 2, 12
    qkv = torch.randn(B, T, W, 3, heads, d + 4, device=DEVICE)
    q, k, v = (qkv[..., i, :, :d].permute(0, 3, 1, 2, 4) for i in range(3))  # (B, heads, T, W, d)
    assert not q.is_contiguous()
    grad = torch.randn(B, heads, W, T, d, device=DEVICE).transpose(2, 3)
    for dim in (2, 3):
        want = _f64_reference(q, k, v, dim, grad)
        got = _run(q, k, v, dim, grad)
        _check(got, want, atol=2e-5, rtol=1e-4, what=f"views dim={dim}")
        assert got[0].permute(0, 2, 3, 1, 4).is_contiguous(), "output not in q's memory order"
    # head dim with stride != 1
    base = torch.randn(2, 2, d, 5, 3, device=DEVICE)
    q2 = base.permute(0, 1, 3, 4, 2)
    want = _f64_reference(q2, q2 * 0.5, q2, 3, torch.ones_like(q2))
    got = _run(q2, q2 * 0.5, q2, 3, torch.ones_like(q2))
    _check(got, want, atol=2e-5, rtol=1e-4, what="head-dim stride")


@pytest.mark.parametrize("shape,dim", [((2, 2, 5, 6, 20), 3), ((1, 2, 3, 17, 144), 3)], ids=["d20", "d144"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype, shape, dim):
    """bf16/fp16: error against float64 at most ~2x that of PyTorch in the same dtype (d=144: 16-row
    tiles, two blocks along the axis)."""
    q, k, v, grad = (torch.randn(shape, device=DEVICE).to(dtype) for _ in range(4))
    want = _f64_reference(q, k, v, dim, grad)
    got = _run(q, k, v, dim, grad)
    qt, kt, vt = (t.detach().requires_grad_() for t in (q, k, v))
    out_t = R.axial_attention_reference_explicit(qt, kt, vt, dim)
    base = (out_t, *torch.autograd.grad(out_t, (qt, kt, vt), grad))
    for name, g, b, w in zip(("out", "dq", "dk", "dv"), got, base, want):
        assert g.dtype == dtype and torch.isfinite(g).all(), name
        err = (g.double() - w).abs().max().item()
        err_torch = (b.double() - w).abs().max().item()
        assert err <= 2 * err_torch + 1e-3, f"{dtype} {name}: error {err:.3g} vs PyTorch {err_torch:.3g}"


def test_no_grad_path_and_empty():
    q, k, v = (torch.randn(2, 2, 3, 4, 8, device=DEVICE) for _ in range(3))
    with torch.no_grad():
        out = ax.axial_attention(q, k, v, 2)
    torch.testing.assert_close(out.double(), R.axial_attention_reference_explicit(q.double(), k.double(), v.double(), 2),
                               atol=2e-5, rtol=1e-4)
    empty = torch.randn(0, 2, 3, 4, 8, device=DEVICE)
    assert ax.axial_attention(empty, empty, empty, 2).shape == (0, 2, 3, 4, 8)


def test_through_ops_dispatch():
    q, k, v = (torch.randn(2, 2, 3, 5, 12, device=DEVICE, requires_grad=True) for _ in range(3))
    with use_backend("triton"):
        out = ops.axial_attention(q, k, v, -2)
    with use_backend("torch"):
        want = ops.axial_attention(q, k, v, -2)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g),
                               atol=2e-5, rtol=1e-4)


def test_validation():
    """Inputs are checked once, by the dispatch point (here choosing the Triton backend); the
    kernel checks only its own tiling arguments."""
    q = torch.randn(2, 2, 3, 4, 8, device=DEVICE)
    with use_backend("triton"):
        with pytest.raises(ValueError, match="shape"):
            ops.axial_attention(q, q[..., :2, :], q, 2)
        with pytest.raises(ValueError, match="spatial axis"):
            ops.axial_attention(q, q, q, 1)
        with pytest.raises(ValueError, match="spatial axis"):
            ops.axial_attention(q, q, q, -1)
        with pytest.raises(ValueError, match="dtype"):
            ops.axial_attention(q, q.half(), q, 2)
        with pytest.raises(ValueError, match="dtype"):
            ops.axial_attention(q.double(), q.double(), q.double(), 2)
        big = torch.randn(1, 1, 2, 2, 300, device=DEVICE)
        with pytest.raises(ValueError, match="head dims"):
            ops.axial_attention(big, big, big, 2)
        if torch.cuda.is_available():
            with pytest.raises(ValueError, match="device"):
                ops.axial_attention(q, q.cpu(), q, 2)
    with pytest.raises(ValueError, match="power of two"):
        ax.axial_attention(q, q, q, 2, block=24)
    with pytest.raises(ValueError, match="min_rows"):
        ax.axial_attention(q, q, q, 2, min_rows=8)
    with pytest.raises(ValueError, match="spatial axis"):
        ax.axial_attention(q, q, q, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("latent", [(4, 32, 32), (8, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paper_sizes_gpu(latent, dtype):
    """VQ-VAE AxialBlock sizes: batch 16, 240 channels = 2 heads x 120, every axis."""
    shape = (16, 2, *latent, 120)
    q, k, v, grad = (torch.randn(shape, device="cuda").to(dtype) for _ in range(4))
    for dim in (2, 3, 4):
        want = _f64_reference(q, k, v, dim, grad)
        got = _run(q, k, v, dim, grad)
        if dtype == torch.float32:
            _check(got, want, atol=1e-4, rtol=1e-4, what=f"{latent} dim={dim}")
            continue
        qt, kt, vt = (t.detach().requires_grad_() for t in (q, k, v))
        out_t = R.axial_attention_reference_explicit(qt, kt, vt, dim)
        base = (out_t, *torch.autograd.grad(out_t, (qt, kt, vt), grad))
        for name, g, b, w in zip(("out", "dq", "dk", "dv"), got, base, want):
            err = (g.double() - w).abs().max().item()
            err_torch = (b.double() - w).abs().max().item()
            assert err <= 2 * err_torch + 1e-3, f"{dtype} {latent} dim={dim} {name}: {err:.3g} vs {err_torch:.3g}"


def test_launches_use_the_listed_configs(monkeypatch):
    """Every launch (forward, fused backward, separate dq for long axes) uses the tile of the
    call's _Config and exactly the config compiled_variants lists for that shape and dtype."""
    launched = []

    class Spy:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            def run(*args, **meta):
                launched.append((self.name, grid, meta))
                return self.kernel[grid](*args, **meta)
            return run

    for name, launcher in ax._LAUNCHERS.items():
        monkeypatch.setattr(launcher, "kernel", Spy(launcher.kernel, name))
    shape = (2, 2, 3, 80, 24)   # 80 > 64 positions: separate dq kernel in the backward
    q = torch.randn(shape, device=DEVICE)
    out, *grads = _run(q, q, q, 3, torch.ones_like(q))
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    listed = ax.compiled_variants(shape, 24, 3, q.dtype)
    assert [n for n, _, _ in launched] == ["fwd", "bwd", "bwd_dq"] == list(listed)
    cfg = ax._Config(q, q, 3, 64, 16)
    for name, grid, meta in launched:
        (want,) = listed[name]
        assert grid == cfg.grid and {k: meta[k] for k in want} == want


@pytest.mark.parametrize("latent", [(4, 32, 32), (8, 32, 32), (16, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_at_most_two_compiled_variants(latent, dtype, monkeypatch):
    """The VQ-VAE's sizes (B=16, 2 heads x 120) on every axis: one config per kernel, shape and
    dtype, so a first call compiles 2-3 kernels, not 6 warp/stage variants of each; the sweep over
    _WARP_CONFIGS only with VIDEOGPT_FAST_AUTOTUNE=1."""
    from videogpt_fast.kernels import tuning as _tuning
    monkeypatch.setattr(_tuning, "interpret", lambda: False)
    monkeypatch.delenv(_tuning.ENV_VAR, raising=False)
    for dim in (2, 3, 4):
        variants = ax.compiled_variants((16, 2, *latent, 120), 120, dim, dtype)
        assert {"fwd", "bwd"} <= set(variants) and all(len(v) == 1 for v in variants.values())
    monkeypatch.setenv(_tuning.ENV_VAR, "1")
    assert len(ax.compiled_variants((16, 2, *latent, 120), 120, 2, dtype)["fwd"]) == len(ax._WARP_CONFIGS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_compiles_at_most_two_variants(dtype):
    """Forward + backward along each axis of a VQ-VAE latent compile at most 2 binaries per
    kernel and axis (no autotuning of warps/stages)."""
    from videogpt_fast.kernels.tuning import compiled_count
    shape = (16, 2, 4, 32, 32, 120)
    for dim in (2, 3, 4):
        before = {n: compiled_count(lz.kernel) for n, lz in ax._LAUNCHERS.items()}
        for _ in range(2):
            q, k, v, grad = (torch.randn(shape, device="cuda").to(dtype) for _ in range(4))
            _run(q, k, v, dim, grad)
        for n, lz in ax._LAUNCHERS.items():
            assert compiled_count(lz.kernel) - before[n] <= 2, (dim, n)
