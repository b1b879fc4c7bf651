"""kernels.aot_check specialises each launch as Triton's JIT does at launch (no GPU needed).

``_signature`` is compared with Triton's own binder (``create_function_from_signature`` + ``JITFunction.
_pack_args``, what ``JITFunction.run`` calls) for the same arguments, and a toy kernel compiled for sm_90
with its result has vectorised loads where the unspecialised signature (aot_check before 2026-11-30) has not.
The toy kernels are wrapped in ``JITFunction`` directly: ``@triton.jit`` gives the interpreter's function
under ``TRITON_INTERPRET=1`` (set by conftest on a machine without CUDA).
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from videogpt_fast.kernels.aot_check import _signature  # noqa: E402


def _copy(X, Y, n, stride, flag, scale, big, maybe, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs * stride, mask=ok)
    if flag:
        x = x * scale
    tl.store(Y + offs * stride, x, mask=ok)


def _jit_specialisation(kernel, args, meta):
    """(signature, constexprs, attrs) as Triton 3.6's JITFunction.run builds them for a sm_90 target."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **meta)
    _, sig, consts, attrs = kernel._pack_args(backend, dict(meta), bound, specialization, options)
    return sig, consts, attrs


def _args(n=4096, stride=1, big=2 ** 40, offset=0):
    x = torch.randn(n + 8)
    return (x, x[offset:], n, stride, True, 0.5, big, None)


@pytest.mark.parametrize("case", [
    dict(),                                   # stride 1 -> constant; n, big, pointers divisible by 16
    dict(n=4100, stride=3, offset=1),         # nothing divisible: attrs [] ; second pointer 4 bytes off
    dict(n=16, stride=32, big=2 ** 63 + 16),  # stride divisible; big unsigned 64-bit
    dict(n=1, stride=-16, big=-(2 ** 31)),    # n == 1 constant; negative ints; i32 lower bound
], ids=["unit-stride", "unaligned", "u64", "negative"])
@pytest.mark.parametrize("dns", [(), ("stride", "big")], ids=["specialised", "do_not_specialize"])
@pytest.mark.parametrize("dnsa", [(), ("n", "X")], ids=["aligned", "no_align"])
def test_signature_matches_triton_jit(case, dns, dnsa):
    kernel = JITFunction(_copy, do_not_specialize=list(dns), do_not_specialize_on_alignment=list(dnsa))
    args, meta = _args(**case), {"BLOCK": 1024}
    assert _signature(kernel, args, meta) == _jit_specialisation(kernel, args, meta)


def test_signature_unit_stride_and_divisibility():
    """The expected values themselves (so the test fails if both sides drift the same way)."""
    sig, consts, attrs = _signature(JITFunction(_copy), _args(), {"BLOCK": 1024})
    assert sig == {"X": "*fp32", "Y": "*fp32", "n": "i32", "stride": "constexpr", "flag": "u1", "scale": "fp32",
                   "big": "i64", "maybe": "constexpr", "BLOCK": "constexpr"}
    assert consts == {(3,): 1, (7,): None, (8,): 1024}
    div = [["tt.divisibility", 16]]
    assert attrs == {(0,): div, (1,): div, (2,): div, (6,): div}
    # a bool True is not the integer 1; a float is never specialised
    sig, consts, _ = _signature(JITFunction(_copy), (*_args()[:4], True, 1.0, 1, None), {"BLOCK": 1024})
    assert sig["flag"] == "u1" and sig["scale"] == "fp32" and sig["big"] == "constexpr" and consts[(6,)] == 1


def test_signature_rejects_unknown_argument():
    with pytest.raises(TypeError, match="maybe"):
        _signature(JITFunction(_copy), (*_args()[:7], "text"), {"BLOCK": 1024})


def test_specialised_compile_vectorises_unit_stride_loads():
    """Compiled for sm_90 (Triton's bundled ptxas; no GPU): the JIT's specialisation gives 128-bit loads
    and stores, the unspecialised signature scalar ones."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kernel = JITFunction(_copy)
    sig, consts, attrs = _signature(kernel, _args(), {"BLOCK": 1024})
    target = GPUTarget("cuda", 90, 32)
    ptx = triton.compile(ASTSource(kernel, sig, consts, attrs), target=target, options={"num_warps": 4}).asm["ptx"]
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx
    plain = dict(sig, stride="i32")
    consts = {k: v for k, v in consts.items() if k != (3,)}
    ptx = triton.compile(ASTSource(kernel, plain, consts), target=target, options={"num_warps": 4}).asm["ptx"]
    assert "ld.global.v4" not in ptx


@pytest.mark.parametrize("args, message", [
    (["--set", "num_warps"], "expected NAME=INT"),     # was: a ValueError traceback
    (["--set", "num_warps=x"], "expected NAME=INT"),
    (["--set", "=3"], "expected NAME=INT"),            # was: ignored, every kernel compiled
    (["--arch", "0"], "at least 70"),                  # was: LLVM ERROR, the process aborted
    (["--dtype", "fp64"], "invalid choice"),           # was: nothing compiled, exit 0
])
def test_cli_usage_errors_exit_2(args, message, capsys):
    from videogpt_fast.kernels import aot_check
    with pytest.raises(SystemExit) as exc:
        aot_check.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_filters_and_overrides_that_match_nothing_exit_2():
    """--set of a config value no launch has, and a --kernel that matches nothing, were silent (exit 0)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-m", "videogpt_fast.kernels.aot_check", "--only", "codebook", "--kernel",
                          "zzz", "--set", "BLOCK_Q=3"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-500:]
    assert "--set BLOCK_Q: no launch" in run.stderr and "no launch of --only codebook matched" in run.stderr
