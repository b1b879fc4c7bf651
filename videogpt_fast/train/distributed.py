"""Process group and random state of a training process: ``torchrun`` set-up (NCCL on GPU, gloo on
CPU), barrier / gather helpers, and every RNG stream's state in the types
``torch.load(weights_only=True)`` accepts (saved in checkpoints for an exact ``--resume``)."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist


def env_world() -> Tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as torchrun sets them; ``(0, 1, 0)`` in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_distributed(device_flag: str) -> Tuple[torch.device, int, int]:
    """Initialise the process group under torchrun (NCCL on GPU, gloo on CPU); pick the device.
    Returns ``(device, rank, world_size)``; ValueError when ``--device cuda`` meets no CUDA."""
    rank, world, local_rank = env_world()
    use_cuda = device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device_flag} asked for CUDA but torch.cuda.is_available() is False")
    if use_cuda:
        device = torch.device(device_flag if ":" in device_flag else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                **({"device_id": device} if use_cuda else {}))
    return device, rank, world


def barrier() -> None:
    """``dist.barrier()`` under a process group; nothing otherwise."""
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def seed_all(seed: int) -> None:
    """Seed torch, NumPy and ``random`` (as Lightning's ``seed_everything``)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def get_rng_state() -> Dict[str, Any]:
    """torch CPU/CUDA, NumPy and ``random`` states of this process, as tensors, numbers and tuples."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation) without moving any random stream of the training run."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
