"""Benchmark building blocks: cases, the registry, timing, device ceilings, environment.

A *case* is one workload (an op at one shape and dtype, or a model step) with several
implementations run on the same inputs: ``reference`` (plain PyTorch computed the way the original
computes it) and the fast paths. The runner checks every implementation against the reference,
then times each, and reports speedups measured in the same process.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch


@dataclasses.dataclass
class Case:
    """One workload and its implementations (closures over the same inputs)."""

    name: str                                   # e.g. "codebook_nearest"
    group: str                                  # "kernels", "models", "sampling", "data"
    params: Dict[str, Any]                      # shapes and sizes, reported as given
    dtype: str
    impls: Dict[str, Callable[[], Any]]         # impl name -> zero-argument callable
    reference: str = "reference"
    flops: Optional[float] = None               # per call of one implementation
    bytes: Optional[float] = None               # minimum bytes moved per call
    items: Optional[float] = None               # items per call for throughput (clips, samples)
    item_unit: str = "items"
    check: Optional[Callable[[Any, Any], None]] = None   # check(reference_out, impl_out) raises on mismatch
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)  # impl -> reason not run
    scale_key: Optional[str] = None             # the param a scaling plot runs over
    baselines: tuple = ()                       # further impls every row states its speedup over


@dataclasses.dataclass
class Settings:
    device: torch.device
    quick: bool


_FACTORIES: List[Callable[[Settings], Iterator[Case]]] = []


def register(factory: Callable[[Settings], Iterator[Case]]) -> Callable[[Settings], Iterator[Case]]:
    """Decorator: ``factory(settings)`` yields the cases of one module."""
    _FACTORIES.append(factory)
    return factory


GROUPS = ("kernels", "models", "data")  # one per cases_<group>.py module


def all_cases(settings: Settings, groups: Optional[Sequence[str]] = None) -> Iterator[Case]:
    """Every registered case (only those of ``groups``, when given), built one at a time."""
    from . import cases_data, cases_kernels, cases_models  # noqa: F401 (registration side effect)
    for factory in _FACTORIES:
        if groups is None or factory.__module__.rsplit(".", 1)[-1].removeprefix("cases_") in groups:
            yield from factory(settings)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(fn: Callable[[], Any], device: torch.device, *, warmup: int = 2,
                  min_time_s: float = 0.2, max_iters: int = 50, min_iters: int = 3) -> List[float]:
    """Milliseconds per call: CUDA events on GPU, perf_counter on CPU, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start_all < min_time_s):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times: List[float]) -> Dict[str, float]:
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "iters": len(times)}


def measure_ceilings(device: torch.device, quick: bool) -> Dict[str, float]:
    """The device's measured matmul rate (TFLOP/s, per dtype) and copy bandwidth (GB/s)."""
    out: Dict[str, float] = {}
    n = 1024 if (quick or device.type == "cpu") else 8192
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
    for dt in dtypes:
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        ms = statistics.median(time_callable(lambda: a @ b, device, min_time_s=0.3))
        out[f"matmul_tflops_{str(dt).split('.')[-1]}"] = 2 * n ** 3 / (ms * 1e-3) / 1e12
    numel = (1 << 22) if (quick or device.type == "cpu") else (1 << 28)
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = statistics.median(time_callable(lambda: dst.copy_(src), device, min_time_s=0.3))
    out["copy_gbps"] = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    return out


def env_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cuda": torch.version.cuda,
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    from videogpt_fast.backends import cuda_extension
    info["cuda_extension"] = cuda_extension() is not None
    return info


def assert_allclose(atol: float, rtol: float) -> Callable[[Any, Any], None]:
    """A case check comparing (tuples of) tensors in float64."""
    def check(ref: Any, out: Any) -> None:
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for r, o in zip(refs, outs):
            torch.testing.assert_close(o.double(), r.double(), atol=atol, rtol=rtol)
    return check


def tolerance(dtype: torch.dtype) -> Dict[str, float]:
    """Comparison tolerance by dtype (the package conventions; fp32 allows TF32-class kernels)."""
    return {torch.float32: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
            torch.float16: dict(atol=1e-2, rtol=1e-2)}.get(dtype, dict(atol=1e-5, rtol=1e-5))
