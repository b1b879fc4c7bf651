"""The CUDA extension videogpt_fast._C (csrc/): decode attention against the
PyTorch references. GPU tests build it with videogpt_fast.csrc_build.load() and are skipped, with
the reason, where that cannot run."""
import pytest
import torch

from conftest import assert_close, gpt_fixture_model
from videogpt_fast import backends, csrc_build, ops
from videogpt_fast import sample as S
from videogpt_fast.backends import BackendUnavailableError, use_backend
from videogpt_fast.kernels import reference as R

_WHY = csrc_build.why_unbuildable() if backends.cuda_extension() is None else None


def test_sources_exist_and_define_the_ops():
    srcs = csrc_build.sources()
    names = {s.rsplit("/", 1)[-1] for s in srcs}
    assert {"videogpt_fast.cpp", "decode_attention.cu"} <= names
    text = open([s for s in srcs if s.endswith("videogpt_fast.cpp")][0]).read()
    assert "decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor? layout_row, int block)" in text
    assert 'm.def("codebook_nearest' not in text  # deleted: the Triton search measured faster and is exact


@pytest.mark.skipif(backends.cuda_extension() is not None, reason="the CUDA extension is installed here")
def test_without_extension_cuda_backend_raises_clearly():
    x, cb = torch.randn(4, 8), torch.randn(16, 8)
    with use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="not built"):
            ops.decode_attention(torch.randn(1, 2, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8),
                                 torch.tensor(3))
    with use_backend("auto"):  # auto takes an implementation that exists
        assert torch.equal(ops.codebook_nearest(x, cb), R.codebook_nearest_reference(x, cb))
    with use_backend("cuda"):  # the extension has no codebook search: as under auto, said once
        assert torch.equal(ops.codebook_nearest(x, cb), R.codebook_nearest_reference(x, cb))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_jit_build_without_cuda_is_a_clear_error():
    if backends.cuda_extension() is not None:
        pytest.skip("the extension is installed, load() returns it")
    with pytest.raises(RuntimeError, match="cannot build the CUDA extension videogpt_fast._C"):
        csrc_build.load()


# ------------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def ext():
    if _WHY is not None:
        pytest.skip(f"CUDA extension unavailable: {_WHY}")
    return csrc_build.load()


@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("head_dim", [64, 128, 144, 256, 12, 60])
@pytest.mark.parametrize("sparse", [False, True])
def test_decode_attention_matches_reference(ext, dtype, tol, head_dim, sparse):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    B, H, L, block = 3, 4, 2048, 32
    q = torch.randn(B, H, head_dim, device=dev).to(dtype)
    k = torch.randn(B, H, L, head_dim, device=dev).to(dtype)
    v = torch.randn(B, H, L, head_dim, device=dev).to(dtype)
    row = layout = None
    if sparse:
        row = torch.rand(H, L // block, device=dev) < 0.4
        row[:, 0] = True
        layout = row[:, None, :].expand(H, L // block, L // block)  # every layout row is `row`
    for p in (0, 1, 31, 32, 777, L - 1):
        pos = torch.tensor([p], device=dev)
        if row is not None:
            row[:, p // block] = True
        out = torch.ops.videogpt_fast.decode_attention(q, k, v, pos, row, block)
        assert out.dtype == dtype and out.shape == (B, H, head_dim)
        ref = R.decode_attention_reference_dense(q, k, v, p, layout, block)
        assert_close(out.double(), ref, rtol=tol, atol=tol)
        with use_backend("torch"):
            torch_out = ops.decode_attention(q, k, v, pos, layout, block)
        assert_close(out.float(), torch_out.float(), rtol=tol, atol=tol)


@gpu
def test_decode_attention_in_cuda_graph_reads_pos_from_device(ext):
    dev = torch.device("cuda")
    q, k, v = (torch.randn(2, 4, 144, device=dev), torch.randn(2, 4, 512, 144, device=dev),
               torch.randn(2, 4, 512, 144, device=dev))
    pos = torch.zeros(1, dtype=torch.long, device=dev)
    torch.ops.videogpt_fast.decode_attention(q, k, v, pos, None, 0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.videogpt_fast.decode_attention(q, k, v, pos, None, 0)
    for p in (5, 300, 511):
        pos.fill_(p)
        graph.replay()
        assert_close(out.double(), R.decode_attention_reference_dense(q, k, v, p))


@gpu
def test_opcheck_and_compile(ext):
    dev = torch.device("cuda")
    args = (torch.randn(2, 4, 64, device=dev), torch.randn(2, 4, 256, 64, device=dev),
            torch.randn(2, 4, 256, 64, device=dev), torch.tensor([100], device=dev),
            torch.ones(4, 8, dtype=torch.bool, device=dev), 32)
    torch.library.opcheck(torch.ops.videogpt_fast.decode_attention.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    fn = torch.compile(lambda a: torch.ops.videogpt_fast.decode_attention(*a) * 2, fullgraph=True)
    assert_close(fn(args), torch.ops.videogpt_fast.decode_attention(*args) * 2)


@gpu
def test_sampling_with_extension_matches_torch_backend(ext):
    """The fast sampler on CUDA (graph + extension) gives the torch-backend decode logits."""
    model, ref, _ = gpt_fixture_model("gpt_sparse")
    model = model.cuda()
    try:
        with use_backend("cuda"):
            fast = S.teacher_forced_decode(model, ref["targets"].cuda())
        assert_close(fast.cpu(), ref["decode_logits"], rtol=1e-4, atol=1e-4)
        with use_backend("cuda"):
            a = S.sample_codes(model, 2, top_k=1, progress=False)
        with use_backend("torch"):
            b = S.sample_codes(model, 2, top_k=1, progress=False, cuda_graph=False)
        assert torch.equal(a, b)
    finally:
        model.cpu()
