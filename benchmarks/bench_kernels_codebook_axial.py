"""pytest-benchmark cases: Triton codebook search and axial attention against their references.

Run on a GPU machine::

    pytest benchmarks/bench_kernels_codebook_axial.py --benchmark-group-by=param:case \
        --benchmark-json=benchmarks/results_codebook_axial.json

Each group holds one problem timed under every implementation, so ratios come from one process:

* codebook (N=65,536, K=2048, D=256): ``reference`` (the original's distance matrix + argmin,
  ``ops.codebook_nearest_torch``), ``triton``; EMA statistics: ``one_hot`` (the original's
  formulas), ``index_add`` and ``triton_fused`` (search + statistics in one kernel).
* axial attention fwd+bwd on VQ-VAE latents (batch 16, 2 heads x 120, 4x32x32 and 8x32x32, every
  axis): ``reference`` (the original: move the axis, flatten (copies), explicit softmax),
  ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention`` on the moved axis) and ``triton``.

Goals (H100): codebook >= 5x reference with identical codes; axial fwd+bwd >= 3x reference.
Skipped without CUDA: CPU timings of the interpreter mean nothing.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA device")]

triton = pytest.importorskip("triton", reason="triton is not installed")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(benchmark, fn, rounds: int = 20, warmup: int = 3):
    """Benchmark ``fn`` with a device synchronisation inside the timed call."""
    def run():
        result = fn()
        torch.cuda.synchronize()
        return result
    return benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)


# --------------------------------------------------------------------------------------------
# codebook
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codebook_data():
    torch.manual_seed(0)
    n, k, d = 65536, 2048, 256
    return torch.randn(n, d, device="cuda"), torch.randn(k, d, device="cuda")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_codebook_nearest(benchmark, codebook_data, impl, dtype):
    from videogpt_fast.kernels import codebook as cb
    x, e = (t.to(DTYPES[dtype]) for t in codebook_data)
    benchmark.extra_info.update(case=f"codebook_nearest N=65536 K=2048 D=256 {dtype}", impl=impl,
                                device=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=triton.__version__)
    fn = {"reference": lambda: cb.reference(x, e), "triton": lambda: cb.codebook_nearest(x, e)}[impl]
    codes = _timed(benchmark, fn)
    if impl == "triton" and dtype == "fp32":
        ref = cb.reference(x, e)
        benchmark.extra_info["codes_differing_from_reference"] = int((codes != ref).sum())


@pytest.mark.parametrize("impl", ["one_hot", "index_add", "triton_fused"])
def test_codebook_search_and_ema_stats(benchmark, codebook_data, impl):
    from videogpt_fast.kernels import codebook as cb
    x, e = codebook_data
    k = e.shape[0]
    benchmark.extra_info.update(case="codebook search + EMA stats N=65536 K=2048 D=256 fp32", impl=impl,
                                device=torch.cuda.get_device_name())

    def one_hot():
        codes = cb.reference(x, e)
        return (codes, *cb.ema_stats_reference(x, codes, k))

    def index_add():
        codes = cb.reference(x, e)
        counts = torch.zeros(k, device=x.device).index_add_(0, codes, torch.ones_like(codes, dtype=x.dtype))
        return codes, counts, torch.zeros_like(e).index_add_(0, codes, x)

    fn = {"one_hot": one_hot, "index_add": index_add,
          "triton_fused": lambda: cb.codebook_nearest_with_stats(x, e)}[impl]
    _timed(benchmark, fn)


# --------------------------------------------------------------------------------------------
# axial attention
# --------------------------------------------------------------------------------------------
AXES = {2: "T", 3: "H", 4: "W"}


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("latent", [(4, 32, 32), (8, 32, 32)], ids=["4x32x32", "8x32x32"])
@pytest.mark.parametrize("dim", [2, 3, 4], ids=["T", "H", "W"])
@pytest.mark.parametrize("impl", ["reference", "sdpa", "triton"])
def test_axial_attention_fwd_bwd(benchmark, impl, dim, latent, dtype):
    from videogpt_fast.kernels import axial_attention as ax
    torch.manual_seed(0)
    shape = (16, 2, *latent, 120)
    # q, k, v as the AxialBlock makes them: views of (B, *latent, heads, d) projections
    q, k, v = (torch.randn(16, *latent, 2, 120, device="cuda", dtype=DTYPES[dtype])
               .movedim(-2, 1).requires_grad_() for _ in range(3))
    assert q.shape == shape
    grad = torch.randn(shape, device="cuda", dtype=DTYPES[dtype])
    fwd = {"reference": ax.reference_explicit, "sdpa": ax.reference, "triton": ax.axial_attention}[impl]
    benchmark.extra_info.update(case=f"axial fwd+bwd {'x'.join(map(str, latent))} axis {AXES[dim]} {dtype}",
                                impl=impl, device=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=triton.__version__)

    def step():
        out = fwd(q, k, v, dim)
        return torch.autograd.grad(out, (q, k, v), grad)

    _timed(benchmark, step)
