"""Benchmark building blocks: cases, the registry, timing, device ceilings, environment.

A *case* is one workload (an op at one shape and dtype, or a model step) with several
implementations run on the same inputs: ``reference`` (plain PyTorch computed the way the original
computes it) and the fast paths. The runner checks every implementation against the reference,
then times each, and reports speedups measured in the same process.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    check: Optional[Callable[[Any, Any], Optional[str]]] = None  # check(truth, impl_out) -> detail; raises on mismatch
    truth: Optional[Callable[[], Any]] = None   # float64 (or exact) output the checks compare with; untimed
    tolerance: str = ""                         # "TAG: sentence": what the check allows, stated in every checked row
    impl_checks: Dict[str, Tuple[Callable[[Any, Any], Optional[str]], str]] = dataclasses.field(
        default_factory=dict)                   # impl -> (check, tolerance) where it differs from the case's
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)  # impl -> reason not run
    scale_key: Optional[str] = None             # the param a scaling plot runs over
    baselines: tuple = ()                       # further impls every row states its speedup over
    time_scale: Dict[str, Tuple[float, str]] = dataclasses.field(default_factory=dict)  # impl -> (factor, why)


@dataclasses.dataclass
class Settings:
    device: torch.device
    quick: bool


_FACTORIES: List[Tuple[Tuple[str, ...], Callable[[Settings], Iterator[Case]]]] = []


def register(*names: str) -> Callable[[Callable[[Settings], Iterator[Case]]], Callable[[Settings], Iterator[Case]]]:
    """Decorator: ``factory(settings)`` yields cases named ``names`` (so a selection by name skips
    the factory before it builds any input)."""
    def deco(factory: Callable[[Settings], Iterator[Case]]) -> Callable[[Settings], Iterator[Case]]:
        _FACTORIES.append((names, factory))
        return factory
    return deco


GROUPS = ("kernels", "models", "data")  # one per cases_<group>.py module


def selected(name: str, only: Optional[Sequence[str]]) -> bool:
    """Whether case ``name`` matches one of the ``only`` substrings (all when none are given)."""
    return not only or any(o in name for o in only)


def all_cases(settings: Settings, groups: Optional[Sequence[str]] = None,
              only: Optional[Sequence[str]] = None) -> Iterator[Case]:
    """Every registered case (only those of ``groups`` and whose name contains one of ``only``,
    when given), built one at a time."""
    broken = {}
    for group in groups or GROUPS:  # registration side effect; only the groups asked for
        try:
            importlib.import_module(f"{__package__}.cases_{group}")
        except ImportError as e:  # e.g. the data group without PyAV: say so as a skipped row
            broken[group] = f"benchmarks/cases_{group}.py does not import: {type(e).__name__}: {e}"
    for group, why in broken.items():
        if selected(f"cases_{group}", only):
            yield Case(f"cases_{group}", group, {}, "-", impls={}, skipped={"all": why})
    for names, factory in _FACTORIES:
        if groups is not None and factory.__module__.rsplit(".", 1)[-1].removeprefix("cases_") not in groups:
            continue
        if not any(selected(n, only) for n in names):
            continue
        for case in factory(settings):
            if selected(case.name, only):
                yield case


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


def _tensors(x: Any) -> List[torch.Tensor]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def rel_error_check(tol: float, names: Sequence[str] = ()) -> Callable[[Any, Any], str]:
    """A check comparing (tuples of) tensors with the truth by relative Frobenius error
    ``||out - truth|| / ||truth||`` (computed in float64) per tensor; NaN or Inf never passes.
    Returns the worst error as its detail; raises AssertionError above ``tol``."""
    def check(truth: Any, out: Any) -> str:
        errs = []
        for i, (r, o) in enumerate(zip(_tensors(truth), _tensors(out))):
            name = names[i] if i < len(names) else f"output {i}"
            if o.shape != r.shape:
                raise AssertionError(f"{name}: shape {tuple(o.shape)} != {tuple(r.shape)}")
            o64, r64 = o.detach().double(), r.detach().double().to(o.device)
            if not torch.isfinite(o64).all():
                raise AssertionError(f"{name}: {int((~torch.isfinite(o64)).sum())} non-finite values")
            err = float((o64 - r64).norm() / r64.norm().clamp_min(1e-300))
            if err > tol:
                raise AssertionError(f"{name}: relative error {err:.2e} > {tol:.0e}")
            errs.append((err, name))
        worst = max(errs)
        return f"max relative error {worst[0]:.1e} ({worst[1]})"
    return check


# relative-error tolerances by dtype against a float64 truth (fp32 allows TF32-class matrix units)
REL_TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float64: 1e-10}


def rel_tolerance(dtype: torch.dtype) -> Tuple[float, str]:
    """(tolerance, the sentence stating it) for outputs of ``dtype`` against a float64 truth."""
    tol = REL_TOL.get(dtype, 1e-5)
    return tol, (f"rel<={tol:.0e}: relative error ||out - float64|| / ||float64|| <= {tol:.0e} per output "
                 f"({str(dtype).split('.')[-1]})")
