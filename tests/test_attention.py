"""Strided sparsity layouts (vs the original's, from fixtures), the plain-PyTorch block-sparse
attention (forward and gradients vs a float64 dense-masked reference) and the attention modules'
state-dict compatibility."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_close, load_fixture
from videogpt_fast import ops
from videogpt_fast.kernels import reference as R
from videogpt_fast.attention import FullAttention, MultiHeadAttention, SparseAttention, StridedSparsityConfig


def _parse_key(key: str):
    shape, kind = key.split("_")
    return tuple(int(s) for s in shape.split("x")), kind == "causal"


# ----------------------------------------------------------------------------------------------
# StridedSparsityConfig
# ----------------------------------------------------------------------------------------------
def test_make_layout_matches_original_fixtures():
    layouts = load_fixture("sparse_layouts.pt")
    assert len(layouts) >= 10
    for key, expected in layouts.items():
        shape, causal = _parse_key(key)
        for n_head in (1, 3):
            layout = StridedSparsityConfig(shape, n_head=n_head, causal=causal, block=32,
                                           num_local_blocks=4).make_layout()
            assert layout.shape == (n_head, *expected.shape), key
            for h in range(n_head):
                assert torch.equal(layout[h].to(torch.uint8), expected), f"{key} head {h}"


def _direct_layout(shape, causal, block, num_local_blocks):
    """The strided layout from its definition: block (i, j) is on iff j is one of the
    ``num_local_blocks`` blocks before i (or after, when bidirectional), or the block coordinates
    of i and j differ in exactly one axis other than the last of the block grid (j <= i causal)."""
    cfg = StridedSparsityConfig(shape, 1, causal, block, num_local_blocks)
    grid = cfg._block_shape
    nb = cfg.num_blocks
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in grid], indexing="ij"), -1).view(nb, -1)
    i = torch.arange(nb).view(-1, 1)
    j = torch.arange(nb).view(1, -1)
    local = (j >= i - num_local_blocks) & ((j <= i) if causal else (j < i + num_local_blocks))
    diff = coords.view(nb, 1, -1) != coords.view(1, nb, -1)
    strided = (diff.sum(-1) == 1) & diff[..., :-1].any(-1)
    strided |= i == j
    if causal:
        strided &= j <= i
    return (local | strided).long()


@pytest.mark.parametrize("shape, causal, block, local", [
    ((4, 8, 8), True, 32, 4), ((4, 8, 8), False, 32, 4), ((8, 16, 16), True, 16, 3),
    ((3, 4, 16), False, 16, 2), ((2, 6, 8), True, 16, 1), ((4, 64), True, 32, 2),
])
def test_make_layout_matches_definition(shape, causal, block, local):
    layout = StridedSparsityConfig(shape, 2, causal, block, local).make_layout()
    expected = _direct_layout(shape, causal, block, local)
    assert torch.equal(layout[0], expected) and torch.equal(layout[1], expected)


@pytest.mark.parametrize("causal", [True, False])
def test_non_block_layout_row(causal):
    cfg = StridedSparsityConfig((4, 8, 8), n_head=2, causal=causal, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    layout[1, 5, 0] = 1 - layout[1, 5, 0]  # make the heads differ
    L = cfg.seq_len
    keys = torch.arange(L)
    for row in (0, 1, 31, 32, 100, 171, L - 1):
        got = cfg.get_non_block_layout_row(layout, row)
        assert got.shape == (2, 1, L)
        expected = torch.stack([layout[h, row // 32][keys // 32].bool() & (keys <= row) for h in range(2)])
        assert torch.equal(got.bool().squeeze(1), expected), row
    assert layout.shape == (2, 8, 8)  # the input layout is not modified
    assert torch.equal(layout[0], cfg.make_layout()[0])


def test_make_sparse_attn_mask():
    cfg = StridedSparsityConfig((4, 8, 8), n_head=2, causal=True, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    mask = cfg.make_sparse_attn_mask()
    blocks = [(h, i, j) for h in range(2) for i in range(8) for j in range(8) if layout[h, i, j]]
    assert mask.shape == (1, len(blocks), 32, 32)
    tril = torch.ones(32, 32).tril()
    for n, (_, i, j) in enumerate(blocks):
        assert torch.equal(mask[0, n], tril if i == j else torch.ones(32, 32)), (i, j)


def test_sparsity_config_errors():
    with pytest.raises(ValueError, match="not divisible by the block size 32"):
        StridedSparsityConfig((3, 5, 5), 1, True, 32, 4)
    with pytest.raises(ValueError, match="divisible by the block size 32"):  # 96 % 32 == 0, 48 % 32 != 0
        StridedSparsityConfig((2, 48), 1, True, 32, 4)
    with pytest.raises(ValueError, match="num_local_blocks"):
        StridedSparsityConfig((4, 8, 8), 1, True, 32, 0)
    with pytest.raises(ValueError, match="block size 32"):
        SparseAttention((2, 4, 2), n_head=2, causal=True)


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


def test_sparse_attention_module_forward_and_decode_agree():
    """SparseAttention's block-sparse forward and its one-row decode path (the original's
    dense-masked decoding) give the same outputs at every position."""
    gen = torch.Generator().manual_seed(5)
    shape, H, D = (2, 4, 8), 2, 8
    attn = SparseAttention(shape, H, causal=True, block=16, num_local_blocks=1)
    q, k, v = (torch.randn(1, H, *shape, D, generator=gen) for _ in range(3))
    full = attn(q, k, v).flatten(2, -2)
    qf = q.flatten(2, -2)
    for pos in range(64):
        row = attn.decode(qf[:, :, pos:pos + 1], k.flatten(2, -2), v.flatten(2, -2), torch.tensor([pos]))
        assert_close(row[:, :, 0], full[:, :, pos], msg=str(pos))
        # the original's signature: forward(q, k, v, decode_step, decode_idx)
        q1 = qf[:, :, pos:pos + 1].view(1, H, 1, 1, 1, D)
        assert torch.equal(attn(q1, k, v, pos, None).flatten(2, -2), row)
    # several queries at once (a prefix written in one pass): the position mask and layout rows
    pos = torch.tensor([0, 17, 40, 63])
    rows = attn.decode(qf[:, :, pos], k.flatten(2, -2), v.flatten(2, -2), pos)
    assert_close(rows, full[:, :, pos])


# ----------------------------------------------------------------------------------------------
# FullAttention's original-format mask buffer
# ----------------------------------------------------------------------------------------------
def test_full_attention_mask_in_state_dict_and_checked_on_load():
    mha = MultiHeadAttention((2, 2, 3), 8, 8, 2, 1, causal=True, attn_type="full",
                             attn_kwargs=dict(attn_dropout=0.0))
    sd = mha.state_dict()
    assert torch.equal(sd["attn.mask"], torch.ones(12, 12).tril())
    assert not any(name == "mask" for name, _ in mha.attn.named_buffers())  # not held in memory
    assert mha.load_state_dict(sd, strict=True)
    bad = dict(sd, **{"attn.mask": torch.ones(5, 5)})
    with pytest.raises(RuntimeError, match="mask has shape"):
        mha.load_state_dict(bad, strict=True)
    non_causal = FullAttention((2, 3), causal=False, attn_dropout=0.0)
    assert "mask" not in non_causal.state_dict()


def test_full_attention_decode_matches_causal_forward():
    gen = torch.Generator().manual_seed(11)
    attn = FullAttention((3, 4), causal=True, attn_dropout=0.0).eval()
    q, k, v = (torch.randn(2, 2, 3, 4, 6, generator=gen) for _ in range(3))
    full = attn(q, k, v).flatten(2, -2)
    ref = dense_reference(q.flatten(2, -2), k.flatten(2, -2), v.flatten(2, -2), torch.ones(1, 1), 12, True)
    assert_close(full, ref)
    kf, vf = k.flatten(2, -2), v.flatten(2, -2)
    for pos in range(12):
        # the cache holds zeros after pos, as during sampling
        kc, vc = kf.clone(), vf.clone()
        kc[:, :, pos + 1:] = 0
        vc[:, :, pos + 1:] = 0
        row = attn.decode(q.flatten(2, -2)[:, :, pos:pos + 1], kc, vc, torch.tensor([pos]))
        assert_close(row[:, :, 0], full[:, :, pos], msg=str(pos))
        original = attn(q.flatten(2, -2)[:, :, pos:pos + 1].unsqueeze(-2), kc.view_as(k), vc.view_as(v), pos, None)
        assert torch.equal(original.flatten(2, -2), row)
    pos = torch.tensor([3, 4, 11])
    assert_close(attn.decode(q.flatten(2, -2)[:, :, pos], kf, vf, pos), full[:, :, pos])
