"""The dispatch point videogpt_fast.ops: its validation, and its plain-PyTorch backend (the
``<op>_reference`` functions of videogpt_fast.kernels.reference) against float64 references."""
import pytest
import torch

from conftest import assert_close
from videogpt_fast import ops
from videogpt_fast.backends import BackendUnavailableError, use_backend
from videogpt_fast.kernels import reference as R


def test_registry_lists_every_op_and_its_backends():
    assert set(ops.REGISTRY) == {"codebook_nearest", "codebook_nearest_with_stats", "axial_attention",
                                 "blocksparse_attention", "decode_attention"}
    assert ops.backends_of("decode_attention") == ("cuda", "triton")   # auto's order: faster first
    assert ops.backends_of("codebook_nearest") == ("triton",)  # its CUDA op measured slower: deleted
    assert ops.backends_of("axial_attention") == ("triton",)
    for name, entry in ops.REGISTRY.items():
        assert ops.implementation(name, "torch") is entry.reference


def test_codebook_nearest_ties_lowest_index():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert ops.codebook_nearest(x, e).tolist() == [0, 0]


def test_codebook_nearest_errors():
    with pytest.raises(ValueError, match="equal D"):
        ops.codebook_nearest(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="equal D"):
        ops.codebook_nearest(torch.randn(3, 4, 1), torch.randn(2, 4))


@pytest.mark.parametrize("shape,dim", [((2, 2, 3, 5, 7, 12), 2), ((2, 2, 3, 5, 7, 12), 3),
                                       ((1, 3, 4, 6, 5, 8), -2), ((2, 1, 9, 10), 2)])
def test_axial_attention_matches_reference(shape, dim):
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = ops.axial_attention(q, k, v, dim)
    d = dim % len(shape)
    ref = torch.movedim(R.attention_reference(*(torch.movedim(t, d, -2) for t in (q, k, v))), -2, d)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.square().sum(), (q, k, v))
    gr = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


def test_axial_attention_rejects_non_spatial_dim():
    q = torch.randn(1, 2, 3, 4, 8)
    for bad in (0, 1, 4, -1):
        with pytest.raises(ValueError, match="spatial axis"):
            ops.axial_attention(q, q, q, bad)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("H,L,block,D,per_head", [(2, 64, 16, 8, False), (3, 96, 32, 12, True), (1, 128, 32, 5, True)])
def test_blocksparse_torch_matches_dense(causal, H, L, block, D, per_head):
    q, k, v = (torch.randn(2, H, L, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    nb = L // block
    lay = (torch.rand(H if per_head else 1, nb, nb) < 0.4) | torch.eye(nb, dtype=torch.bool)
    if causal:
        lay = lay.tril()
    layout = lay if per_head else lay[0]
    out = ops.blocksparse_attention(q, k, v, layout.to(torch.uint8), block, causal)
    mask = R.blocksparse_dense_mask(lay.expand(H, nb, nb), block, causal).unsqueeze(0)
    ref = R.attention_reference(q, k, v, mask=mask)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad((out * out.detach()).sum(), (q, k, v))
    gr = torch.autograd.grad((ref * ref.detach()).sum(), (q, k, v))
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


def test_blocksparse_empty_rows_give_zeros():
    q = torch.randn(1, 1, 32, 4)
    layout = torch.zeros(2, 2, dtype=torch.uint8)
    layout[1, 1] = 1
    out = ops.blocksparse_attention(q, q, q, layout, 16, causal=False)
    assert torch.equal(out[:, :, :16], torch.zeros_like(out[:, :, :16]))
    assert torch.isfinite(out).all()


def test_blocksparse_errors():
    q = torch.randn(1, 2, 48, 4)
    with pytest.raises(ValueError, match="divisible by block"):
        ops.blocksparse_attention(q, q, q, torch.ones(3, 3), 32)
    with pytest.raises(ValueError, match="layout must be"):
        ops.blocksparse_attention(q, q, q, torch.ones(2, 2), 16)
    with pytest.raises(ValueError, match="expected q, k"):
        ops.blocksparse_attention(q[0], q[0], q[0], torch.ones(3, 3), 16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("pos", [-1, 64, 1000])
def test_decode_attention_rejects_out_of_range_cpu_pos(backend, pos):
    """A CPU ``pos`` is range-checked before any kernel reads the cache (an unchecked one crashed
    the Triton interpreter)."""
    if backend == "triton":
        from conftest import require_triton
        require_triton()
    q, k, v = torch.randn(2, 2, 24), torch.randn(2, 2, 64, 24), torch.randn(2, 2, 64, 24)
    with use_backend(backend), pytest.raises(ValueError, match=r"pos must be in \[0, 64\)"):
        ops.decode_attention(q, k, v, torch.tensor(pos))


@pytest.mark.parametrize("pos", [-3, -1, 64, 10 ** 6])
def test_decode_attention_device_pos_out_of_range_gives_nan(pos):
    """A device ``pos`` is never read on the host (no sync, CUDA-graph safe): out of range, the
    torch path and the Triton kernel write NaN rather than read out of bounds; in range they agree."""
    from conftest import require_triton
    require_triton()
    from videogpt_fast.kernels.blocksparse_attention import blocksparse_decode_attention
    q, k, v = torch.randn(2, 2, 24), torch.randn(2, 2, 64, 24), torch.randn(2, 2, 64, 24)
    layout = torch.ones(1, 4, 4, dtype=torch.bool)
    assert R.decode_attention_reference(q, k, v, torch.tensor(pos)).isnan().all()
    out = torch.zeros(2, 2, 1, 24)
    blocksparse_decode_attention(q.unsqueeze(2), k, v, layout, 16, torch.tensor(pos), out=out)
    assert out.isnan().all()
    for p in (0, 17, 63):
        torch.testing.assert_close(blocksparse_decode_attention(q.unsqueeze(2), k, v, layout, 16, torch.tensor(p)).squeeze(2),
                                   R.decode_attention_reference(q, k, v, torch.tensor(p)), atol=1e-5, rtol=1e-5)


def test_decode_attention_dtype_mismatch_is_a_clear_error():
    q, k, v = torch.randn(1, 2, 8), torch.randn(1, 2, 16, 8, dtype=torch.float64), torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError, match="share one floating dtype"):
        ops.decode_attention(q, k, v, torch.tensor(3))


@pytest.mark.parametrize("call", [
    lambda: ops.codebook_nearest(torch.randn(3, 4), torch.randn(2, 4, dtype=torch.float64)),
    lambda: ops.codebook_nearest_with_stats(torch.randint(0, 3, (3, 4)), torch.randint(0, 3, (2, 4))),
    lambda: ops.axial_attention(torch.randn(1, 1, 3, 4, 8), torch.randn(1, 1, 3, 4, 8).half(),
                                torch.randn(1, 1, 3, 4, 8), 2),
    lambda: ops.blocksparse_attention(torch.randn(1, 1, 32, 8), torch.randn(1, 1, 32, 8),
                                      torch.randn(1, 1, 32, 8).bfloat16(), torch.ones(2, 2), 16),
])
def test_ops_reject_mixed_or_integer_dtypes_with_a_clear_error(call):
    with pytest.raises(ValueError, match="share one floating dtype"):
        call()


@pytest.mark.parametrize("head_dim", [12, 144])
@pytest.mark.parametrize("sparse", [False, True])
def test_decode_attention_torch_matches_float64(head_dim, sparse):
    torch.manual_seed(0)
    B, H, L, block = 2, 3, 128, 32
    q, k, v = torch.randn(B, H, head_dim), torch.randn(B, H, L, head_dim), torch.randn(B, H, L, head_dim)
    layout = None
    if sparse:
        row = torch.rand(H, L // block) < 0.5
        row[:, 0] = row[:, 2] = True  # a visible key for every position tested
        layout = row[:, None, :].expand(H, L // block, L // block)  # every layout row is `row`
    for p in (0, 70, 95):
        pos = torch.tensor(p)
        with use_backend("torch"):
            out = ops.decode_attention(q, k, v, pos, layout, block)
        assert_close(out.double(), R.decode_attention_reference_dense(q, k, v, p, layout, block),
                     rtol=1e-5, atol=1e-6)


def test_decode_attention_validation_and_cuda_backend_on_cpu():
    q, k = torch.randn(1, 2, 8), torch.randn(1, 2, 64, 8)
    with pytest.raises(ValueError, match="one-element int64"):
        ops.decode_attention(q, k, k, torch.tensor(1.0))
    with pytest.raises(ValueError, match="not divisible by block"):
        ops.decode_attention(q, k, k, torch.tensor(1), torch.ones(2, 2, 2, dtype=torch.bool), 30)
    with pytest.raises(ValueError, match="layout must be"):
        ops.decode_attention(q, k, k, torch.tensor(1), torch.ones(2, 2, 3, dtype=torch.bool), 32)
    with use_backend("cuda"), pytest.raises(BackendUnavailableError, match="decode_attention"):
        ops.decode_attention(q, k, k, torch.tensor(1))


# --------------------------------------------------------------------------------------------
# bad input to every public op: a clear exception naming the constraint, from ops, never from inside
# an implementation (found by adversarial testing after the issue-17 refactor)
_q5, _q4, _dq, _dk = torch.randn(1, 2, 3, 4, 8), torch.randn(1, 2, 32, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 32, 8)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.codebook_nearest([[1.0]], torch.randn(2, 4)), TypeError, "x must be a torch.Tensor"),
    (lambda: ops.axial_attention(_q5, _q5, _q5, "2"), TypeError, "dim must be an int"),
    (lambda: ops.axial_attention(_q5, _q5, _q5, 2.0), TypeError, "dim must be an int"),
    (lambda: ops.axial_attention(*(torch.randn(1, 2, 3, 4, 0),) * 3, 2), ValueError, "head dims must be >= 1"),
    (lambda: ops.blocksparse_attention(_q4, _q4, _q4, torch.ones(2, 2), 16.0), TypeError, "block must be an int"),
    (lambda: ops.blocksparse_attention(*(torch.randn(1, 2, 0, 8),) * 3, torch.ones(0, 0), 16), ValueError,
     "sequence length must be >= 1"),
    (lambda: ops.blocksparse_attention(*(torch.randn(1, 2, 32, 0),) * 3, torch.ones(2, 2), 16), ValueError,
     "head dims must be >= 1"),
    (lambda: ops.decode_attention(_dq, _dk, _dk, 3), TypeError, "pos must be a torch.Tensor"),
    (lambda: ops.decode_attention(_dq, _dk, _dk, torch.tensor(3), torch.ones(2, 2, dtype=torch.bool)), ValueError,
     "block must be a positive int"),
    (lambda: ops.decode_attention(_dq, _dk, _dk, torch.tensor(3), backend="garbage"), ValueError,
     "backend must be one of torch, cuda, triton"),
    (lambda: ops.decode_attention(_dq, _dk, _dk, torch.tensor(3), backend="cuda"), BackendUnavailableError,
     "backend 'cuda' was passed but"),
])
def test_ops_reject_bad_arguments_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_decode_attention_explicit_triton_backend_on_cpu_without_interpreter(monkeypatch):
    """An explicit ``backend="triton"`` is checked like a resolved one (it reached the Triton
    launcher, which failed with '0 active drivers')."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from videogpt_fast.backends import triton_available
    if not triton_available():
        pytest.skip("triton is not installed")
    with pytest.raises(BackendUnavailableError, match="need a CUDA tensor"):
        ops.decode_attention(_dq, _dk, _dk, torch.tensor(3), backend="triton")


def test_empty_inputs_give_empty_outputs_on_the_torch_backend():
    """0 rows / an empty attention axis give empty results (as the Triton kernels do), not a crash
    in the reference (torch.cat of nothing, reshape(-1) of 0 elements)."""
    with use_backend("torch"):
        assert ops.codebook_nearest(torch.randn(0, 4), torch.randn(3, 4)).shape == (0,)
        codes, counts, sums = ops.codebook_nearest_with_stats(torch.randn(0, 4), torch.randn(3, 4))
        assert codes.shape == (0,) and torch.equal(counts, torch.zeros(3)) and torch.equal(sums, torch.zeros(3, 4))
        q = torch.randn(1, 2, 0, 4, 8)
        assert ops.axial_attention(q, q, torch.randn(1, 2, 0, 4, 5), 2).shape == (1, 2, 0, 4, 5)
