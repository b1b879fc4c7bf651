"""Triton block-sparse attention (kernels/blocksparse_attention.py) against float64 references.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
Triton is imported), on small shapes; with CUDA the same cases run compiled on the GPU, plus the
``gpu``-marked paper-size cases. Every kernel output is NaN-poisoned before each run.
"""
from __future__ import annotations

import pytest
import torch

from conftest import KERNEL_DEVICE as DEVICE, poison_allocations, require_triton  # noqa: E402

require_triton()

from videogpt_fast import ops  # noqa: E402
from videogpt_fast.backends import use_backend  # noqa: E402
from videogpt_fast.kernels import blocksparse_attention as bsa  # noqa: E402
from videogpt_fast.kernels import reference as R  # noqa: E402

from conftest import assert_close, cpp_compiler_or_skip, load_fixture  # noqa: E402

INTERPRET = DEVICE.type == "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every tensor the kernels write (outputs, gradients, log-sum-exp and delta) starts as NaN."""
    poison_allocations(monkeypatch)


def _inputs(B, H, L, D, DV, dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(1 << 30, ())))
    return [torch.randn(B, H, L, d, generator=g, dtype=torch.float32).to(DEVICE, dtype).requires_grad_()
            for d in (D, D, DV)]


def _random_layout(heads, nb, seed, p=0.5):
    """Random 0/1 layout with the diagonal set: (heads, nb, nb), or (nb, nb) for heads=0."""
    g = torch.Generator().manual_seed(seed)
    lay = (torch.rand(max(heads, 1), nb, nb, generator=g) < p).to(torch.uint8)
    lay |= torch.eye(nb, dtype=torch.uint8)
    return lay[0] if heads == 0 else lay


def _check(q, k, v, layout, block, causal, tol=1e-5, gtol=None):
    """Forward and (dq, dk, dv) against the float64 dense-mask reference."""
    out = bsa.blocksparse_attention(q, k, v, layout, block, causal)
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == q.dtype
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = R.blocksparse_attention_reference_dense(q, k, v, layout, block, causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
    assert_close(out, ref, rtol=tol, atol=tol, msg="forward")
    gtol = gtol or 2 * tol
    for name, g, r in zip("qkv", grads, ref_grads):
        assert not g.isnan().any(), f"d{name} has NaN (unwritten poisoned entries?)"
        assert_close(g, r, rtol=gtol, atol=gtol, msg=f"d{name}")
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("L,block,D,DV,per_head", [
    (64, 16, 16, 16, False),
    (64, 16, 24, 40, True),      # non-pow2 head dims (24 padded to 32; 40 split 32 + 16), dv != d
    (64, 16, 48, 24, False),     # 48 split into column chunks 32 + 16
    (128, 32, 24, 24, True),
    (128, 32, 16, 16, False),
    (128, 64, 16, 16, True),
    (256, 128, 16, 24, False),   # 128-blocks run as 64-row sub-tiles
])
def test_forward_backward_random_layouts(causal, L, block, D, DV, per_head):
    heads = 2
    layout = _random_layout(heads if per_head else 0, L // block, seed=L + D + DV + int(causal))
    q, k, v = _inputs(2, heads, L, D, DV)
    _check(q, k, v, layout, block, causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("L,block,D,DV,per_head", [
    (64, 16, 144, 144, True),    # the GPT's head dim (576 / 4): column chunks 128 + 16
    (64, 32, 144, 120, False),   # dv != d; 120 runs as one 128-wide chunk
    (64, 16, 120, 120, True),
])
def test_forward_backward_gpt_head_dims(causal, L, block, D, DV, per_head):
    heads = 2
    layout = _random_layout(heads if per_head else 0, L // block, seed=D + DV + block + int(causal))
    q, k, v = _inputs(1, heads, L, D, DV)
    _check(q, k, v, layout, block, causal)


def _strided_layout(shape, heads, causal, block, local):
    attention = pytest.importorskip("videogpt_fast.attention")
    return attention.StridedSparsityConfig(shape, n_head=heads, causal=causal, block=block,
                                           num_local_blocks=local).make_layout()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("L,block,kind", [
    (48, 16, "strided"),         # 3 blocks: latent (3, 16), one local block
    (48, 16, "random_per_head"),
    (96, 32, "strided"),         # 3 blocks: latent (3, 32)
    (96, 32, "random_per_head"),
    (96, 16, "strided"),         # 6 blocks in a (3, 2) block grid: local + strided (global) blocks
    (96, 16, "random_shared"),
])
def test_non_power_of_two_block_counts(causal, L, block, kind):
    """L / block = 3 or 6 blocks (tables, grids and loops not sized by powers of two)."""
    heads = 2
    if kind == "strided":
        layout = _strided_layout((3, L // 3), heads, causal, block, local=1)
        assert layout.shape == (heads, L // block, L // block)
    else:
        layout = _random_layout(heads if kind == "random_per_head" else 0, L // block, seed=L + block)
        if causal:
            layout = layout.tril()
    dense = torch.ones_like(layout).tril() if causal else torch.ones_like(layout)
    assert not torch.equal(layout.bool(), dense.bool()), "layout is dense: the test would not exercise sparsity"
    q, k, v = _inputs(2, heads, L, 24, 16)
    _check(q, k, v, layout, block, causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("L,block,D,per_head", [(64, 16, 16, True), (96, 32, 144, False)])
def test_bfloat16(causal, L, block, D, per_head):
    """bf16 on the interpreter (its bf16 tl.dot is patched in kernels/_interpreter.py): forward and
    gradients against the float64 reference of the bf16-rounded inputs, bf16 tolerance."""
    layout = _random_layout(2 if per_head else 0, L // block, seed=D + L)
    q, k, v = _inputs(1, 2, L, D, D, dtype=torch.bfloat16)
    out = _check(q, k, v, layout, block, causal, tol=3e-2, gtol=5e-2)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("bm,bn", [(16, 32), (32, 16), (16, 16)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_sub_tiles(monkeypatch, bm, bn, causal):
    """Query/key tiles smaller than the layout block (the path block 128 takes on GPU)."""
    forced = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(bsa, "_fixed_config", lambda name, block, dpad, dtype: forced)
    layout = _random_layout(2, 4, seed=bm * 7 + bn)
    q, k, v = _inputs(1, 2, 128, 16, 24)
    _check(q, k, v, layout, 32, causal)


@pytest.mark.parametrize("name", ["4x8x8_causal", "4x8x8_bidir"])
def test_strided_layout_fixture(name):
    """The original's StridedSparsityConfig layout (8x8 blocks of 32), also against the gather path."""
    layout = load_fixture("sparse_layouts.pt")[name]
    causal = name.endswith("causal")
    q, k, v = _inputs(1, 2, 256, 16, 16)
    out = _check(q, k, v, layout, 32, causal)
    gathered = R.blocksparse_attention_reference(q.double(), k.double(), v.double(), layout, 32, causal)
    assert_close(out, gathered, msg="vs reference.blocksparse_attention_reference")


def test_strided_layout_class_matches_fixture():
    """Layouts built by the package's StridedSparsityConfig run through the kernel like the fixture's."""
    attention = pytest.importorskip("videogpt_fast.attention")
    cfg = attention.StridedSparsityConfig((2, 16, 32), n_head=2, causal=True, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    assert torch.equal(layout[0].to(torch.uint8), load_fixture("sparse_layouts.pt")["2x16x32_causal"])
    q, k, v = _inputs(1, 2, 1024, 16, 16)
    with torch.no_grad():
        out = bsa.blocksparse_attention(q, k, v, layout, 32, True)
    assert_close(out, R.blocksparse_attention_reference_dense(q, k, v, layout, 32, True))


def test_aot_check_compiles_the_prior_layout():
    """kernels.aot_check builds the prior's strided layout itself (the kernels do not import the
    package): it must equal StridedSparsityConfig's."""
    from videogpt_fast.attention import StridedSparsityConfig
    from videogpt_fast.kernels.aot_check import strided_layout
    for heads in (8, 4):
        assert torch.equal(strided_layout(heads), StridedSparsityConfig((4, 32, 32), heads, True, 32, 4).make_layout())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_empty_rows_give_zero(causal):
    """A layout row without blocks (or, causal, with only blocks above the diagonal) yields zeros
    and zero gradients, as reference.blocksparse_attention_reference does."""
    layout = _random_layout(2, 4, seed=3)
    layout[0, 1] = 0
    layout[1, 2] = 0
    layout[1, 2, 3] = 1          # above the diagonal: hidden when causal
    q, k, v = _inputs(1, 2, 64, 16, 16)
    out = _check(q, k, v, layout, 16, causal)
    assert torch.all(out[:, 0, 16:32] == 0)
    if causal:
        assert torch.all(out[:, 1, 32:48] == 0)


def test_non_contiguous_inputs():
    """Strided views ((B, L, H, d) transposed to (B, H, L, d)) are read through their strides."""
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(2, 64, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
    q, k, v = (t.transpose(1, 2) for t in base)
    assert not q.is_contiguous()
    _check(q, k, v, _random_layout(2, 4, seed=5), 16, True)


def test_float16():
    q, k, v = _inputs(1, 2, 64, 16, 16, dtype=torch.float16)
    _check(q, k, v, _random_layout(0, 4, seed=9), 16, True, tol=2e-3, gtol=1e-2)


def test_out_argument_is_filled_and_returned():
    q, k, v = _inputs(1, 2, 64, 16, 16)
    layout = _random_layout(2, 4, seed=1)
    out = torch.full((1, 2, 64, 16), float("nan"), device=DEVICE)
    with torch.no_grad():
        res = bsa.blocksparse_attention(q, k, v, layout, 16, True, out=out)
    assert res is out
    assert_close(out, R.blocksparse_attention_reference_dense(q, k, v, layout, 16, True))
    with pytest.raises(ValueError, match="out must be"):
        bsa.blocksparse_attention(q, k, v, layout, 16, True, out=torch.empty(1, 2, 64, 8, device=DEVICE))


def test_through_ops_backend():
    q, k, v = _inputs(1, 2, 64, 16, 16)
    layout = _random_layout(0, 4, seed=2)
    with use_backend("triton"):
        out = ops.blocksparse_attention(q, k, v, layout, 16, True)
    assert_close(out, R.blocksparse_attention_reference_dense(q, k, v, layout, 16, True))
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    (dq_ref,) = torch.autograd.grad(R.blocksparse_attention_reference_dense(q, k, v, layout, 16, True).sum(), (q,))
    assert_close(dq, dq_ref, rtol=2e-5, atol=2e-5)


def test_layout_tables_cached_and_invalidated():
    layout = _random_layout(2, 4, seed=4)
    t1 = bsa.layout_tables(layout, True, DEVICE)
    assert bsa.layout_tables(layout, True, DEVICE) is t1
    assert bsa.layout_tables(layout, False, DEVICE) is not t1
    q, k, v = _inputs(1, 2, 64, 16, 16)
    layout[0, 3, 0] = 1 - layout[0, 3, 0]      # in place: the version counter changes
    assert bsa.layout_tables(layout, True, DEVICE) is not t1
    with torch.no_grad():
        out = bsa.blocksparse_attention(q, k, v, layout, 16, True)
    assert_close(out, R.blocksparse_attention_reference_dense(q, k, v, layout, 16, True))


def test_validation_errors():
    """Inputs are checked once, by the dispatch point (here choosing the Triton backend)."""
    q, k, v = _inputs(1, 2, 64, 16, 16)
    layout = _random_layout(0, 4, seed=0)
    with use_backend("triton"):
        with pytest.raises(ValueError, match="dtype"):
            ops.blocksparse_attention(q.double(), k.double(), v.double(), layout, 16)
        with pytest.raises(ValueError, match="block must be one of"):
            ops.blocksparse_attention(q, k, v, _random_layout(0, 8, seed=0), 8)
        with pytest.raises(ValueError, match="not divisible"):
            ops.blocksparse_attention(q[:, :, :48], k[:, :, :48], v[:, :, :48], layout, 32)
        with pytest.raises(ValueError, match="layout must be"):
            ops.blocksparse_attention(q, k, v, _random_layout(3, 4, seed=0), 16)
        with pytest.raises(ValueError, match="shape mismatch"):
            ops.blocksparse_attention(q, k[:, :1], v, layout, 16)
        with pytest.raises(ValueError, match="4-d"):
            ops.blocksparse_attention(q[0], k[0], v[0], layout, 16)
        big = torch.zeros(1, 1, 16, 272, device=DEVICE)
        with pytest.raises(ValueError, match="head dims"):
            ops.blocksparse_attention(big, big, big, torch.ones(1, 1), 16)


# ------------------------------------------------------------------------------------------
# decode step
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per_head"])
def test_decode_matches_reference_and_full_forward(per_head):
    B, H, L, D, DV, block = 2, 2, 128, 24, 16, 32
    layout = _random_layout(H if per_head else 0, L // block, seed=21)
    q_all, k, v = (t.detach() for t in _inputs(B, H, L, D, DV))
    with torch.no_grad():
        full = bsa.blocksparse_attention(q_all, k, v, layout, block, True)
    for pos in (0, 5, 31, 32, 77, 127):
        q = q_all[:, :, pos:pos + 1]
        out = bsa.blocksparse_decode_attention(q, k, v, layout, block, pos)
        assert_close(out, R.decode_attention_reference_dense(q[:, :, 0], k, v, pos, layout, block).unsqueeze(2),
                     msg=f"pos {pos}")
        assert_close(out, full[:, :, pos:pos + 1], msg=f"pos {pos} vs full causal forward")
        out_t = bsa.blocksparse_decode_attention(q, k, v, layout, block, torch.tensor(pos, device=DEVICE))
        assert torch.equal(out_t, out)


@pytest.mark.parametrize("D,DV", [(144, 144), (120, 144), (144, 120)])
def test_decode_gpt_head_dims(D, DV):
    """The decode kernel at the GPT's head dim 144 (column chunks 128 + 16) and at 120."""
    B, H, L, block = 1, 2, 96, 32
    layout = _random_layout(H, L // block, seed=D + DV)
    q_all, k, v = (t.detach() for t in _inputs(B, H, L, D, DV))
    with torch.no_grad():
        full = bsa.blocksparse_attention(q_all, k, v, layout, block, True)
    for pos in (0, 31, 32, 50, 95):
        q = q_all[:, :, pos:pos + 1]
        out = bsa.blocksparse_decode_attention(q, k, v, layout, block, torch.tensor(pos, device=DEVICE))
        assert out.shape == (B, H, 1, DV)
        assert_close(out, R.decode_attention_reference_dense(q[:, :, 0], k, v, pos, layout, block).unsqueeze(2),
                     msg=f"pos {pos}")
        assert_close(out, full[:, :, pos:pos + 1], msg=f"pos {pos} vs full causal forward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_block_64(dtype):
    """Block 64 (two 32-key sub-tiles per block: the (block, sub-tile) loop), 3 blocks, per-head layout."""
    B, H, L, D, DV, block = 2, 2, 192, 24, 40, 64
    layout = _random_layout(H, L // block, seed=64)
    layout[0, 2, 1] = 0
    layout[1, 2, 1] = 1
    q_all, k, v = (t.detach() for t in _inputs(B, H, L, D, DV, dtype=dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for pos in (0, 63, 64, 100, 128, 191):
        q = q_all[:, :, pos:pos + 1]
        out = bsa.blocksparse_decode_attention(q, k, v, layout, block, pos)
        assert out.dtype == dtype
        assert_close(out, R.decode_attention_reference_dense(q[:, :, 0], k, v, pos, layout, block).unsqueeze(2),
                     rtol=tol, atol=tol, msg=f"pos {pos}")


def test_decode_hides_cache_beyond_pos():
    """Garbage (NaN) in the cache after pos must not leak into the result."""
    B, H, L, D, block = 1, 2, 64, 16, 16
    layout = torch.ones(L // block, L // block, dtype=torch.uint8)
    q, k, v = (t.detach() for t in _inputs(B, H, L, D, D))
    pos = 37
    k[:, :, pos + 1:] = float("nan")
    v[:, :, pos + 1:] = float("nan")
    out = bsa.blocksparse_decode_attention(q[:, :, pos:pos + 1], k, v, layout, block, pos)
    assert not out.isnan().any()
    assert_close(out, R.decode_attention_reference_dense(q[:, :, pos], k.nan_to_num(), v.nan_to_num(), pos, layout,
                                                        block).unsqueeze(2))


def test_decode_validation():
    q, k, v = (t.detach() for t in _inputs(1, 2, 64, 16, 16))
    layout = torch.ones(4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="pos must be in"):
        bsa.blocksparse_decode_attention(q[:, :, :1], k, v, layout, 16, 64)
    with pytest.raises(ValueError, match=r"\(B, heads, 1, d\)"):
        bsa.blocksparse_decode_attention(q[:, :, :2], k, v, layout, 16, 3)
    with use_backend("triton"), pytest.raises(ValueError, match="one-element int64 tensor"):
        ops.decode_attention(q[:, :, 0], k, v, torch.tensor([1.0], device=DEVICE), layout, 16)


# split-K decode: pass 1 (B*H, S) partials, pass 2 merge; forced S against the float64 truth
_DECODE_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
_SPLIT_CASES = {   # B, H, L, d, dv, block, dtype, per-head layout
    "B1H3_L80_d40_fp32": (1, 3, 80, 40, 24, 16, torch.float32, True),
    "B3H1_L96_d144_bf16": (3, 1, 96, 144, 144, 32, torch.bfloat16, False),
    "B1H1_L48_d24_fp16": (1, 1, 48, 24, 40, 16, torch.float16, True),
}


@pytest.mark.parametrize("splits", [None, 1, 2, 3, "more"], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("case", sorted(_SPLIT_CASES))
def test_decode_split_k_matches_float64(case, splits):
    """Every S (the heuristic, 1, 2, 3, more splits than the row has blocks) gives the float64
    reference at a position in the first block (one block: every split but the first is empty), in
    the middle and at the end, pos as int and as tensor, into a NaN-poisoned ``out``."""
    B, H, L, D, DV, block, dtype, per_head = _SPLIT_CASES[case]
    nb = L // block
    layout = _random_layout(H if per_head else 0, nb, seed=L + D, p=0.7)
    splits = nb + 2 if splits == "more" else splits
    q_all, k, v = (t.detach() for t in _inputs(B, H, L, D, DV, dtype=dtype))
    tol = _DECODE_TOL[dtype]
    for i, pos in enumerate((block // 3, L // 2 + 1, L - 1)):
        q = q_all[:, :, pos:pos + 1]
        out = torch.full((B, H, 1, DV), float("nan"), device=DEVICE, dtype=dtype)
        arg = torch.tensor(pos, device=DEVICE) if i % 2 else pos
        got = bsa.blocksparse_decode_attention(q, k, v, layout, block, arg, out=out, splits=splits)
        assert got.data_ptr() == out.data_ptr() and got.dtype == dtype
        want = R.decode_attention_reference_dense(q[:, :, 0].double(), k.double(), v.double(), pos, layout, block)
        assert_close(out, want.unsqueeze(2), rtol=tol, atol=tol, msg=f"pos {pos}, splits {splits}")


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_split_k_device_pos_out_of_range_is_nan(splits):
    """A device pos outside [0, L) gives NaN through the split-K passes (no key is read)."""
    q, k, v = (t.detach() for t in _inputs(1, 3, 48, 24, 24, dtype=torch.bfloat16))
    layout = torch.ones(3, 3, dtype=torch.uint8)
    for pos in (-1, 48, 1000):
        out = torch.zeros(1, 3, 1, 24, device=DEVICE, dtype=torch.bfloat16)
        bsa.blocksparse_decode_attention(q[:, :, :1], k, v, layout, 16, torch.tensor(pos, device=DEVICE), out=out,
                                         splits=splits)
        assert out.isnan().all(), f"pos {pos}"


def test_decode_splits_heuristic():
    """About 4 programs per SM over the B*H pairs, capped by the longest row's block count, >= 1."""
    assert bsa._decode_splits(64, 128, 132) == 9      # B=16, 4 heads, dense L=4096 / 32 on an H200
    assert bsa._decode_splits(64, 8, 132) == 8        # the strided layout's longest row
    assert bsa._decode_splits(2048, 128, 132) == 1
    assert bsa._decode_splits(1, 1, 132) == 1
    for bh in (1, 3, 7, 64, 100, 528, 1000):
        s = bsa._decode_splits(bh, 1000, 132)
        assert 1 <= s and (s - 1) * bh < 4 * 132 <= s * bh


@pytest.mark.parametrize("splits", [0, -2, 1.5, True, "2"])
def test_decode_splits_validation(splits):
    q, k, v = (t.detach() for t in _inputs(1, 1, 32, 16, 16))
    with pytest.raises(ValueError, match="splits must be None or an int >= 1"):
        bsa.blocksparse_decode_attention(q[:, :, :1], k, v, torch.ones(2, 2), 16, 3, splits=splits)


def test_decode_splits_over_the_grid_limit():
    """More splits than CUDA's grid y dimension takes (65535) raise before any allocation or launch."""
    q, k, v = (t.detach() for t in _inputs(1, 1, 32, 16, 16))
    with pytest.raises(ValueError, match=r"splits must be <= 65535"):
        bsa.blocksparse_decode_attention(q[:, :, :1], k, v, torch.ones(2, 2), 16, 3, splits=65536)


_BAD_DECODE = {   # name: (q, k, v, layout, block, pos) changes of a good call -> message
    "q_batch": (dict(q=(2, 2, 1, 16)), r"k_cache must be \(B, heads, L, d\)"),
    "q_head_dim": (dict(q=(1, 2, 1, 8)), r"k_cache must be \(B, heads, L, d\)"),
    "v_length": (dict(v=(1, 2, 16, 16)), r"k_cache must be \(B, heads, L, d\)"),
    "k_3d": (dict(k=(2, 32, 16)), r"k_cache must be \(B, heads, L, d\)"),
    "dtype_mix": (dict(q_dtype=torch.bfloat16), "share one dtype"),
    "float64": (dict(dtype=torch.float64), "share one dtype"),
    "block_48": (dict(block=48, k=(1, 2, 96, 16), v=(1, 2, 96, 16)), "block must be one of"),
    "block_not_dividing": (dict(k=(1, 2, 40, 16), v=(1, 2, 40, 16)), "divide the cache length 40"),
    "layout_size": (dict(layout=(3, 3)), r"layout must be \(2, 2\)"),
    "layout_heads": (dict(layout=(3, 2, 2)), r"layout must be \(2, 2\)"),
    "pos_float_tensor": (dict(pos=torch.tensor(5.0)), "one-element integer tensor"),
    "pos_two_elements": (dict(pos=torch.tensor([5, 20])), "one-element integer tensor"),
    "pos_bool_tensor": (dict(pos=torch.tensor(True)), "one-element integer tensor"),
    "pos_other_device": (dict(pos=torch.tensor(5, device="meta")), "pos must be on q's device"),
    "pos_float": (dict(pos=5.7), "pos must be an int or"),
    "pos_bool": (dict(pos=True), "pos must be an int or"),
}


@pytest.mark.parametrize("case", sorted(_BAD_DECODE))
def test_decode_direct_call_validation(case):
    """A direct call with inputs that do not fit raises naming the constraint (before any launch:
    these used to run, reading q out of bounds or taking pos 5.7 as 5, [5, 20] as 5, True as 1)."""
    change, message = _BAD_DECODE[case]
    dtype = change.get("dtype", torch.float32)
    shapes = {"q": (1, 2, 1, 16), "k": (1, 2, 32, 16), "v": (1, 2, 32, 16), "layout": (2, 2)}
    q, k, v, layout = (torch.randn(change.get(n, shapes[n]), device=DEVICE, dtype=dtype)
                       for n in ("q", "k", "v", "layout"))
    q = q.to(change.get("q_dtype", dtype))
    with pytest.raises(ValueError, match=message):
        bsa.blocksparse_decode_attention(q, k, v, layout, change.get("block", 16), change.get("pos", 5))


# ------------------------------------------------------------------------------------------
# GPU: paper sizes with the strided layout
# ------------------------------------------------------------------------------------------
_GPU_SHAPES = {4096: (4, 32, 32), 8192: (8, 32, 32), 16384: (16, 32, 32)}
_GPU_TOL = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("heads,dim", [(4, 144), (8, 128)])
@pytest.mark.parametrize("L", sorted(_GPU_SHAPES))
def test_gpu_paper_sizes(L, heads, dim, dtype):
    """Strided layout (block 32, 4 local blocks), causal: forward against the float64 gather
    reference at every size, gradients up to L = 8192."""
    from videogpt_fast.attention import StridedSparsityConfig
    layout = StridedSparsityConfig(_GPU_SHAPES[L], heads, True, 32, 4).make_layout()
    q, k, v = _inputs(1, heads, L, dim, dim, dtype=dtype, seed=L + heads)
    tol = _GPU_TOL[dtype]
    out = bsa.blocksparse_attention(q, k, v, layout, 32, True)
    if L > 8192:
        with torch.no_grad():
            ref = R.blocksparse_attention_reference(q.double(), k.double(), v.double(), layout, 32, True)
        assert_close(out, ref, rtol=tol, atol=tol)
        return
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = R.blocksparse_attention_reference(q.double(), k.double(), v.double(), layout, 32, True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
    assert_close(out, ref, rtol=tol, atol=tol)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_close(g, r, rtol=4 * tol, atol=4 * tol, msg=f"d{name}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("block", [16, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_other_blocks(block, dtype):
    L, heads = 2048, 4
    layout = _random_layout(heads, L // block, seed=block, p=0.3)
    q, k, v = _inputs(2, heads, L, 144, 144, dtype=dtype, seed=block)
    tol = _GPU_TOL[dtype]
    _check(q, k, v, layout, block, True, tol=tol, gtol=4 * tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("sparse", [True, False], ids=["strided", "dense"])
def test_gpu_decode_sampling_size(sparse, dtype):
    """The split-K decode step at the sampler's size (B=16, 4 heads x 144, L=4096, block 32; the
    strided layout or all-ones), S from the heuristic, against float64 at several positions."""
    from videogpt_fast.attention import StridedSparsityConfig
    B, H, L, D, block = 16, 4, 4096, 144, 32
    layout = (StridedSparsityConfig(_GPU_SHAPES[L], H, True, block, 4).make_layout() if sparse
              else torch.ones(L // block, L // block, dtype=torch.uint8))
    q_all, k, v = (t.detach() for t in _inputs(B, H, L, D, D, dtype=dtype, seed=7))
    tol = _GPU_TOL[dtype]
    for pos in (0, 31, 1000, L - 1):
        q = q_all[:, :, pos:pos + 1]
        out = torch.full((B, H, 1, D), float("nan"), device=DEVICE, dtype=dtype)
        bsa.blocksparse_decode_attention(q, k, v, layout, block, torch.tensor(pos, device=DEVICE), out=out)
        want = R.decode_attention_reference_dense(q[:, :, 0].double(), k.double(), v.double(), pos, layout, block)
        assert_close(out, want.unsqueeze(2), rtol=tol, atol=tol, msg=f"pos {pos}")


@pytest.mark.parametrize("sparse", [True, False])
def test_ops_decode_attention_triton_backend(sparse):
    """ops.decode_attention (the sampler's op) under backend triton: the block-sparse decode kernel
    with the model's layout, or an all-ones layout for dense models."""
    torch.manual_seed(0)
    B, H, L, d, block = 2, 2, 64, 12, 16
    q, k, v = torch.randn(B, H, d, device=DEVICE), torch.randn(B, H, L, d, device=DEVICE), torch.randn(B, H, L, d, device=DEVICE)
    layout = ((torch.rand(H, L // block, L // block) < 0.5) | torch.eye(L // block, dtype=torch.bool)).tril().to(DEVICE)
    for p in (0, 17, 63):
        pos = torch.tensor([p], device=DEVICE)
        kw = dict(block=block, layout=layout) if sparse else {}
        expected = R.decode_attention_reference(q, k, v, pos, layout if sparse else None, block)
        with use_backend("triton"):
            got = ops.decode_attention(q, k, v, pos, **kw)
        assert_close(got, expected)
    with use_backend("triton"), pytest.raises(ValueError, match="layout must be"):
        ops.decode_attention(q, k, v, pos, layout[:, :2], block)


@pytest.mark.slow
def test_triton_decode_attention_traces_in_a_compiled_step():
    """The Triton decode kernel is one opaque op to torch.compile (fullgraph: no graph break), so a
    compiled step on CUDA can call it; on CPU it runs in Triton's interpreter. Dense and sparse."""
    cpp_compiler_or_skip()
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 2, 16, generator=gen), torch.randn(2, 2, 64, 16, generator=gen), torch.randn(2, 2, 64, 16, generator=gen)
    layout = torch.ones(2, 2, 2, dtype=torch.bool)
    layout[1, 1, 0] = False

    def step(q, k, v, pos, layout):
        return ops.decode_attention(q, k, v, pos, block=32, layout=layout, backend="triton") * 2

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    for lay in (layout, torch.ones_like(layout)):
        for p in (5, 40):
            pos = torch.tensor([p])
            want = 2 * R.decode_attention_reference_dense(q, k, v, p, lay, 32)
            assert_close(compiled(q, k, v, pos, lay).double(), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# per-call costs: cached tables, launches, compiled variants
# ------------------------------------------------------------------------------------------
class _LaunchCounter:
    """Wraps a Triton kernel: counts the launches (``kernel[grid](...)``) and forwards them."""

    def __init__(self, kernel, log, name):
        self.kernel, self.log, self.name = kernel, log, name
        self.grids, self.args, self.meta = [], [], []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(self.name)
            self.grids.append(grid)
            self.args.append(args)
            self.meta.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return run


def _count_launches(monkeypatch):
    log = []
    for name, launcher in bsa._LAUNCHERS.items():
        monkeypatch.setattr(launcher, "kernel", _LaunchCounter(launcher.kernel, log, name))
    monkeypatch.setattr(bsa, "_decode_kernel", _LaunchCounter(bsa._decode_kernel, log, "decode"))
    monkeypatch.setattr(bsa, "_decode_reduce_kernel", _LaunchCounter(bsa._decode_reduce_kernel, log, "decode_reduce"))
    return log


def test_three_launches_per_forward_backward(monkeypatch):
    """Forward: one kernel; backward: dQ (which also computes delta = rowsum(dO * O)) then dK/dV;
    no separate preprocessing launch. Gradients still match float64."""
    log = _count_launches(monkeypatch)
    q, k, v = _inputs(2, 2, 64, 24, 16)
    layout = _random_layout(2, 4, seed=31)
    _check(q, k, v, layout, 16, True)
    assert log == ["fwd", "bwd_dq", "bwd_dkdv"]


def test_decode_two_launches_no_sync_and_split_partition(monkeypatch):
    """A decode step is pass 1 on grid (B*H, S) then the reduce on (B*H,), with no host sync once
    the layout's tables are cached; split s holds blocks [s*per, (s+1)*per) of the row (per =
    ceil(count / S)): the partials past the row's count are empty (m = -inf, l = 0, acc = 0)."""
    B, H, L, D, block = 1, 3, 64, 16, 16
    q, k, v = (t.detach() for t in _inputs(B, H, L, D, D))
    layout = torch.ones(L // block, L // block, dtype=torch.uint8)
    bsa.blocksparse_decode_attention(q[:, :, :1], k, v, layout, block, 0)      # builds the tables
    log = _count_launches(monkeypatch)

    def no_sync(self, *a, **kw):
        raise AssertionError("host sync (.item()) in the decode step")

    for pos, S, busy in ((5, 3, 1), (63, 3, 2), (63, 6, 4), (40, 2, 2)):   # row counts 1, 4, 4, 3
        log.clear()
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "item", no_sync)
            out = bsa.blocksparse_decode_attention(q[:, :, :1], k, v, layout, block, torch.tensor(pos, device=DEVICE),
                                                   splits=S)
        assert log == ["decode", "decode_reduce"]
        assert bsa._decode_kernel.grids[-1] == (B * H, S) and bsa._decode_reduce_kernel.grids[-1] == (B * H,)
        part = bsa._decode_kernel.args[-1][3].view(B * H, S, D + 2)
        assert not part.isnan().any(), "a partial was left unwritten"
        empty = part[:, :, D] == float("-inf")
        assert empty.tolist() == [[s >= busy for s in range(S)]] * (B * H), f"pos {pos}, S {S}"
        assert (part[:, :, D + 1][empty] == 0).all() and (part[:, :, :D][empty] == 0).all()
        want = R.decode_attention_reference_dense(q[:, :, 0], k, v, pos, layout, block)
        assert_close(out, want.unsqueeze(2))
    listed = bsa.compiled_variants((B, H, L, D), D, block, q.dtype)   # the configs launched are the listed ones
    for name in ("decode", "decode_reduce"):
        meta = getattr(bsa, f"_{name}_kernel").meta[-1]
        assert [{key: meta[key] for key in listed[name][0]}] == listed[name]


def test_second_call_builds_no_tables_and_never_syncs(monkeypatch):
    """Tables are built once per layout: the second call (same tensor, or an equal CPU layout
    rebuilt by the caller) runs no table builder and calls no ``.item()`` (no host sync)."""
    built = []
    real = bsa._Tables

    class CountingTables(real):
        def __init__(self, *a, **kw):
            built.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(bsa, "_Tables", CountingTables)
    bsa._CACHE.clear()
    layout = _random_layout(2, 4, seed=32)
    q, k, v = _inputs(1, 2, 64, 16, 16)
    out1 = bsa.blocksparse_attention(q, k, v, layout, 16, True)
    assert len(built) == 1

    def no_sync(self, *a, **kw):
        raise AssertionError("host sync (.item()) on the second call")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    out2 = bsa.blocksparse_attention(q, k, v, layout, 16, True)
    torch.autograd.grad(out2.sum(), (q, k, v))
    out3 = bsa.blocksparse_attention(q, k, v, layout.clone(), 16, True)   # equal content, new tensor
    monkeypatch.undo()
    assert len(built) == 1
    assert torch.equal(out1, out2) and torch.equal(out1, out3)


@pytest.mark.parametrize("L,heads,dim,dtype", [(4096, 8, 128, torch.bfloat16), (8192, 4, 144, torch.float16),
                                               (4096, 4, 144, torch.float32), (96, 2, 24, torch.float32)])
def test_at_most_two_compiled_variants(L, heads, dim, dtype, monkeypatch):
    """One launch config per kernel, shape and dtype (no autotuning storm); the full sweep only
    with VIDEOGPT_FAST_AUTOTUNE=1, pruned to tiles that fit the block and head dim."""
    from videogpt_fast.kernels import tuning as _tuning
    monkeypatch.setattr(_tuning, "interpret", lambda: False)
    monkeypatch.delenv(_tuning.ENV_VAR, raising=False)
    variants = bsa.compiled_variants((16, heads, L, dim), dim, 32, dtype)
    assert set(variants) == {"fwd", "bwd_dq", "bwd_dkdv", "decode", "decode_reduce"}
    assert all(len(v) == 1 for v in variants.values())
    monkeypatch.setenv(_tuning.ENV_VAR, "1")
    swept = bsa.compiled_variants((16, heads, L, dim), dim, 32, dtype)["fwd"]
    assert 2 < len(swept) < len(bsa._TILE_CONFIGS) and all(c["BLOCK_M"] <= 32 for c in swept)


def test_launch_uses_the_listed_configs(monkeypatch):
    seen = {}

    class Spy:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            def run(*args, **meta):
                seen[self.name] = {k: meta[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
                return self.kernel[grid](*args, **meta)
            return run

    for name, launcher in bsa._LAUNCHERS.items():
        monkeypatch.setattr(launcher, "kernel", Spy(launcher.kernel, name))
    q, k, v = _inputs(1, 2, 64, 16, 16)
    out = bsa.blocksparse_attention(q, k, v, _random_layout(2, 4, seed=33), 16, True)
    torch.autograd.grad(out.sum(), (q,))
    listed = bsa.compiled_variants(tuple(q.shape), 16, 16, q.dtype)
    for name in ("fwd", "bwd_dq", "bwd_dkdv"):
        assert [seen[name]] == listed[name]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device (compiled Triton)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_compiles_at_most_two_variants(dtype):
    """Forward + backward at a paper size compile at most 2 binaries per kernel (no autotuning)."""
    from videogpt_fast.attention import StridedSparsityConfig
    from videogpt_fast.kernels.tuning import compiled_count
    layout = StridedSparsityConfig((4, 32, 32), 8, True, 32, 4).make_layout()
    before = {n: compiled_count(lz.kernel) for n, lz in bsa._LAUNCHERS.items()}
    for _ in range(2):
        q, k, v = _inputs(2, 8, 4096, 128, 128, dtype=dtype, seed=5)
        out = bsa.blocksparse_attention(q, k, v, layout, 32, True)
        torch.autograd.grad(out.float().square().sum(), (q, k, v))
    for n, lz in bsa._LAUNCHERS.items():
        assert compiled_count(lz.kernel) - before[n] <= 2, n
