"""pytest-benchmark cases for block-sparse causal attention at the paper's sizes.

``python -m pytest benchmarks/bench_kernels_blocksparse.py --benchmark-group-by=param:L`` on a
CUDA machine. Implementations on the same inputs (B=1, strided layout, block 32, 4 local blocks):

* ``reference``   - ``ops.blocksparse_attention_torch`` (gather per query block, autograd backward);
* ``sdpa_mask``   - PyTorch SDPA with the layout's dense (L x L) boolean mask;
* ``flash_causal``- PyTorch SDPA ``is_causal=True`` (dense flash attention: a denser function,
  timed for scale; the goal is triton fwd+bwd >= 2x faster than it at L = 8192 on an H100);
* ``triton``      - ``kernels.blocksparse_attention``.

Absolute times mean something only with the device and versions beside them (``extra_info``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="block-sparse benchmarks need a CUDA device")]

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")

SHAPES = {4096: (4, 32, 32), 8192: (8, 32, 32), 16384: (16, 32, 32)}
BLOCK = 32
IMPLS = ("reference", "sdpa_mask", "flash_causal", "triton")


def _layout(latent, heads):
    from videogpt_fast.attention import StridedSparsityConfig
    return StridedSparsityConfig(latent, heads, True, BLOCK, 4).make_layout().cuda()


def _impl(name: str, layout: torch.Tensor):
    from videogpt_fast import ops
    if name == "reference":
        return lambda q, k, v: ops.blocksparse_attention_torch(q, k, v, layout, BLOCK, True)
    if name == "sdpa_mask":
        mask = ops.blocksparse_dense_mask(layout, BLOCK, True).unsqueeze(0)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if name == "flash_causal":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    pytest.importorskip("triton", reason="triton is not installed")
    from videogpt_fast.kernels.blocksparse_attention import blocksparse_attention
    return lambda q, k, v: blocksparse_attention(q, k, v, layout, BLOCK, True)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("heads,dim", [(4, 144), (8, 128)], ids=["4x144", "8x128"])
@pytest.mark.parametrize("L", sorted(SHAPES))
def test_blocksparse_attention(benchmark, L, heads, dim, impl, mode):
    dtype = torch.bfloat16
    if impl == "sdpa_mask" and heads * L * L * 6 > torch.cuda.mem_get_info()[0] // 2:
        pytest.skip(f"dense mask and scores for L={L} do not fit in half the free GPU memory")
    layout = _layout(SHAPES[L], heads)
    fn = _impl(impl, layout)
    q, k, v = (torch.randn(1, heads, L, dim, device="cuda", dtype=dtype, requires_grad=mode == "fwd_bwd")
               for _ in range(3))
    grad = torch.randn(1, heads, L, dim, device="cuda", dtype=dtype)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v)
        else:
            out = fn(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)
        torch.cuda.synchronize()

    step()  # compile / autotune / cache the layout tables outside the timing
    nnz = int(layout.sum())
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(), torch=torch.__version__, dtype=str(dtype), block=BLOCK,
        density=round(nnz / (heads * (L // BLOCK) ** 2), 4),
        sparse_tflop=round((4.0 * nnz * BLOCK * BLOCK * dim * (3.5 if mode == "fwd_bwd" else 1.0)) / 1e12, 4))
    try:
        import triton
        benchmark.extra_info["triton"] = triton.__version__
    except ImportError:
        pass
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=2)
