"""Compile the kernels for a GPU architecture on a machine without one, and report each binary.

``python -m videogpt_fast.kernels.aot_check [--arch 90] [--only codebook|axial|blocksparse]``
runs each op's launcher at the paper's sizes (contiguous CPU tensors; the codebook's fp32 search in
each of its precisions) with launches captured instead of run, compiles every captured launch (its
heuristic config, see :mod:`.tuning`) with Triton's bundled ``ptxas`` for ``sm_<arch>``, and prints:
kernel, dtype, config, compile seconds, registers, spill bytes, shared memory, whether the
tensor-core instructions are Hopper's ``wgmma`` or ``mma.sync``, and how the launch was specialised.

Each launch is specialised on its argument values as Triton's JIT does at launch
(:func:`_signature`): integers equal to 1 become constants (a unit stride lets loads vectorise),
integers and pointers divisible by 16 carry ``tt.divisibility=16``. So the report holds for
arguments like the examples': a launch with other strides or sizes (a stride that is not 1, a
size not divisible by 16) is another compile, by the JIT too. Before 2026-11-30 aot_check did not
specialise: it compiled unvectorised loads, and its registers and spills were not the launch's,
mostly overstated (the bf16 decode kernel: 255 registers at d=144 where the specialised compile
takes 128; at d=128, 255 and 12 bytes of spill where it takes 64), for the axial backward
understated (16-bit: no spill where the specialised compile spills 32-40 bytes).

It checks that the kernels compile, without spills, before GPU time is spent; it measures
nothing about speed. The compile times are this machine's (single-threaded, per binary); Triton
compiles for the GPU run in the same way. Must run without ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Tuple

import torch

from ._interpreter import interpret


def _signature(kernel, args: tuple, meta: dict) -> Tuple[dict, dict, dict]:
    """The ``(signature, constexprs, attrs)`` that Triton 3.6's JIT compiles ``kernel[grid](*args, **meta)``
    with (``JITFunction.run``: its binder's ``specialize_impl`` per argument, then ``_pack_args``), for
    ``triton.compile(ASTSource(kernel, signature, constexprs, attrs))``. ``meta`` holds the keyword
    arguments without ``num_warps``/``num_stages``.

    Per parameter, in order, bound like the call (defaults applied):

    - a ``tl.constexpr`` parameter, or an argument ``None``: ``"constexpr"``, its value in ``constexprs``;
    - ``bool``: ``"u1"`` (never specialised); ``float``: ``"fp32"`` (never specialised);
    - ``int``: equal to 1 (not a ``bool``), a compile-time constant 1 (``"constexpr"``: a stride of 1 lets
      loads vectorise); else ``"i32"`` in [-2**31, 2**31), ``"u64"`` from 2**63, ``"i64"`` otherwise, with
      ``attrs[(i,)] = [["tt.divisibility", 16]]`` when divisible by 16 and ``[]`` when not;
    - a tensor: ``"*<dtype>"`` (Triton's canonical name: ``*bf16``, ``*u1`` for bool), divisible by 16 when
      its ``data_ptr() % 16 == 0``. The example tensors here live on the CPU; their storage is aligned to
      64 bytes (CUDA's caching allocator gives 512-byte blocks), and a view's byte offset is the same on
      either device, so ``data_ptr() % 16`` is the one a GPU launch of the same shapes would see;
    - a name in the kernel's ``do_not_specialize`` keeps its type and gets no constant 1 nor ``attrs``
      entry; one in ``do_not_specialize_on_alignment`` gets no divisibility (the constant 1 stays).

    Raises ``TypeError`` for an argument of another type, and ``NotImplementedError`` for a type-annotated
    (non-constexpr) parameter, which the JIT types from the annotation (no kernel here has one).
    tests/test_kernel_aot_check.py checks this against Triton's own binder.
    """
    from triton._utils import canonicalize_ptr_dtype
    bound = kernel.signature.bind(*args, **meta)
    bound.apply_defaults()
    sig, consts, attrs = {}, {}, {}
    for i, (name, kp) in enumerate(zip(kernel.arg_names, kernel.params)):
        a = bound.arguments[name]
        if kp.is_constexpr or a is None:
            sig[name] = "constexpr"
            consts[(i,)] = a
            continue
        if kp.annotation_type:
            raise NotImplementedError(f"{kernel.fn.__name__}.{name}: annotated parameters ({kp.annotation}) "
                                      "are typed by the JIT from the annotation; aot_check does not model that")
        if isinstance(a, bool):
            sig[name] = "u1"
            continue
        if isinstance(a, float):
            sig[name] = "fp32"
            continue
        if isinstance(a, int):
            if a == 1 and not kp.do_not_specialize:
                sig[name] = "constexpr"
                consts[(i,)] = 1
                continue
            sig[name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "u64" if a >= 2 ** 63 else "i64"
            aligned = a % 16 == 0
        elif isinstance(a, torch.Tensor):
            sig[name] = canonicalize_ptr_dtype(a.dtype, False)
            aligned = a.data_ptr() % 16 == 0
        else:
            raise TypeError(f"{kernel.fn.__name__}.{name}: cannot type argument {a!r}")
        if not kp.do_not_specialize:
            attrs[(i,)] = [["tt.divisibility", 16]] if aligned and not kp.do_not_specialize_on_alignment else []
    return sig, consts, attrs


def _specialised(kernel, consts: dict, attrs: dict) -> str:
    """``"1: a,b; /16 no: c"``: the non-constexpr parameters that :func:`_signature` made the constant 1,
    and the integers and pointers that did not get the divisibility attribute (two launches of one
    config that differ here are two compiles, by the JIT too)."""
    names = kernel.arg_names
    ones = [names[i] for (i,), v in consts.items() if v == 1 and not kernel.params[i].is_constexpr]
    odd = [names[i] for (i,), v in attrs.items() if not v]
    return f"1: {','.join(ones) or '-'}; /16 no: {','.join(odd) or '-'}"


def _ptxas_report(ptx: str, arch: int) -> Tuple[str, str]:
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        suffix = "a" if arch == 90 else ""
        r = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", f.name, "-o", os.devnull],
                           capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    regs = ",".join(re.findall(r"Used (\d+) registers", r.stderr)) or "?"
    spills = ",".join(re.findall(r"(\d+) bytes spill stores", r.stderr)) or "?"
    return regs, spills


class _Capture:
    def __init__(self):
        self.launches: List[Tuple[str, object, tuple, dict]] = []

    def launcher_call(self, launcher, grid, args, meta, config):
        self.launches.append((launcher.kernel.fn.__name__, launcher.kernel, args, dict(meta, **config)))

    def direct(self, kernel):
        cap = self

        class Direct:
            def __getitem__(self, grid):
                def run(*args, **meta):
                    cap.launches.append((kernel.fn.__name__, kernel, args, meta))
                return run
        return Direct()


def strided_layout(heads: int, t: int = 4, hw: int = 32 * 32, block: int = 32, local: int = 4) -> torch.Tensor:
    """The prior's causal strided layout (heads, nb, nb) for a (t, 32, 32) latent grid and block
    32: the ``local`` previous blocks plus the same block of every earlier latent frame; equal to
    ``videogpt_fast.attention.StridedSparsityConfig((t, 32, 32), heads, True, 32, 4).make_layout()``
    (a test checks it), built here because the kernels do not import the package above them."""
    per_frame = hw // block
    nb = t * per_frame
    rows = torch.arange(nb)
    cols = torch.arange(nb)
    near = (cols[None, :] <= rows[:, None]) & (cols[None, :] >= rows[:, None] - local)
    same = (cols[None, :] % per_frame == rows[:, None] % per_frame) & (cols[None, :] <= rows[:, None])
    return (near | same).to(torch.int64).expand(heads, nb, nb).clone()


def _cases(only: str) -> List[Tuple[str, Callable[[], None]]]:
    from . import axial_attention as ax, blocksparse_attention as bsa, codebook as cb

    def codebook():
        for dt, precision in ((torch.float32, "tf32"), (torch.float32, "tf32x3"), (torch.float32, "ieee"),
                              (torch.bfloat16, None), (torch.float16, None)):
            x, e = torch.randn(65536, 256).to(dt), torch.randn(2048, 256).to(dt)
            cb.codebook_nearest(x, e, precision=precision)
            cb.codebook_nearest_with_stats(x, e, precision=precision)

    def axial():
        for dt in (torch.float32, torch.bfloat16, torch.float16):
            for latent in ((4, 32, 32), (8, 32, 32)):
                q = torch.randn(16, 2, *latent, 120).to(dt)
                for dim in (2, 3, 4):
                    cfg = ax._Config(q, q, dim, 64, 16)
                    o, lse = ax._forward(q, q, q, cfg)
                    ax._backward(q, q, q, o, lse, o, cfg)

    def blocksparse():
        for heads, dim in ((8, 128), (4, 144)):
            layout = strided_layout(heads)
            for dt in (torch.bfloat16, torch.float16, torch.float32):
                q = torch.randn(1, heads, 4096, dim).to(dt)
                tables = bsa.layout_tables(layout, True, q.device)
                out = torch.empty_like(q)
                lse = bsa._forward(q, q, q, tables, 32, True, out)
                bsa._backward(q, q, q, out, lse, out, tables, 32, True)
                for pos in (100, torch.tensor(100)):   # split-K pass 1 and its reduce, pos as int and tensor
                    bsa.blocksparse_decode_attention(q[:, :, :1], q, q, layout, 32, pos)

    cases = [("codebook", codebook), ("axial", axial), ("blocksparse", blocksparse)]
    return [c for c in cases if only in ("all", c[0])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    p.add_argument("--only", default="all", choices=["all", "codebook", "axial", "blocksparse"])
    p.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                   help="override a config value of every launch (e.g. num_warps=8, BLOCK_M=16): to try "
                        "a table entry before a GPU run")
    p.add_argument("--kernel", default="", help="compile only kernels whose name contains this")
    p.add_argument("--dtype", default="", choices=["", "fp32", "bf16", "fp16"],
                   help="compile only launches with this pointer dtype (fp32, bf16, fp16)")
    a = p.parse_args(argv)
    if a.arch < 70:   # below sm_70 LLVM aborts the process (sm_0: 'Cannot select' intrinsic)
        p.error(f"--arch {a.arch}: a compute capability x 10 of at least 70 (e.g. 90 for H100/H200)")
    overrides = {}
    for item in a.set:
        name, _, value = item.partition("=")
        try:
            overrides[name] = int(value)
        except ValueError:
            name = ""
        if not name.isidentifier():
            p.error(f"--set {item}: expected NAME=INT (e.g. num_warps=8)")
    if interpret():
        print("aot_check: unset TRITON_INTERPRET (it compiles, it does not interpret)", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import blocksparse_attention as bsa, codebook as cb, tuning

    cap = _Capture()
    tuning.Launcher.__call__ = lambda self, grid, args, meta, config: cap.launcher_call(self, grid, args, meta, config)
    cb._interpret = lambda: False          # GPU configs, not the interpreter's
    cb.arch = lambda device: a.arch
    cfg_fn = cb._config
    cb._config = lambda n, dtype, precision, device: cfg_fn(n, dtype, precision, torch.device("cuda"))
    bsa._decode_kernel = cap.direct(bsa._decode_kernel)
    bsa._decode_reduce_kernel = cap.direct(bsa._decode_reduce_kernel)
    target = GPUTarget("cuda", a.arch, 32)
    seen, shown_any, applied = set(), False, set()
    print(f"{'kernel':<18} {'dtypes':<14} config  | compile s, registers, spill bytes, shared bytes, mma | "
          "arguments specialised to 1; integers and pointers not divisible by 16")
    for name, run in _cases(a.only):
        cap.launches.clear()
        run()
        for kname, kernel, args, meta in cap.launches:
            used = {k: v for k, v in overrides.items() if k in meta or k in ("num_warps", "num_stages")}
            applied.update(used)
            meta.update(used)
            opts = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
            sig, consts, attrs = _signature(kernel, args, meta)
            key = (kname, tuple(sorted(sig.items())), tuple(sorted((str(k), str(v)) for k, v in consts.items())),
                   str(sorted(attrs.items())), tuple(sorted(opts.items())))
            if key in seen:
                continue
            seen.add(key)
            dtypes = "/".join(sorted({t for t in sig.values() if t.startswith("*") and t[1:] in ("fp32", "bf16", "fp16")}))
            first = next(t for t in sig.values() if t.startswith("*"))[1:]   # the inputs' dtype
            if a.kernel not in kname or (a.dtype and a.dtype != first):
                continue
            shown_any = True
            shown = {k: v for k, v in meta.items() if k.isupper()}
            t0 = time.time()
            try:
                src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
                out = triton.compile(src, target=target, options=opts)
            except Exception as exc:  # report and go on: every kernel gets its verdict
                print(f"{kname:<18} {dtypes:<14} {shown} {opts} | FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            regs, spills = _ptxas_report(out.asm["ptx"], a.arch)
            ptx = out.asm["ptx"]
            mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
            print(f"{kname:<18} {dtypes:<14} {shown} {opts} | {time.time() - t0:.1f} s, {regs} regs, "
                  f"{spills} spill, {out.metadata.shared} shared, {mma} | {_specialised(kernel, consts, attrs)}",
                  flush=True)
    unused = sorted(set(overrides) - applied)
    if unused:
        print(f"aot_check: --set {', '.join(unused)}: no launch of --only {a.only} has such a config value",
              file=sys.stderr)
    if not shown_any:
        print(f"aot_check: no launch of --only {a.only} matched --kernel {a.kernel!r} --dtype {a.dtype!r}",
              file=sys.stderr)
    return 2 if unused or not shown_any else 0


if __name__ == "__main__":
    sys.exit(main())
