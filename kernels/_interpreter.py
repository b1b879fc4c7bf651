"""Triton's CPU interpreter (``TRITON_INTERPRET=1``): detection and fixes for its bugs.

The interpreter is how the kernels are tested without a GPU. :mod:`.tuning` (which every kernel
module imports) applies the fixes when the interpreter is on; compiled kernels are never affected.
Importing this module does not import Triton: :func:`interpret` is the package's one detection
of the interpreter (``videogpt_fast.backends`` uses it too).
"""
from __future__ import annotations

import os


def interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def to_tf32(a):
    """fp32 numpy array rounded to TF32 (10 explicit mantissa bits) as the tensor cores' operand
    conversion ``cvt.rna.tf32.f32`` does: to nearest, ties away from zero. Infs/NaNs pass through."""
    import numpy as np
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    return rounded.astype(np.uint32).view(np.float32)


def fix_triton_interpreter() -> None:
    """Work around two bugs of Triton's (<= 3.6) CPU interpreter and make its fp32 ``tl.dot``
    round like the GPU's; a no-op for compiled kernels.

    * numpy >= 2.4 refuses ``int()`` of a 1-element array, which the interpreter uses to turn a
      runtime scalar into a loop bound, so ``range(0, n, BLOCK)`` over a kernel argument fails
      (triton-lang/triton#9171): ``tensor.__index__`` is re-patched to take the element explicitly.
    * ``tl.dot`` on bfloat16 multiplies the raw uint16 storage: bf16 operands are widened
      (exactly) to fp32 first, which is what a bf16 MMA with fp32 accumulation computes.
    * ``tl.dot`` on fp32 ignores ``input_precision``: ``"tf32"`` operands are rounded to TF32 first
      (:func:`to_tf32`) and ``"tf32x3"`` is computed from TF32 halves (big*big + big*small +
      small*big), as on the tensor cores, so that the interpreter tests see the GPU's TF32 rounding.

    Idempotent. Called on import by :mod:`.tuning` when ``TRITON_INTERPRET=1``.
    """
    import numpy as np
    import triton.language as tl
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

        def patched_dot(self, a, b, d, input_precision, *args, **kwargs):
            a, b = widen(a), widen(b)
            mode = getattr(input_precision, "name", str(input_precision)).upper()
            if a.dtype == tl.float32 and b.dtype == tl.float32 and mode in ("TF32", "TF32X3"):
                big_a, big_b = to_tf32(a.data), to_tf32(b.data)
                if mode == "TF32":
                    return create_dot(self, interpreter.TensorHandle(big_a, tl.float32),
                                      interpreter.TensorHandle(big_b, tl.float32), d, input_precision, *args, **kwargs)
                small_a, small_b = to_tf32(a.data - big_a), to_tf32(b.data - big_b)
                acc = np.matmul(big_a, small_b, dtype=np.float32) + np.matmul(small_a, big_b, dtype=np.float32)
                acc = acc + np.matmul(big_a, big_b, dtype=np.float32)
                return interpreter.TensorHandle(acc + d.data, d.dtype.scalar)
            return create_dot(self, a, b, d, input_precision, *args, **kwargs)

        patched_dot._videogpt_fast_fixed = True
        builder.create_dot = patched_dot
