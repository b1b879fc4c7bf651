"""Kernel cases: codebook search, axial attention, block-sparse attention.

``reference`` is computed the way the original computes it (dense N x K distances; permute +
matmul/softmax per axis; dense masked attention); ``torch`` is this package's plain-PyTorch path;
``triton``/``cuda`` the kernels; ``sdpa_*`` PyTorch's fused dense attention for scale;
``original`` the original ``videogpt`` package's modules when it is installed (see ``original.py``).
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from videogpt_fast import ops
from videogpt_fast.attention import StridedSparsityConfig
from videogpt_fast.backends import cuda_usable, triton_usable, use_backend

from . import original as O
from .harness import Case, Settings, assert_allclose, register, tolerance


def _fast_impls(case: Case, device: torch.device, op: str, call, has_cuda: bool = False) -> None:
    """Add the triton (and cuda) implementation of ``op`` to ``case`` or record why not."""
    why = triton_usable(device)
    if why is None and device.type == "cuda":
        def run_triton():
            with use_backend("triton"):
                return call()
        case.impls["triton"] = run_triton
    else:
        case.skipped["triton"] = why or "Triton is only timed on CUDA (the interpreter is a test tool)"
    if has_cuda:
        why = cuda_usable(device, op)
        if why is None:
            def run_cuda():
                with use_backend("cuda"):
                    return call()
            case.impls["cuda"] = run_cuda
        else:
            case.skipped["cuda"] = why


def _dtypes(device: torch.device, quick: bool):
    if device.type != "cuda":
        return [torch.float32]
    return [torch.bfloat16] if quick else [torch.float32, torch.bfloat16, torch.float16]


# ------------------------------------------------------------------------------------------
def original_codebook_argmin(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The original's search: the whole N x K distance matrix, then argmin."""
    d = (x ** 2).sum(dim=1, keepdim=True) - 2 * x @ e.t() + (e.t() ** 2).sum(dim=0, keepdim=True)
    return torch.argmin(d, dim=1)


def _codes_check(ref: torch.Tensor, out: torch.Tensor) -> None:
    mismatched = int((ref != out).sum())
    if mismatched:
        raise AssertionError(f"{mismatched} of {ref.numel()} codes differ from the reference")


def codebook_cases(s: Settings) -> Iterator[Case]:
    dev = s.device
    sizes = [(4096, 512, 64)] if s.quick or dev.type == "cpu" else [(65536, 2048, 256), (16384, 1024, 256)]
    for dt in _dtypes(dev, s.quick):
        for n, k, d in sizes:
            x = torch.randn(n, d, device=dev, dtype=dt)
            e = torch.randn(k, d, device=dev, dtype=dt)
            case = Case("codebook_nearest", "kernels", dict(N=n, K=k, D=d), str(dt).split(".")[-1],
                        impls={"reference": lambda x=x, e=e: original_codebook_argmin(x, e),
                               "torch": lambda x=x, e=e: ops.codebook_nearest_torch(x, e)},
                        flops=2.0 * n * k * d, bytes=float((n * d + k * d) * x.element_size() + n * 8),
                        check=_codes_check)
            _fast_impls(case, dev, "codebook_nearest", lambda x=x, e=e: ops.codebook_nearest(x, e), has_cuda=True)
            O.add_original(case, lambda pkg, x=x, e=e: O.bind(O.codebook_search(pkg, e), x))
            yield case


def codebook_stats_cases(s: Settings) -> Iterator[Case]:
    """Search + EMA statistics (the VQ-VAE's training step): the original's one-hot formulas,
    bincount/index_add_ (torch), and the fused Triton kernel."""
    dev = s.device
    n, k, d = (4096, 512, 64) if s.quick or dev.type == "cpu" else (65536, 2048, 256)
    x = torch.randn(n, d, device=dev)
    e = torch.randn(k, d, device=dev)

    def original():
        codes = original_codebook_argmin(x, e)
        onehot = F.one_hot(codes, k).type_as(x)
        return codes, onehot.sum(0), (x.t() @ onehot).t()

    def check(ref, out):
        _codes_check(ref[0], out[0])
        assert_allclose(atol=1e-3, rtol=1e-4)(ref[1:], out[1:])

    case = Case("codebook_nearest_with_stats", "kernels", dict(N=n, K=k, D=d), "float32",
                impls={"reference": original, "torch": lambda: ops.codebook_nearest_with_stats(x, e)},
                flops=2.0 * n * k * d, bytes=float((n * d + 2 * k * d) * 4 + n * 8), check=check)
    _fast_impls(case, dev, "codebook_nearest_with_stats", lambda: ops.codebook_nearest_with_stats(x, e))
    yield case


# ------------------------------------------------------------------------------------------
def original_axial(q, k, v, dim):
    """The original AxialAttention: move the axis next to last, copy, attention, move back."""
    qm, km, vm = (torch.movedim(t, dim, -2).contiguous() for t in (q, k, v))
    shape = vm.shape
    out = ops.attention_reference(qm.flatten(end_dim=-3), km.flatten(end_dim=-3), vm.flatten(end_dim=-3))
    return torch.movedim(out.view(shape), -2, dim).contiguous()


def _fwd_bwd(fn, q, k, v, grad):
    """The VQ-VAE block's three axial attentions (T, H, W) forward and backward."""
    for t in (q, k, v):
        t.grad = None
    out = sum(fn(q, k, v, d) for d in (2, 3, 4))
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


def _axial_case(dev, dt, b, h, sp, d) -> Case:
    q, k, v = (torch.randn(b, h, *sp, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, *sp, d, device=dev, dtype=dt)
    positions = b * h * math.prod(sp)
    fwd = sum(4.0 * positions * n * d for n in sp)
    case = Case("axial_attention_fwd_bwd", "kernels", dict(B=b, heads=h, latent=sp, head_dim=d),
                str(dt).split(".")[-1],
                impls={"reference": lambda: _fwd_bwd(original_axial, q, k, v, grad),
                       "torch": lambda: _fwd_bwd(ops.axial_attention_torch, q, k, v, grad)},
                flops=3.5 * fwd, bytes=float(3 * 4 * positions * d * q.element_size()),
                check=assert_allclose(**tolerance(dt)))
    _fast_impls(case, dev, "axial_attention", lambda: _fwd_bwd(ops.axial_attention, q, k, v, grad))

    def original(pkg):
        fns = {d: O.axial_attention(pkg, len(sp), d) for d in (2, 3, 4)}
        return lambda: _fwd_bwd(lambda q, k, v, d: fns[d](q, k, v), q, k, v, grad)
    O.add_original(case, original)
    return case


def axial_cases(s: Settings) -> Iterator[Case]:
    dev = s.device
    shapes = [(2, 2, (4, 8, 8), 24)] if s.quick or dev.type == "cpu" else \
        [(16, 2, (4, 32, 32), 120), (16, 2, (8, 32, 32), 120)]
    for dt in _dtypes(dev, s.quick):
        for b, h, sp, d in shapes:
            yield _axial_case(dev, dt, b, h, sp, d)


# ------------------------------------------------------------------------------------------
def _sparse_fwd(fn, q, k, v, grad):
    with torch.no_grad():
        return fn(q, k, v)


def _sparse_fwd_bwd(fn, q, k, v, grad):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


def _dense_sdpa(device: torch.device, dtype: torch.dtype):
    """Dense causal SDPA, the speed bar for block-sparse attention: pinned to the flash backend
    where it exists (CUDA half precision), else SDPA's own choice (named so in the results)."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash_causal(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return sdpa_flash_causal

    def sdpa_dense_causal(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return sdpa_dense_causal


def _blocksparse_case(dev, dt, latent, h, d, b, block, mode, run) -> Case:
    L = math.prod(latent)
    layout = StridedSparsityConfig(latent, h, True, block, 4).make_layout().to(dev)
    nnz = int(layout.sum())
    q, k, v = (torch.randn(b, h, L, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, L, d, device=dev, dtype=dt)
    mask = ops.blocksparse_dense_mask(layout, block, True).unsqueeze(0)
    flops_fwd = 4.0 * b * nnz * block * block * d
    case = Case(f"blocksparse_attention_{mode}", "kernels",
                dict(B=b, heads=h, L=L, head_dim=d, block=block, density=round(nnz / (h * (L // block) ** 2), 4)),
                str(dt).split(".")[-1], impls={}, flops=(3.5 if mode == "fwd_bwd" else 1.0) * flops_fwd,
                bytes=float(4 * 4 * b * h * L * d * q.element_size()),
                check=assert_allclose(**tolerance(dt)), scale_key="L")
    dense_bytes = b * h * L * L * 4 * 3
    if dense_bytes < (torch.cuda.mem_get_info(dev)[0] // 2 if dev.type == "cuda" else 8 << 30):
        case.impls["reference"] = lambda: run(
            lambda q, k, v: ops.attention_reference(q, k, v, mask=mask), q, k, v, grad)
    else:
        case.reference = "torch"
        case.skipped["reference"] = f"dense masked reference needs ~{dense_bytes / 2**30:.0f} GiB"
    case.impls["torch"] = lambda: run(
        lambda q, k, v: ops.blocksparse_attention_torch(q, k, v, layout, block, True), q, k, v, grad)
    sdpa = _dense_sdpa(dev, dt)
    case.impls[sdpa.__name__] = lambda: run(sdpa, q, k, v, grad)
    case.skipped[f"{sdpa.__name__}:check"] = "dense causal attention computes a different (denser) function: timed only"
    case.baselines = (sdpa.__name__,)
    _fast_impls(case, dev, "blocksparse_attention", lambda: run(
        lambda q, k, v: ops.blocksparse_attention(q, k, v, layout, block, True), q, k, v, grad))
    O.add_original(case, lambda pkg: O.bind(run, O.sparse_attention(pkg, latent, h, block), q, k, v, grad))
    return case


def blocksparse_cases(s: Settings) -> Iterator[Case]:
    dev = s.device
    if s.quick or dev.type == "cpu":
        configs = [((4, 16, 16), 2, 32, 1)]
    else:
        configs = [((t, 32, 32), h, d, 1) for t in (4, 8, 16) for h, d in ((4, 144), (8, 128))]
    for dt, (latent, h, d, b), (mode, run) in itertools.product(
            _dtypes(dev, s.quick), configs, (("fwd_bwd", _sparse_fwd_bwd), ("fwd", _sparse_fwd))):
        yield _blocksparse_case(dev, dt, latent, h, d, b, 32, mode, run)


@register
def kernel_cases(s: Settings) -> Iterator[Case]:
    yield from codebook_cases(s)
    yield from codebook_stats_cases(s)
    yield from axial_cases(s)
    yield from blocksparse_cases(s)
