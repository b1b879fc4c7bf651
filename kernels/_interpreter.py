"""Triton's CPU interpreter (``TRITON_INTERPRET=1``): detection and fixes for its bugs.

The interpreter is how the kernels are tested without a GPU. Importing this module applies the
fixes when the interpreter is on; compiled kernels are never affected.
"""
from __future__ import annotations

import os

import triton.language as tl


def interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune() -> bool:
    """Autotune kernel configs: on GPU, unless ``VIDEOGPT_FAST_AUTOTUNE=0`` (fixed heuristic configs;
    always so under the interpreter, where timing means nothing)."""
    return not interpret() and os.environ.get("VIDEOGPT_FAST_AUTOTUNE", "1") != "0"


def fix_triton_interpreter() -> None:
    """Work around two bugs of Triton's (<= 3.6) CPU interpreter; a no-op for compiled kernels.

    * numpy >= 2.4 refuses ``int()`` of a 1-element array, which the interpreter uses to turn a
      runtime scalar into a loop bound, so ``range(0, n, BLOCK)`` over a kernel argument fails
      (triton-lang/triton#9171): ``tensor.__index__`` is re-patched to take the element explicitly.
    * ``tl.dot`` on bfloat16 multiplies the raw uint16 storage: bf16 operands are widened
      (exactly) to fp32 first, which is what a bf16 MMA with fp32 accumulation computes.

    Idempotent. Called on import by the kernel modules when ``TRITON_INTERPRET=1``.
    """
    import numpy as np
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is not None and not getattr(patch_tensor, "_videogpt_fast_fixed", False):
        def patched_tensor(tensor, scope):
            patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        patched_tensor._videogpt_fast_fixed = True
        interpreter._patch_lang_tensor = patched_tensor

    builder = getattr(interpreter, "InterpreterBuilder", None)
    create_dot = getattr(builder, "create_dot", None)
    if create_dot is not None and not getattr(create_dot, "_videogpt_fast_fixed", False):
        def widen(h):
            if h.dtype == tl.bfloat16:
                return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            return h

        def patched_dot(self, a, b, d, *args, **kwargs):
            return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

        patched_dot._videogpt_fast_fixed = True
        builder.create_dot = patched_dot


if interpret():
    fix_triton_interpreter()
