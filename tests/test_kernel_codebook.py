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
from videogpt_fast.kernels import reference as R  # noqa: E402

POISON = -7


def _poisoned(n: int) -> torch.Tensor:
    return torch.full((n,), POISON, dtype=torch.int64, device=DEVICE)


def check_codes(codes: torch.Tensor, x: torch.Tensor, codebook: torch.Tensor) -> None:
    """Codes are exactly the float64 argmin (elementwise distances, lowest index on ties)."""
    want = R.codebook_nearest_reference_float64(x, codebook)
    assert codes.dtype == torch.int64 and codes.shape == want.shape
    assert ((codes >= 0) & (codes < codebook.shape[0])).all(), "codes out of range (unwritten output?)"
    differ = (codes != want).nonzero()[:, 0]
    assert len(differ) == 0, f"{len(differ)} rows differ from the float64 argmin, e.g. rows {differ[:5].tolist()}"


def _near_tie_data(n_clusters: int, per_cluster: int, d: int, rows_per_cluster: int, spread: float = 1e-3):
    """Codes in tight clusters (``per_cluster`` codes within ``spread`` of a centre) and rows near
    the centres: within a cluster the distances differ by ~spread^2 * D, far below the TF32
    rounding bound of the scores (~1e-3 |x| |e|), far above float64 resolution."""
    centres = torch.randn(n_clusters, d, device=DEVICE) * 2
    e = (centres.repeat_interleave(per_cluster, 0)
         + spread * torch.randn(n_clusters * per_cluster, d, device=DEVICE))
    e = e[torch.randperm(e.shape[0], device=DEVICE)]           # clusters spread over K tiles
    x = centres.repeat_interleave(rows_per_cluster, 0) + spread * torch.randn(
        n_clusters * rows_per_cluster, d, device=DEVICE)
    return x, e


@pytest.mark.parametrize("n,k,d", [(37, 50, 20), (1, 1, 3), (64, 33, 48), (20, 7, 130), (50, 100, 16)])
def test_matches_float64_fp32(n, k, d):
    x = torch.randn(n, d, device=DEVICE)
    e = torch.randn(k, d, device=DEVICE)
    out = _poisoned(n)
    codes = cb.codebook_nearest(x, e, out=out)
    assert codes.data_ptr() == out.data_ptr()
    check_codes(codes, x, e)


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
    want_counts, want_sums = R.codebook_stats_reference_onehot(x.double(), codes, k)
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
    want_counts, want_sums = R.codebook_stats_reference_onehot(x.double(), codes, k)
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
        want_counts, want_sums = R.codebook_stats_reference_onehot(x.double(), c.long(), k)
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
    """x and the codebook are checked once, by the dispatch point (here choosing the Triton
    backend); the kernels check only their own arguments (precision, out, unsure, codes)."""
    e = torch.randn(5, 4, device=DEVICE)
    assert cb.codebook_nearest(torch.randn(0, 4, device=DEVICE), e).shape == (0,)
    x = torch.randn(3, 4, device=DEVICE)
    with use_backend("triton"):
        with pytest.raises(ValueError, match="shape"):
            ops.codebook_nearest(x, torch.randn(5, 3, device=DEVICE))
        with pytest.raises(ValueError, match="K >= 1"):
            ops.codebook_nearest(x, torch.randn(0, 4, device=DEVICE))
        with pytest.raises(ValueError, match="dtype"):
            ops.codebook_nearest(x, e.half())
        with pytest.raises(ValueError, match="dtype"):
            ops.codebook_nearest(x.double(), e.double())
        if torch.cuda.is_available():
            with pytest.raises(ValueError, match="device"):
                ops.codebook_nearest(x, e.cpu())
    with pytest.raises(ValueError, match="precision"):
        cb.codebook_nearest(x, e, precision="fp64")
    with pytest.raises(ValueError, match="out"):
        cb.codebook_nearest(x, e, out=torch.empty(4, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="unsure"):
        cb.codebook_nearest(x, e, unsure=torch.zeros(1, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="codes"):
        cb.codebook_ema_stats(x, torch.zeros(3, device=DEVICE), 5)
    with pytest.raises(ValueError, match="codes"):
        cb.codebook_ema_stats(x, torch.zeros(2, dtype=torch.int64, device=DEVICE), 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paper_size_gpu(dtype):
    """N=65,536, K=2048, D=256: exactly the float64 argmin in every dtype; fused statistics equal
    index_add_ of the same codes."""
    n, k, d = 65536, 2048, 256
    x = torch.randn(n, d, device="cuda").to(dtype)
    e = torch.randn(k, d, device="cuda").to(dtype)
    unsure = torch.zeros(1, dtype=torch.int32, device="cuda")
    codes = cb.codebook_nearest(x, e, out=_poisoned(n), unsure=unsure)
    check_codes(codes, x, e)
    assert int(unsure) <= n // 100, f"{int(unsure)} rows needed the full float64 scan"
    codes2, counts, sums = cb.codebook_nearest_with_stats(x, e)
    assert torch.equal(codes2, codes)
    want_counts = torch.zeros(k, device="cuda").index_add_(0, codes, torch.ones(n, device="cuda"))
    want_sums = torch.zeros(k, d, device="cuda").index_add_(0, codes, x.float())
    assert torch.equal(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("precision", ["tf32", "tf32x3", "ieee"])
def test_near_ties_within_tf32_bound_are_exact(precision):
    """Clusters of 3 near-identical codes: the TF32 scores cannot order a cluster (the raw
    tensor-core argmin is wrong on many rows, which shows the data is hard), yet the refined codes
    are exactly the float64 argmin, through the certified top-4 list (no full scan)."""
    torch.manual_seed(1)
    # (TOPK is 2 for tf32x3/ieee, whose lists of a 3-code cluster are uncertified: full scans)
    x, e = _near_tie_data(n_clusters=12 if precision == "tf32" else 3, per_cluster=3, d=40, rows_per_cluster=4)
    n = x.shape[0]
    gaps = torch.cdist(x.double(), e.double()).square().sort(1).values
    bound = cb.dot_error_bound(40, torch.float32, "tf32") * x.norm(dim=1) * e.norm(dim=1).max()
    assert ((gaps[:, 1] - gaps[:, 0]).cpu() < bound.double().cpu()).all(), "not near-ties under TF32"
    want = R.codebook_nearest_reference_float64(x, e)
    unsure = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    codes = cb._launch(x, e, _poisoned(n), precision, stats=False, unsure=unsure)[0]
    check_codes(codes, x, e)
    if precision == "tf32":
        assert int(unsure) == 0, "the 4th candidate is in another cluster: every list is certified"
        raw = cb._launch(x, e, _poisoned(n), precision, stats=False, refine=False)[0]
        assert (raw != want).sum() >= 5, "the raw TF32 argmin should miss near-ties"


def test_more_near_ties_than_candidates_take_the_float64_scan():
    """Clusters of 6 codes (more than the 4 kept candidates) and exact duplicates: uncertified
    rows are rescanned over all codes in float64, with the lowest index on exact ties."""
    torch.manual_seed(2)
    x, e = _near_tie_data(n_clusters=5, per_cluster=6, d=24, rows_per_cluster=5)
    e[7] = e[3]                      # exact duplicates
    x[0] = e[3]
    unsure = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    codes, counts, sums = cb._launch(x, e, _poisoned(25), None, stats=True, unsure=unsure)
    check_codes(codes, x, e)
    assert int(codes[0]) == 3
    assert 0 < int(unsure) <= 25
    want_counts, want_sums = R.codebook_stats_reference_onehot(x.double(), codes, e.shape[0])
    assert torch.equal(counts.double(), want_counts)
    torch.testing.assert_close(sums.double(), want_sums, atol=1e-5, rtol=1e-5)


def test_interpreter_dot_rounds_like_tf32():
    """The CPU interpreter's fp32 ``tl.dot`` is patched to round TF32 operands as the GPU does, so
    that the tests above see TF32 errors; check the rounding (to nearest, ties away) itself."""
    import numpy as np
    from videogpt_fast.kernels._interpreter import to_tf32
    a = np.array([1.0, 1 + 2.0 ** -11, 1 + 2.0 ** -12, 1 + 3 * 2.0 ** -12, -(1 + 2.0 ** -11), np.inf], np.float32)
    want = np.array([1.0, 1 + 2.0 ** -10, 1.0, 1 + 2.0 ** -10, -(1 + 2.0 ** -10), np.inf], np.float32)
    assert np.array_equal(to_tf32(a), want)


@pytest.mark.parametrize("n,k,d,dtype", [(65536, 2048, 256, torch.float32), (65536, 2048, 256, torch.bfloat16),
                                         (1000, 513, 100, torch.float16), (37, 5, 3, torch.float32)])
@pytest.mark.parametrize("stats", [False, True])
def test_at_most_two_compiled_variants(n, k, d, dtype, stats, monkeypatch):
    """One launch config per (op, shape, dtype) on GPU (no autotuning storm); the sweep for
    tuning sessions only with VIDEOGPT_FAST_AUTOTUNE=1."""
    from videogpt_fast.kernels import tuning as _tuning
    monkeypatch.setattr(_tuning, "interpret", lambda: False)
    monkeypatch.setattr(cb, "_interpret", lambda: False)
    monkeypatch.delenv(_tuning.ENV_VAR, raising=False)
    monkeypatch.setattr(cb, "arch", lambda device: 90)
    variants = cb.compiled_variants(n, k, d, dtype, stats=stats)
    assert list(variants) == ["codebook_search"] and len(variants["codebook_search"]) == 1
    cfg = variants["codebook_search"][0]
    assert {"BLOCK_N", "BLOCK_K", "BLOCK_D", "num_warps", "num_stages", "TOPK"} <= set(cfg)
    monkeypatch.setenv(_tuning.ENV_VAR, "1")
    assert len(cb.compiled_variants(n, k, d, dtype, stats=stats)["codebook_search"]) == len(cb._SWEEP)


def test_launch_uses_the_listed_config(monkeypatch):
    """The config a call launches is the one compiled_variants reports (a spy replaces the kernel)."""
    launched = []

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append((grid, meta))

    monkeypatch.setattr(cb._search, "kernel", Spy())
    x, e = torch.randn(70, 20, device=DEVICE), torch.randn(9, 20, device=DEVICE)
    cb.codebook_nearest(x, e)
    (grid, meta), = launched
    (cfg,), = cb.compiled_variants(70, 9, 20, torch.float32, device=DEVICE).values()
    assert {k: meta[k] for k in cfg} == cfg and grid == (-(-70 // cfg["BLOCK_N"]),)


def test_ops_codebook_nearest_with_stats_triton_backend():
    """The model's training path (ops.codebook_nearest_with_stats) through the fused kernel."""
    x = torch.randn(77, 10, device=DEVICE)
    e = torch.randn(19, 10, device=DEVICE)
    with use_backend("triton"):
        codes, counts, sums = ops.codebook_nearest_with_stats(x, e)
    ref_codes = R.codebook_nearest_reference(x, e)
    assert torch.equal(codes, ref_codes)
    ref_counts, ref_sums = R.codebook_stats_reference(x, ref_codes, 19)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_compiles_at_most_two_variants(dtype):
    """What Triton actually compiles for the search and the fused-statistics search of one shape
    and dtype (two calls, two N of the same specialisation): at most 2 binaries per op."""
    from videogpt_fast.kernels.tuning import compiled_count
    x = torch.randn(4103, 256, device="cuda").to(dtype)
    e = torch.randn(1000, 256, device="cuda").to(dtype)
    for stats in (False, True):
        before = compiled_count(cb._search.kernel)
        for n in (4103, 4099):
            cb._launch(x[:n], e, None, None, stats=stats)
        assert compiled_count(cb._search.kernel) - before <= 2
