"""Launch configurations of the Triton kernels: one heuristic config per call, or a tuning sweep.

Autotuning every warp/stage/tile combination on first use compiled tens of variants per shape and
dtype and took minutes on the H200 (``../shared/gpu/2026-11-29-H200``). So by default each kernel
launch uses exactly **one** config per (op, shape, dtype), chosen by the kernel module's heuristic
(a short table keyed by GPU architecture, head dim and dtype). Every kernel module exposes
``compiled_variants(...)``: the configs a call with the given shape and dtype launches (hence
compiles), one list per kernel; the tests hold every list to at most 2 entries, and on GPU
:func:`compiled_count` counts what Triton actually compiled.

Tuning session: ``VIDEOGPT_FAST_AUTOTUNE=1`` makes every launch go through ``triton.autotune``
over the module's full sweep list (cached per autotune key for the process). Run it with
``TRITON_PRINT_AUTOTUNING=1`` to print the winners, then copy them into the module's table.
Under the CPU interpreter (``TRITON_INTERPRET=1``) the sweep is never run.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import torch
import triton

from ._interpreter import fix_triton_interpreter, interpret

if interpret():
    fix_triton_interpreter()

__all__ = ["ENV_VAR", "sweep", "arch", "compiled_count", "Launcher"]

#: ``1``: full autotune sweep (tuning sessions); anything else: the heuristic config.
ENV_VAR = "VIDEOGPT_FAST_AUTOTUNE"

_LAUNCH_KEYS = ("num_warps", "num_stages")


def sweep() -> bool:
    """True when launches autotune over the full sweep lists (``VIDEOGPT_FAST_AUTOTUNE=1``, not
    under the interpreter, where timing means nothing)."""
    return not interpret() and os.environ.get(ENV_VAR, "0").strip() == "1"


def arch(device: torch.device) -> int:
    """CUDA compute capability as ``major * 10 + minor`` (90 for H100/H200); 0 for the interpreter."""
    if device.type != "cuda":
        return 0
    if not torch.cuda.is_available():
        raise RuntimeError(f"arch: no CUDA device to read the architecture of {device} from")
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def compiled_count(kernel) -> int:
    """How many binaries Triton has compiled in this process for a ``@triton.jit`` kernel (every
    device and specialisation): the GPU tests and benchmarks check the first call's variants with
    it. Raises RuntimeError where Triton keeps no per-device caches (not the interpreter's way)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        raise RuntimeError(f"{kernel!r}: this Triton keeps no device_caches; cannot count compiled variants")
    return sum(len(entry[0]) for entry in caches.values())


class Launcher:
    """A ``@triton.jit`` kernel launched with one given config, or autotuned over ``sweep_configs``.

    ``config`` (a dict of the tile constexprs plus ``num_warps``/``num_stages``) comes from the
    kernel module's heuristic; ``grid`` maps a config (or, in a sweep, the autotuner's meta) to the
    launch grid. ``sweep_configs`` is a list of dicts of the same keys, pruned per launch by
    ``prune(config_dict, meta) -> bool`` (keep).
    """

    def __init__(self, kernel, sweep_configs: Sequence[dict], key: Sequence[str],
                 prune: Optional[Callable[[dict, dict], bool]] = None, reset_to_zero: Sequence[str] = ()):
        self.kernel = kernel
        self.sweep_configs = [dict(c) for c in sweep_configs]
        self.key = list(key)
        self.prune = prune
        self.reset_to_zero = list(reset_to_zero)
        self._tuned = None

    def candidates(self, config: dict, meta: dict) -> List[dict]:
        """The configs a launch with ``meta`` compiles: ``[config]``, or the pruned sweep list."""
        if not sweep():
            return [dict(config)]
        keep = [c for c in self.sweep_configs if self.prune is None or self.prune(c, meta)]
        return keep or [dict(config)]

    def _autotuned(self):
        if self._tuned is None:
            configs = [triton.Config({k: v for k, v in c.items() if k not in _LAUNCH_KEYS},
                                     num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 2))
                       for c in self.sweep_configs]

            def early_prune(cfgs, nargs, **meta):
                keep = [c for c in cfgs if self.prune is None
                        or self.prune(dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages), meta)]
                return keep or cfgs[:1]

            self._tuned = triton.autotune(configs=configs, key=self.key, reset_to_zero=self.reset_to_zero or None,
                                          prune_configs_by={"early_config_prune": early_prune})(self.kernel)
        return self._tuned

    def __call__(self, grid: Callable[[dict], tuple], args: tuple, meta: Dict, config: dict) -> None:
        if sweep():
            self._autotuned()[lambda m: grid(m)](*args, **meta)
        else:
            self.kernel[grid(config)](*args, **meta, **config)
