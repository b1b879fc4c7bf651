"""Triton codebook search and EMA statistics (kernels/codebook.py) against float64 references.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here before
Triton is imported) on small shapes; with CUDA the same cases run compiled, and the ``gpu`` cases
check the paper size N=65,536, K=2048, D=256.
"""
from __future__ import annotations


import pytest
import torch

from conftest import KERNEL_DEVICE as DEVICE, require_triton  # noqa: E402

require_triton()

from videogpt_fast import ops  # noqa: E402
from videogpt_fast.backends import use_backend  # noqa: E402
from videogpt_fast.kernels import codebook as cb  # noqa: E402

POISON = -7


def _poisoned(n: int) -> torch.Tensor:
    return torch.full((n,), POISON, dtype=torch.int64, device=DEVICE)


def check_codes(codes: torch.Tensor, x: torch.Tensor, codebook: torch.Tensor, rel_tol: float = 1e-5) -> int:
    """Codes equal the float64 argmin wherever the float64 gap between the best and second-best
    code exceeds ``rel_tol`` x the distance scale; in the remaining near-ties the chosen code must
    be within that tolerance of the minimum. Returns the number of near-tie rows."""
    x64, e64 = x.double(), codebook.double()
    dist = torch.cdist(x64, e64) ** 2
    want = torch.argmin(dist, dim=1)
    assert codes.dtype == torch.int64 and codes.shape == want.shape
    assert ((codes >= 0) & (codes < codebook.shape[0])).all(), "codes out of range (unwritten output?)"
    tol = rel_tol * (x64.square().sum(1) + e64.square().sum(1).max()).clamp_min(1e-30)
    best = dist.gather(1, want[:, None])[:, 0]
    chosen = dist.gather(1, codes[:, None])[:, 0]
    assert (chosen - best <= tol).all(), "a code is farther than the tolerance from the nearest"
    if codebook.shape[0] > 1:
        second = dist.scatter(1, want[:, None], float("inf")).min(dim=1).values
        clear = second - best > tol
    else:
        clear = torch.ones_like(best, dtype=torch.bool)
    mismatch = (codes != want) & clear
    assert not mismatch.any(), f"{int(mismatch.sum())} rows differ from the float64 argmin"
    return int((~clear).sum())


@pytest.mark.parametrize("n,k,d", [(37, 50, 20), (1, 1, 3), (64, 33, 48), (20, 7, 130), (50, 100, 16)])
def test_matches_float64_fp32(n, k, d):
    x = torch.randn(n, d, device=DEVICE)
    e = torch.randn(k, d, device=DEVICE)
    out = _poisoned(n)
    codes = cb.codebook_nearest(x, e, out=out)
    assert codes.data_ptr() == out.data_ptr()
    assert check_codes(codes, x, e) <= max(1, n // 100)


@pytest.mark.parametrize("d", [256, 512])
def test_wide_d_equals_float64_argmin_ties_lowest(d):
    """D = 256 (the paper's) and 512, N and K not powers of two: the codes are exactly the float64
    argmin (first index on ties); exact duplicate codes in the same and in a later K tile tie at
    distance 0 and must resolve to the lowest index."""
    n, k = 37, 19
    x = torch.randn(n, d, device=DEVICE)
    e = torch.randn(k, d, device=DEVICE)
    e[9] = e[4]     # same 16-wide interpreter tile as 4
    e[17] = e[4]    # a later tile
    e[18] = e[11]   # a duplicate pair whose lower index is not the tile's first
    x[:3] = e[17]
    x[3] = e[18] + 1e-3 * torch.randn(d, device=DEVICE)
    x[4] = e[4] + 1e-3 * torch.randn(d, device=DEVICE)
    codes = cb.codebook_nearest(x, e, out=_poisoned(n))
    x64, e64 = x.double().cpu(), e.double().cpu()
    dist = ((x64[:, None, :] - e64[None, :, :]) ** 2).sum(-1)   # elementwise: exact ties stay exact
    want = torch.argmin(dist, dim=1)                             # first minimal index
    assert torch.equal(want[:5], torch.tensor([4, 4, 4, 11, 4]))
    assert torch.equal(codes.cpu(), want), f"differ at rows {(codes.cpu() != want).nonzero()[:, 0].tolist()}"
    assert not ((codes == 9) | (codes == 17) | (codes == 18)).any(), "a higher-index duplicate won a tie"
    check_codes(codes, x, e)
    # the fused-statistics kernel at the same D: same codes, sums over D in several column tiles
    codes2, counts, sums = cb.codebook_nearest_with_stats(x, e, out=_poisoned(n))
    assert torch.equal(codes2, codes)
    want_counts, want_sums = cb.ema_stats_reference(x.double(), codes, k)
    assert torch.equal(counts.double(), want_counts)
    torch.testing.assert_close(sums.double(), want_sums, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """Half inputs: products exact in fp32, so the codes are the float64 argmin of the rounded inputs."""
    x = torch.randn(45, 24, device=DEVICE).to(dtype)
    e = torch.randn(40, 24, device=DEVICE).to(dtype)
    check_codes(cb.codebook_nearest(x, e, out=_poisoned(45)), x, e)


def test_exact_ties_pick_lowest_index():
    d = 20
    e = torch.randn(40, d, device=DEVICE)
    e[5] = e[3]    # same tile as 3
    e[25] = e[3]   # later tiles (16-wide tiles in the interpreter)
    e[38] = e[3]
    x = torch.cat([e[[3, 5, 25, 38]], e[3] + 1e-3 * torch.randn(6, d, device=DEVICE)])
    assert (cb.codebook_nearest(x, e, out=_poisoned(10)) == 3).all()
    same = torch.randn(1, d, device=DEVICE).expand(37, d)  # every code identical (stride 0 rows)
    assert (cb.codebook_nearest(torch.randn(9, d, device=DEVICE), same) == 0).all()


def test_strided_inputs():
    big = torch.randn(30, 40, device=DEVICE)
    x = big[:, ::2]                               # stride along D = 2
    e = torch.randn(20, 35, device=DEVICE).t()    # (35, 20) with stride (1, 35)
    check_codes(cb.codebook_nearest(x, e, out=_poisoned(30)), x, e)
    out = torch.full((60,), POISON, dtype=torch.int64, device=DEVICE)[::2]  # strided out
    codes = cb.codebook_nearest(x, e, out=out)
    assert torch.equal(codes, cb.codebook_nearest(x.contiguous(), e.contiguous()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_stats_match_one_hot_formulas(dtype):
    n, k, d = 70, 9, 20   # many rows per code: concurrent atomics on one address
    x = torch.randn(n, d, device=DEVICE).to(dtype)
    e = torch.randn(k, d, device=DEVICE).to(dtype)
    codes, counts, sums = cb.codebook_nearest_with_stats(x, e, out=_poisoned(n))
    check_codes(codes, x, e)
    want_counts, want_sums = cb.ema_stats_reference(x.double(), codes, k)
    assert counts.dtype == sums.dtype == torch.float32
    assert torch.equal(counts.double(), want_counts) and counts.sum() == n
    torch.testing.assert_close(sums.double(), want_sums, atol=1e-5, rtol=1e-5)


def test_standalone_stats():
    n, k, d = 53, 6, 18
    x = torch.randn(n, d, device=DEVICE)
    codes = torch.randint(0, k, (n,), device=DEVICE)
    codes[:5] = k - 1
    for c in (codes, codes.int(), torch.stack([codes, codes], 1)[:, 0]):
        counts, sums = cb.codebook_ema_stats(x, c, k)
        want_counts, want_sums = cb.ema_stats_reference(x.double(), c.long(), k)
        assert torch.equal(counts.double(), want_counts)
        torch.testing.assert_close(sums.double(), want_sums, atol=1e-5, rtol=1e-5)


def test_through_ops_dispatch():
    x = torch.randn(40, 24, device=DEVICE)
    e = torch.randn(30, 24, device=DEVICE)
    with use_backend("triton"):
        codes = ops.codebook_nearest(x, e)
    with use_backend("torch"):
        want = ops.codebook_nearest(x, e)
    check_codes(codes, x, e)
    assert torch.equal(codes, want)


def test_empty_and_validation():
    e = torch.randn(5, 4, device=DEVICE)
    assert cb.codebook_nearest(torch.randn(0, 4, device=DEVICE), e).shape == (0,)
    x = torch.randn(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="shape"):
        cb.codebook_nearest(x, torch.randn(5, 3, device=DEVICE))
    with pytest.raises(ValueError, match="K >= 1"):
        cb.codebook_nearest(x, torch.randn(0, 4, device=DEVICE))
    with pytest.raises(ValueError, match="dtype"):
        cb.codebook_nearest(x, e.half())
    with pytest.raises(ValueError, match="dtype"):
        cb.codebook_nearest(x.double(), e.double())
    with pytest.raises(ValueError, match="precision"):
        cb.codebook_nearest(x, e, precision="fp64")
    with pytest.raises(ValueError, match="out"):
        cb.codebook_nearest(x, e, out=torch.empty(4, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="codes"):
        cb.codebook_ema_stats(x, torch.zeros(3, device=DEVICE), 5)
    with pytest.raises(ValueError, match="codes"):
        cb.codebook_ema_stats(x, torch.zeros(2, dtype=torch.int64, device=DEVICE), 5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            cb.codebook_nearest(x, e.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paper_size_gpu(dtype):
    """N=65,536, K=2048, D=256: the float64 argmin outside near-ties, and the same codes as the
    PyTorch reference path except where the float64 gap is below fp32 resolution."""
    n, k, d = 65536, 2048, 256
    x = torch.randn(n, d, device="cuda").to(dtype)
    e = torch.randn(k, d, device="cuda").to(dtype)
    codes = cb.codebook_nearest(x, e, out=_poisoned(n))
    near_ties = check_codes(codes, x, e)
    assert near_ties <= n // 1000
    if dtype == torch.float32:
        ref = cb.reference(x, e)
        x64, e64 = x.double(), e.double()
        differ = (codes != ref).nonzero()[:, 0]
        if len(differ):  # only allowed where both choices are within fp32 resolution of each other
            dist = ((x64[differ, None] - e64[torch.stack([codes[differ], ref[differ]], 1)]) ** 2).sum(-1)
            assert ((dist[:, 0] - dist[:, 1]).abs() <= 1e-5 * dist.max()).all()
        _, counts, sums = cb.codebook_nearest_with_stats(x, e)
        want_counts = torch.zeros(k, device="cuda").index_add_(0, codes, torch.ones(n, device="cuda"))
        want_sums = torch.zeros(k, d, device="cuda").index_add_(0, codes, x)
        assert torch.equal(counts, want_counts)
        torch.testing.assert_close(sums, want_sums, atol=1e-3, rtol=1e-4)


def test_ops_codebook_nearest_with_stats_triton_backend():
    """The model's training path (ops.codebook_nearest_with_stats) through the fused kernel."""
    x = torch.randn(77, 10, device=DEVICE)
    e = torch.randn(19, 10, device=DEVICE)
    with use_backend("triton"):
        codes, counts, sums = ops.codebook_nearest_with_stats(x, e)
    ref_codes = ops.codebook_nearest_torch(x, e)
    assert torch.equal(codes, ref_codes)
    ref_counts, ref_sums = ops.codebook_stats_torch(x, ref_codes, 19)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
