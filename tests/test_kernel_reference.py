"""The plain-PyTorch references (videogpt_fast.kernels.reference, backend torch of ops) against
independent float64 formulations."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_close
from videogpt_fast import ops
from videogpt_fast.kernels import reference as R
from videogpt_fast.sparsity import StridedSparsityConfig


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (37, 5, 3), (300, 129, 17), (64, 2048, 8)])
def test_codebook_nearest_matches_float64(n, k, d):
    x, e = torch.randn(n, d), torch.randn(k, d)
    ref = torch.cdist(x.double(), e.double()).argmin(dim=1)
    got = R.codebook_nearest_reference(x, e)
    # fp32 formula may flip genuine near-ties only; check the distances agree where codes differ
    dist = torch.cdist(x.double(), e.double())
    gap = dist.gather(1, got[:, None]) - dist.gather(1, ref[:, None])
    assert got.dtype == torch.int64 and got.shape == (n,)
    assert (gap.abs() < 1e-4).all()


def test_codebook_nearest_chunking_is_exact():
    x, e = torch.randn(1000, 16), torch.randn(50, 16)
    assert torch.equal(R.codebook_nearest_reference(x, e, chunk=50 * 7), R.codebook_nearest_reference(x, e))


def test_axial_attention_reference_compiles():
    """torch.compile traces the plain path (the VQ-VAE and the prior train with --compile)."""
    q = torch.randn(2, 2, 3, 5, 4, 8)
    for dim in (2, 3, 4):
        compiled = torch.compile(lambda q, dim=dim: R.axial_attention_reference(q, q, q, dim), fullgraph=True)
        torch.testing.assert_close(compiled(q), R.axial_attention_reference(q, q, q, dim))


# ----------------------------------------------------------------------------------------------
# plain-PyTorch block-sparse attention vs a float64 dense reference
# ----------------------------------------------------------------------------------------------
def dense_reference(q, k, v, layout, block, causal):
    """float64 softmax(q k^T / sqrt(d)) v over the keys the layout (and causality) allows; rows
    without any key give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    H, L = q.shape[1], q.shape[2]
    lay = layout if layout.dim() == 3 else layout.expand(H, -1, -1)
    pos = torch.arange(L)
    allowed = lay.bool()[:, pos.view(-1, 1) // block, pos.view(1, -1) // block]   # (H, L, L)
    if causal:
        allowed = allowed & (pos.view(-1, 1) >= pos.view(1, -1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ v


def random_layout(H, nb, per_head, causal, gen):
    lay = torch.rand((H if per_head else 1, nb, nb), generator=gen) < 0.45
    lay |= torch.eye(nb, dtype=torch.bool)  # every query sees at least itself
    if causal:
        lay &= torch.ones(nb, nb, dtype=torch.bool).tril()
    lay = lay.to(torch.uint8)
    return lay if per_head else lay[0]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("block, nb, D, Dv", [(16, 5, 24, 24), (32, 4, 40, 40), (16, 3, 20, 12), (32, 2, 64, 64)])
def test_blocksparse_torch_forward_and_grads(causal, per_head, block, nb, D, Dv):
    gen = torch.Generator().manual_seed(block * 100 + nb * 10 + D + int(causal) + 2 * int(per_head))
    B, H, L = 2, 3, nb * block
    layout = random_layout(H, nb, per_head, causal, gen)
    q = torch.randn(B, H, L, D, generator=gen, requires_grad=True)
    k = torch.randn(B, H, L, D, generator=gen, requires_grad=True)
    v = torch.randn(B, H, L, Dv, generator=gen, requires_grad=True)
    grad_out = torch.randn(B, H, L, Dv, generator=gen)

    out = R.blocksparse_attention_reference(q, k, v, layout, block, causal=causal)
    ref = dense_reference(q, k, v, layout, block, causal)
    assert out.dtype == torch.float32
    assert_close(out, ref)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out.double())
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert_close(g, rg, rtol=1e-4, atol=1e-5, msg=f"d{name}")
    # the dispatch point runs the same on CPU
    assert_close(ops.blocksparse_attention(q, k, v, layout, block, causal=causal), out, rtol=0, atol=0)


def test_blocksparse_torch_empty_row_and_strided_layout():
    gen = torch.Generator().manual_seed(7)
    cfg = StridedSparsityConfig((4, 8, 8), n_head=2, causal=True, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    layout[1, 3] = 0  # query block 3 of head 1 sees nothing: zeros, and no NaN gradients
    q, k, v = (torch.randn(1, 2, 256, 16, generator=gen, requires_grad=True) for _ in range(3))
    out = R.blocksparse_attention_reference(q, k, v, layout, 32, causal=True)
    assert_close(out, dense_reference(q, k, v, layout, 32, True))
    assert torch.equal(out[0, 1, 96:128], torch.zeros(32, 16))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_blocksparse_torch_bf16_accumulates_in_fp32():
    gen = torch.Generator().manual_seed(3)
    layout = random_layout(2, 4, True, True, gen)
    q, k, v = (torch.randn(1, 2, 64, 32, generator=gen) for _ in range(3))
    out = R.blocksparse_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, 16, causal=True)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), dense_reference(q, k, v, layout, 16, True).float(), rtol=2e-2, atol=2e-2)
