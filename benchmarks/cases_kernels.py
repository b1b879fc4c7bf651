"""Kernel cases: codebook search, axial attention, block-sparse attention.

``reference`` is computed the way the original computes it (dense N x K distances; permute +
matmul/softmax per axis; dense masked attention); ``torch`` is this package's plain-PyTorch path;
``triton``/``cuda`` the kernels; ``sdpa_*`` PyTorch's fused dense attention for scale;
``original`` the original ``videogpt`` package's modules when it is installed (see ``original.py``);
``flex_*`` PyTorch's FlexAttention with a BlockMask of the same layout.

Every implementation, the reference included, is checked against a float64 truth computed on the
same inputs (attention: on a slice of batch and heads, since every (batch, head) is independent):
codes against a float64 argmin (see :func:`codes_check`), attention outputs and gradients by
relative error with a tolerance per dtype (:data:`harness.REL_TOL`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Tuple

import torch
import torch.nn.functional as F

from videogpt_fast import ops
from videogpt_fast.attention import StridedSparsityConfig
from videogpt_fast.backends import cuda_usable, triton_usable, use_backend
from videogpt_fast.kernels import reference as R

from . import original as O
from .harness import Case, Settings, register, rel_error_check, rel_tolerance


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


def codebook_truth(x: torch.Tensor, e: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The float64 argmin of ``||x_i - e_k||^2`` over the codebook (N,) int64, in row chunks."""
    x64, e64 = x.double(), e.double()
    e2 = (e64 ** 2).sum(1)
    return torch.cat([((xc ** 2).sum(1, keepdim=True) - 2 * xc @ e64.t() + e2).argmin(1)
                      for xc in x64.split(chunk)])


def rounding_bound(dtype: torch.dtype, d: int) -> Tuple[float, str]:
    """(c, text): two codes a, b of an input x count as a tie in ``dtype`` when their float64
    distances differ by at most ``c * ((|x|+|e_a|)^2 + (|x|+|e_b|)^2)``. Each distance
    ``|x|^2 - 2 x.e + |e|^2`` computed in ``dtype`` rounds its three terms and two sums once each
    (at most 5 u (|x|+|e|)^2 with u the unit roundoff, first order) and accumulates the dot product
    of D terms in float32 at worst (D 2^-24 |x||e|)."""
    u = torch.finfo(dtype).eps / 2
    c = 5 * u + d * 2.0 ** -24
    name = str(dtype).split(".")[-1]
    return c, (f"ties<=bound: codes equal the float64 argmin, except near-ties: float64 distance gap <= "
               f"(5u + D*2^-24)*((|x|+|e_a|)^2 + (|x|+|e_b|)^2), u = {u:.3g} ({name}), D = {d}")


def codes_check(x: torch.Tensor, e: torch.Tensor, exact: bool) -> Tuple[Callable[[Any, Any], str], str]:
    """(check, tolerance) comparing codes with the float64 argmin (:func:`codebook_truth`).

    ``exact``: every code must equal it. Else codes may differ only where the two float64 distances
    are within :func:`rounding_bound` of ``x``'s dtype; the detail says how many differ and the
    largest gap over its bound."""
    c, text = rounding_bound(x.dtype, x.shape[1])
    tol = "exact: every code equals the float64 argmin" if exact else text

    def check(truth: torch.Tensor, out: torch.Tensor) -> str:
        if out.numel() != truth.numel() or out.is_floating_point() or out.is_complex():
            raise AssertionError(f"codes must be {truth.numel()} integers, got {tuple(out.shape)} {out.dtype}")
        out = out.reshape(-1).to(truth.device)
        if truth.numel() and not 0 <= int(out.min()) <= int(out.max()) < e.shape[0]:   # -1 would index e[-1]
            raise AssertionError(f"codes must be in [0, {e.shape[0]}), got [{int(out.min())}, {int(out.max())}]")
        rows = (out != truth).nonzero().flatten()
        n, total = rows.numel(), truth.numel()
        if n == 0:
            return f"0 of {total} codes differ"
        xi = x.double()[rows]
        ea, eb = e.double()[truth[rows]], e.double()[out[rows]]
        gap = ((xi - eb) ** 2).sum(1) - ((xi - ea) ** 2).sum(1)
        nx = xi.norm(dim=1)
        bound = c * ((nx + ea.norm(dim=1)) ** 2 + (nx + eb.norm(dim=1)) ** 2)
        ratio = float((gap / bound).max())
        if exact:
            raise AssertionError(f"{n} of {total} codes differ from the float64 argmin (exact required; "
                                 f"largest float64 gap {float(gap.max()):.3g}, {ratio:.3g}x the "
                                 f"{str(x.dtype).split('.')[-1]} rounding bound)")
        beyond = int((gap > bound).sum())
        if beyond:
            raise AssertionError(f"{n} of {total} codes differ, {beyond} beyond the rounding bound "
                                 f"(largest gap {ratio:.3g}x the bound)")
        return f"{n} of {total} codes differ, all near-ties within the rounding bound (largest gap {ratio:.2f}x the bound)"
    return check, tol


#: implementations that certify their codes against float64 (the Triton search: TF32 candidates, then a
#: float64 re-check, kernels/codebook.py); the others (the original, the in-package reference and the
#: CUDA op) evaluate the original's |x|^2 - 2 x.e + |e|^2 in the input dtype, so near-ties may go either way
_CERTIFIED = ("triton",)


def _codes_checks(case: Case, x: torch.Tensor, e: torch.Tensor, impls) -> None:
    """fp32 inputs: the certified implementations (:data:`_CERTIFIED`) must give exactly the float64
    codes, the others may differ only on near-ties within the fp32 rounding bound; half precision:
    all within the dtype's bound (the Triton kernel certifies fp32 inputs only)."""
    case.check, case.tolerance = codes_check(x, e, exact=False)
    if x.dtype == torch.float32:
        exact = codes_check(x, e, exact=True)
        case.impl_checks.update({impl: exact for impl in impls if impl in _CERTIFIED})


def codebook_cases(s: Settings) -> Iterator[Case]:
    dev = s.device
    sizes = [(4096, 512, 64)] if s.quick or dev.type == "cpu" else [(65536, 2048, 256), (16384, 1024, 256)]
    for dt in _dtypes(dev, s.quick):
        for n, k, d in sizes:
            x = torch.randn(n, d, device=dev, dtype=dt)
            e = torch.randn(k, d, device=dev, dtype=dt)
            case = Case("codebook_nearest", "kernels", dict(N=n, K=k, D=d), str(dt).split(".")[-1],
                        impls={"reference": lambda x=x, e=e: original_codebook_argmin(x, e),
                               "torch": lambda x=x, e=e: R.codebook_nearest_reference(x, e)},
                        flops=2.0 * n * k * d, bytes=float((n * d + k * d) * x.element_size() + n * 8),
                        truth=lambda x=x, e=e: codebook_truth(x, e))
            _fast_impls(case, dev, "codebook_nearest", lambda x=x, e=e: ops.codebook_nearest(x, e))
            O.add_original(case, lambda pkg, x=x, e=e: O.bind(O.codebook_search(pkg, e), x))
            _codes_checks(case, x, e, list(case.impls) + ["original"])
            yield case


def codebook_stats_cases(s: Settings) -> Iterator[Case]:
    """Search + EMA statistics (the VQ-VAE's training step): the original's one-hot formulas,
    bincount/index_add_ (torch), and the fused Triton kernel. Codes are checked as in
    :func:`codebook_cases`; counts and sums against float64 statistics of the implementation's own
    codes (so a tie resolved either way checks the arithmetic, not the tie)."""
    dev = s.device
    n, k, d = (4096, 512, 64) if s.quick or dev.type == "cpu" else (65536, 2048, 256)
    x = torch.randn(n, d, device=dev)
    e = torch.randn(k, d, device=dev)

    def original():
        codes = original_codebook_argmin(x, e)
        onehot = F.one_hot(codes, k).type_as(x)
        return codes, onehot.sum(0), (x.t() @ onehot).t()

    stats_tol = 1e-5

    def with_stats(codes_chk):
        def check(truth, out):
            detail = codes_chk(truth, out[0])
            codes = out[0].reshape(-1)
            counts = torch.bincount(codes, minlength=k).double()
            sums = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(0, codes, x.double())
            return detail + "; " + rel_error_check(stats_tol, ("counts", "sums"))((counts, sums), out[1:])
        return check

    case = Case("codebook_nearest_with_stats", "kernels", dict(N=n, K=k, D=d), "float32",
                impls={"reference": original, "torch": lambda: ops.codebook_nearest_with_stats(x, e)},
                flops=2.0 * n * k * d, bytes=float((n * d + 2 * k * d) * 4 + n * 8),
                truth=lambda: codebook_truth(x, e))
    _fast_impls(case, dev, "codebook_nearest_with_stats", lambda: ops.codebook_nearest_with_stats(x, e))
    _codes_checks(case, x, e, list(case.impls))
    suffix = f"; counts and sums of the implementation's codes: relative error <= {stats_tol:.0e} vs float64"
    case.check, case.tolerance = with_stats(case.check), case.tolerance + suffix
    case.impl_checks = {impl: (with_stats(chk), tol + suffix) for impl, (chk, tol) in case.impl_checks.items()}
    yield case


# ------------------------------------------------------------------------------------------
def original_axial(q, k, v, dim):
    """The original AxialAttention: move the axis next to last, copy, attention, move back."""
    qm, km, vm = (torch.movedim(t, dim, -2).contiguous() for t in (q, k, v))
    shape = vm.shape
    out = R.attention_reference(qm.flatten(end_dim=-3), km.flatten(end_dim=-3), vm.flatten(end_dim=-3))
    return torch.movedim(out.view(shape), -2, dim).contiguous()


def _fwd_bwd(fn, q, k, v, grad):
    """The VQ-VAE block's three axial attentions (T, H, W) forward and backward."""
    for t in (q, k, v):
        t.grad = None
    out = sum(fn(q, k, v, d) for d in (2, 3, 4))
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


def _float64_truth(run, fn, q, k, v, grad, sl, backward: bool):
    """``run(fn, ...)`` on float64 copies of the inputs' slice ``sl`` (a batch/head slice: every
    (batch, head) is computed independently, so the truth of a slice is the slice of the truth)."""
    q64, k64, v64 = (t.detach()[sl].double().requires_grad_(backward) for t in (q, k, v))
    return run(fn, q64, k64, v64, grad[sl].double())


def _sliced(check, sl):
    """``check`` applied to the slice ``sl`` of every output tensor."""
    def sliced(truth, out):
        return check(truth, [o[sl] for o in (out if isinstance(out, (tuple, list)) else (out,))])
    return sliced


_GRAD_NAMES = ("out", "dq", "dk", "dv")


def _axial_case(dev, dt, b, h, sp, d) -> Case:
    q, k, v = (torch.randn(b, h, *sp, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, *sp, d, device=dev, dtype=dt)
    positions = b * h * math.prod(sp)
    fwd = sum(4.0 * positions * n * d for n in sp)
    sl = (slice(0, min(b, 2)),)
    tol, text = rel_tolerance(dt)
    case = Case("axial_attention_fwd_bwd", "kernels", dict(B=b, heads=h, latent=sp, head_dim=d),
                str(dt).split(".")[-1],
                impls={"reference": lambda: _fwd_bwd(original_axial, q, k, v, grad),
                       "torch": lambda: _fwd_bwd(R.axial_attention_reference, q, k, v, grad)},
                flops=3.5 * fwd, bytes=float(3 * 4 * positions * d * q.element_size()),
                truth=lambda: _float64_truth(_fwd_bwd, original_axial, q, k, v, grad, sl, True),
                check=_sliced(rel_error_check(tol, _GRAD_NAMES), sl),
                tolerance=f"{text}; float64 truth on batch 0:{sl[0].stop}")
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


_FLEX: dict = {}


def compiled_flex_attention():
    """``torch.compile(flex_attention)``, created once, with dynamo's recompile limit raised: it
    compiles once per shape and dtype, more than the default limit (8), past which dynamo would
    silently run the unfused eager path."""
    if "compiled" not in _FLEX:
        import torch._dynamo as dynamo
        from torch.nn.attention.flex_attention import flex_attention
        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, key):
                setattr(dynamo.config, key, max(getattr(dynamo.config, key), 64))
        _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["compiled"]


def flex_blocksparse(layout: torch.Tensor, block: int, seq_len: int, device: torch.device):
    """``(f(q, k, v), name)``: FlexAttention with a BlockMask built from the same strided layout
    (``create_block_mask`` over a mask_mod reading the layout, causal inside the blocks), what a
    user would pick instead of the block-sparse kernel today. Compiled (``torch.compile``) on CUDA;
    eager on CPU (PyTorch's unfused path: forward only)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    lay = layout.to(device).bool()
    heads = lay.shape[0]

    def strided_causal(b, h, q_idx, kv_idx):
        return lay[h, q_idx // block, kv_idx // block] & (q_idx >= kv_idx)

    mask = create_block_mask(strided_causal, None, heads, seq_len, seq_len, device=str(device))
    if device.type == "cuda":
        fn, name = compiled_flex_attention(), "flex_compiled"
    else:
        fn, name = flex_attention, "flex_eager"
    def run(q, k, v):
        if not torch.is_grad_enabled():  # forward-only: FlexAttention's CPU path refuses inputs that require grad
            q, k, v = q.detach(), k.detach(), v.detach()
        return fn(q, k, v, block_mask=mask)
    return run, name


def _blocksparse_case(dev, dt, latent, h, d, b, block, mode, run, with_flex: bool = True) -> Case:
    L = math.prod(latent)
    layout = StridedSparsityConfig(latent, h, True, block, 4).make_layout().to(dev)
    nnz = int(layout.sum())
    q, k, v = (torch.randn(b, h, L, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, L, d, device=dev, dtype=dt)
    mask = R.blocksparse_dense_mask(layout, block, True).unsqueeze(0)
    flops_fwd = 4.0 * b * nnz * block * block * d
    sl = (slice(0, 1), slice(0, min(h, 2)))
    tol, text = rel_tolerance(dt)
    dense = lambda q, k, v: R.attention_reference(q, k, v, mask=mask[:, :q.shape[1]])  # noqa: E731
    case = Case(f"blocksparse_attention_{mode}", "kernels",
                dict(B=b, heads=h, L=L, head_dim=d, block=block, density=round(nnz / (h * (L // block) ** 2), 4)),
                str(dt).split(".")[-1], impls={}, flops=(3.5 if mode == "fwd_bwd" else 1.0) * flops_fwd,
                bytes=float(4 * 4 * b * h * L * d * q.element_size()), scale_key="L",
                truth=lambda: _float64_truth(run, dense, q, k, v, grad, sl, mode == "fwd_bwd"),
                check=_sliced(rel_error_check(tol, _GRAD_NAMES), sl),
                tolerance=f"{text}; float64 dense masked truth on batch 0, heads 0:{sl[1].stop}")
    dense_bytes = b * h * L * L * 4 * 3
    if dense_bytes < min(16 << 30, torch.cuda.mem_get_info(dev)[0] // 2 if dev.type == "cuda" else 8 << 30):
        case.impls["reference"] = lambda: run(dense, q, k, v, grad)
    else:
        case.reference = "torch"
        case.skipped["reference"] = f"dense masked reference needs ~{dense_bytes / 2**30:.0f} GiB: speedups are over torch"
    case.impls["torch"] = lambda: run(
        lambda q, k, v: R.blocksparse_attention_reference(q, k, v, layout, block, True), q, k, v, grad)
    sdpa = _dense_sdpa(dev, dt)
    case.impls[sdpa.__name__] = lambda: run(sdpa, q, k, v, grad)
    case.skipped[f"{sdpa.__name__}:check"] = "dense causal attention computes a different (denser) function: timed only"
    case.baselines = (sdpa.__name__,)
    if dev.type == "cpu" and mode == "fwd_bwd":
        case.skipped["flex_eager"] = f"FlexAttention has no CPU backward in torch {torch.__version__}"
    elif dev.type == "cuda" and not with_flex:
        case.skipped["flex_compiled"] = ("FlexAttention is timed in the bf16 cases only: it compiles anew for every "
                                         "shape and dtype (the GPU check's time budget)")
    else:
        try:
            flex, name = flex_blocksparse(layout, block, L, dev)
            case.impls[name] = lambda: run(flex, q, k, v, grad)
            case.baselines += (name,)
        except Exception as e:  # e.g. a torch without FlexAttention: say so in the results
            case.skipped["flex"] = f"FlexAttention unavailable: {type(e).__name__}: {e}"
    _fast_impls(case, dev, "blocksparse_attention", lambda: run(
        lambda q, k, v: ops.blocksparse_attention(q, k, v, layout, block, True), q, k, v, grad))
    O.add_original(case, lambda pkg: O.bind(run, O.sparse_attention(pkg, latent, h, block), q, k, v, grad))
    return case


def blocksparse_configs(device: torch.device, quick: bool):
    """(dtype, latent, heads, head_dim, batch, mode) of the block-sparse cases. On GPU: the prior's
    training sizes (latents 4x32x32 and 8x32x32, i.e. L = 4096 and 8192; heads 4x144 (hidden 576)
    and 8x128; batch 8, the original's ``train_videogpt.py`` default per GPU) forward+backward in
    bf16 and fp16 first, then fp32, B=1 (launch-bound) and forward-only cases."""
    if quick or device.type == "cpu":
        return [(torch.float32, (4, 16, 16), 2, 32, 2, mode) for mode in ("fwd_bwd", "fwd")]
    heads = ((4, 144), (8, 128))
    main = [(dt, (t, 32, 32), h, d, 8, "fwd_bwd") for t in (4, 8) for dt in (torch.bfloat16, torch.float16)
            for h, d in heads]
    return main + [(torch.float32, (4, 32, 32), 8, 128, 8, "fwd_bwd"),
                   (torch.bfloat16, (4, 32, 32), 8, 128, 1, "fwd_bwd")] + \
        [(torch.bfloat16, (4, 32, 32), h, d, 8, "fwd") for h, d in heads]


def blocksparse_cases(s: Settings) -> Iterator[Case]:
    runs = {"fwd_bwd": _sparse_fwd_bwd, "fwd": _sparse_fwd}
    for dt, latent, h, d, b, mode in blocksparse_configs(s.device, s.quick):
        yield _blocksparse_case(s.device, dt, latent, h, d, b, 32, mode, runs[mode], with_flex=dt == torch.bfloat16)


# ------------------------------------------------------------------------------------------
def decode_cases(s: Settings) -> Iterator[Case]:
    """One sampling step's attention: the query at position ``pos`` over the K/V cache (dense
    causal), at the sampler's sizes (batch 16, the UCF-101 prior's 4 heads x 144, 4096 positions;
    pos at the end of the grid, the most work). Checked against float64 on batches 0:2."""
    dev = s.device
    b, h, L, d = (2, 2, 256, 32) if s.quick or dev.type == "cpu" else (16, 4, 4096, 144)
    for dt in _dtypes(dev, s.quick):
        q = torch.randn(b, h, d, device=dev, dtype=dt)
        k, v = (torch.randn(b, h, L, d, device=dev, dtype=dt) for _ in range(2))
        pos = torch.tensor([L - 1], device=dev)
        sl = (slice(0, min(b, 2)),)
        tol, text = rel_tolerance(dt)
        case = Case("decode_attention", "kernels", dict(B=b, heads=h, L=L, head_dim=d, pos=L - 1),
                    str(dt).split(".")[-1],
                    impls={"reference": lambda q=q, k=k, v=v, pos=pos: R.decode_attention_reference(q, k, v, pos)},
                    flops=4.0 * b * h * L * d, bytes=float(2 * b * h * L * d * k.element_size()),
                    truth=lambda q=q, k=k, v=v, pos=pos: R.decode_attention_reference(
                        q[sl].double(), k[sl].double(), v[sl].double(), pos),
                    check=_sliced(rel_error_check(tol, ("out",)), sl),
                    tolerance=f"{text}; float64 truth on batch 0:{sl[0].stop}")
        _fast_impls(case, dev, "decode_attention", lambda q=q, k=k, v=v, pos=pos: ops.decode_attention(q, k, v, pos),
                    has_cuda=True)
        yield case


register("decode_attention")(decode_cases)
register("codebook_nearest")(codebook_cases)
register("codebook_nearest_with_stats")(codebook_stats_cases)
register("axial_attention_fwd_bwd")(axial_cases)
register("blocksparse_attention_fwd_bwd", "blocksparse_attention_fwd")(blocksparse_cases)
