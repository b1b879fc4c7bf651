"""Train the VQ-VAE or the VideoGPT prior, in one process or under ``torchrun`` (DDP).

    # one GPU (or CPU)
    python -m videogpt_fast.train vqvae --data_path bair.hdf5 --resolution 64 --downsample 4 4 4
    # 8 GPUs of one machine (DDP over NCCL; gloo on CPU)
    torchrun --nproc_per_node=8 -m videogpt_fast.train gpt --data_path bair.hdf5 --vqvae vq.ckpt \\
        --max_steps 200000 --precision bf16
    # 2 machines x 8 GPUs: run on each node, with its --node_rank
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST0 --master_port=29500 \\
        -m videogpt_fast.train gpt ...

``--batch_size`` is per process, as with the original's Lightning DDP.

The flags keep the original ``scripts/train_vqvae.py`` / ``scripts/train_videogpt.py`` names and
defaults (``--max_steps`` defaults to the VQ-VAE script's 200000 and is required for the prior, whose
cosine schedule needs it). Optimisation follows the original: Adam(lr=3e-4, betas=(0.9, 0.999)) -- run
as torch's (fused on CUDA) AdamW with weight_decay=0, which is the same update -- plus, for the prior,
``CosineAnnealingLR(max_steps)`` stepped every optimiser step; ``--gradient_clip_val`` clips the global
gradient norm as Lightning does (after unscaling under fp16).

Checkpoints (``last.ckpt`` plus ``epoch=E-step=S.ckpt`` every ``--save_every`` steps) are written
atomically in the original Lightning layout, so ``load_vqvae`` / ``load_videogpt`` and the original's
``load_from_checkpoint`` read them. They also hold the optimiser (``optimizer_states``), the schedule
(``lr_schedulers``) and, under ``videogpt_fast``, the GradScaler, every rank's RNG states and the data
position, so ``--resume`` continues exactly: the same batches, the same random crops and dropout masks,
the same losses as an uninterrupted run (bitwise on CPU in fp32 with the same world size).

Exact data order: a :class:`ResumableSampler` draws each epoch's permutation, and one seed per sample,
from ``seed + epoch``; every item is loaded with NumPy / ``random`` / torch seeded from its own seed,
so the random crop of a sample depends neither on the number of workers nor on where a run resumed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.data as data

from . import perf
from .argtypes import DefaultsHelpFormatter, device_name, seed_int
from .checkpoint import atomic_save, infer_vqvae_args, lightning_checkpoint, load_vqvae, safe_load, checkpoint_kind
from .checkpoint import _split, atomic_write, check_fits, link_or_copy
from .model_size import check_model_memory, estimated_params, report_out_of_memory
from .run_dir import OutputLock, check_fresh_output, periodic_checkpoints, remove_stale_temporaries

log = logging.getLogger("videogpt_fast.train")
_PRINTED = "videogpt_fast_printed"  # log-record attribute: the message was also printed (see Trainer.announce)

STAGES = ("vqvae", "gpt")
#: hyper-parameters that define each stage's architecture (taken from the checkpoint on --resume)
MODEL_ARGS = {
    "vqvae": ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample", "sequence_length",
              "resolution"),
    "gpt": ("vqvae", "n_cond_frames", "class_cond", "class_cond_dim", "hidden_dim", "heads", "layers",
            "dropout", "attn_type", "attn_dropout", "sequence_length", "resolution"),
}
VQVAE_MAX_STEPS = 200000  # scripts/train_vqvae.py hard-codes Trainer(max_steps=200000)
VAL_BATCHES = 100  # default --limit_val_batches: a validation never sits silent over a whole large test split


def default_num_workers() -> int:
    """min(8, CPU cores this process may use): more workers than cores only contend (and PyTorch warns)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


# ==============================================================================================
# arguments
# ==============================================================================================
def build_parser(stage: str) -> argparse.ArgumentParser:
    """The flags of ``train {stage}``: the original script's, plus the trainer's own."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    from .gpt import VideoGPT
    from .vqvae import VQVAE

    parser = argparse.ArgumentParser(prog=f"videogpt-fast train {stage}", add_help=False)
    parser = (VQVAE if stage == "vqvae" else VideoGPT).add_model_specific_args(parser)
    parser = argparse.ArgumentParser(
        prog=f"videogpt-fast train {stage}", parents=[parser], formatter_class=DefaultsHelpFormatter,
        description=f"Train the {'VQ-VAE' if stage == 'vqvae' else 'VideoGPT prior'} (one process, or "
                    "torchrun --nproc_per_node=N for DDP).")
    d = parser.add_argument_group("data (as the original scripts)")
    d.add_argument("--data_path", type=str, required=True,
                   help="an .hdf5/.h5 file (HDF5Dataset) or a folder with train/ and test/ (VideoDataset)")
    d.add_argument("--sequence_length", type=int, default=16)
    d.add_argument("--resolution", type=int, default=64 if stage == "vqvae" else 128)
    d.add_argument("--batch_size", type=int, default=32 if stage == "vqvae" else 8, help="per process")
    d.add_argument("--num_workers", type=int, default=default_num_workers(),
                   help="DataLoader worker processes per rank (default: min(8, CPU cores this process may use))")
    d.add_argument("--loader", choices=("auto", "pytorch", "dali"), default="auto",
                   help="auto: DALI for a video folder when a CUDA device and NVIDIA DALI are there, else the "
                        "PyTorch DataLoader (the run says which, and why); pytorch: the DataLoader (PyAV or "
                        "HDF5; exact --resume); dali: GPU decoding of a video folder (needs CUDA and DALI)")
    t = parser.add_argument_group("training")
    t.add_argument("--max_steps", type=int, default=None,
                   help=f"optimiser steps (default {VQVAE_MAX_STEPS} for vqvae; required for gpt: "
                        "the cosine schedule's length)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--gradient_clip_val", type=float, default=0.0, help="max global grad norm (0: off)")
    t.add_argument("--precision", choices=("32", "bf16", "16"), default="32",
                   help="32: fp32; bf16: bf16 autocast; 16: fp16 autocast with a GradScaler")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--sync_batchnorm", action="store_true",
                   help="SyncBatchNorm in the VQ-VAE under DDP (CUDA only)")
    t.add_argument("--activation_checkpointing", nargs="?", const="all", default="none", metavar="PARTS",
                   help="recompute activations in backward, only where memory needs it: none (default), "
                        "attention (the prior's self-/cross-attention; the VQ-VAE's axial attention), all "
                        "(every prior block; the bare flag), or block indices such as 0,3")
    t.add_argument("--seed", type=seed_int, default=1234, help="as the original's pl.seed_everything(1234)")
    t.add_argument("--device", type=device_name, default="auto",
                   help="auto (cuda:LOCAL_RANK when CUDA is there, else cpu), cpu, cuda")
    perf.add_perf_args(parser)
    o = parser.add_argument_group("output")
    o.add_argument("--output", type=str, default=f"runs/{stage}",
                   help="folder for checkpoints and metrics; locked while a run writes there, and it must be new "
                        "or empty unless --resume is given")
    o.add_argument("--resume", type=str, default=None,
                   help="checkpoint to continue from ('auto': OUTPUT/last.ckpt when it exists); allows a non-empty "
                        "--output")
    o.add_argument("--save_every", type=int, default=1000, help="checkpoint every N steps (0: only at the end)")
    o.add_argument("--keep_checkpoints", type=int, default=0,
                   help="keep only the newest N periodic checkpoints (0: keep all); last.ckpt is always kept")
    o.add_argument("--val_every", type=int, default=0,
                   help="validate every N steps (0: at the end of every epoch, as Lightning; -1: never)")
    o.add_argument("--limit_val_batches", type=int, default=VAL_BATCHES,
                   help="validation batches per rank at each validation (0: the whole test split)")
    o.add_argument("--log_every", type=int, default=10, help="write the training metrics to metrics.jsonl (one record per step) and the bar every N "
                        "steps")
    o.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``{vqvae,gpt} [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="videogpt-fast train",
                                  description=__doc__.split("\n\n")[0].replace("``", ""),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("stage", choices=STAGES, help="vqvae: the VQ-VAE; gpt: the VideoGPT prior")
    if not argv:
        top.error("the stage is required: vqvae or gpt ('videogpt-fast train vqvae -h' lists the flags)")
    if argv[0] in ("-h", "--help"):
        top.print_help()
        print("\nrun 'videogpt-fast train vqvae -h' or 'videogpt-fast train gpt -h' for the flags")
        raise SystemExit(0)
    stage = top.parse_args(argv[:1]).stage
    parser = build_parser(stage)
    args = parser.parse_args(argv[1:])
    args.stage = stage
    try:
        check_flag_values(args)
    except ValueError as e:
        parser.error(str(e))  # usage and "error: argument --flag: ...", exit status 2
    return args


_POSITIVE = ("max_steps", "batch_size", "sequence_length", "resolution", "log_every", "lr", "hidden_dim", "heads",
             "layers")
_NON_NEGATIVE = ("num_workers", "gradient_clip_val", "save_every", "keep_checkpoints", "limit_val_batches")


def check_flag_values(args: argparse.Namespace) -> None:
    """Range checks of every numeric flag, before any data or model work; raises ValueError
    (``argument --flag: must be ..., got V``). The VQ-VAE's own constraints (powers-of-two strides
    that divide the clip size, an even --n_hiddens, ...) are checked by building it on the meta
    device, which allocates nothing."""
    def bad(name: str, what: str) -> ValueError:
        return ValueError(f"argument --{name}: must be {what}, got {getattr(args, name)}")

    for name in _POSITIVE:
        v = getattr(args, name, None)
        if v is not None and not 0 < v < float("inf"):
            raise bad(name, "positive")
    for name in _NON_NEGATIVE:
        v = getattr(args, name, None)
        if v is not None and not 0 <= v < float("inf"):
            raise bad(name, ">= 0")
    if getattr(args, "val_every", 0) < -1:
        raise bad("val_every", ">= -1 (-1: never, 0: every epoch)")
    for name in ("dropout", "attn_dropout"):
        v = getattr(args, name, None)
        if v is not None and not 0 <= v < 1:
            raise bad(name, "in [0, 1)")
    if args.stage == "gpt":  # VideoGPT's own constraints, before the data is indexed
        if args.hidden_dim % args.heads:
            raise bad("hidden_dim", f"divisible by --heads {args.heads}")
        if args.hidden_dim % 3:
            raise bad("hidden_dim", "divisible by 3 (the position embedding splits it over the latent's T, H, W)")
    if args.stage == "vqvae":
        from .vqvae import VQVAE
        n_params = estimated_params(lambda a: VQVAE(_model_namespace(a)), args, "n_res_layers")
        check_model_memory(n_params, "the VQ-VAE", "--n_hiddens, --n_res_layers, --embedding_dim or --n_codes",
                           args.device)
        with torch.device("meta"):
            VQVAE(_model_namespace(args)).latent_shape  # noqa: B018 (raises on clip sizes the strides do not divide)


def _validate_args(args: argparse.Namespace) -> None:
    if args.max_steps is None:
        if args.stage == "gpt":
            raise ValueError("--max_steps is required for the prior (its CosineAnnealingLR schedule runs over "
                             "max_steps), as in the original scripts/train_videogpt.py")
        args.max_steps = VQVAE_MAX_STEPS
    check_flag_values(args)
    if args.stage == "vqvae":
        args.downsample = [int(d) for d in args.downsample]


# ==============================================================================================
# distributed helpers
# ==============================================================================================
def _env_world() -> Tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _setup_distributed(device_flag: str) -> Tuple[torch.device, int, int]:
    """Initialise the process group under torchrun (NCCL on GPU, gloo on CPU); pick the device."""
    rank, world, local_rank = _env_world()
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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_gather_object(obj: Any) -> List[Any]:
    if not dist.is_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ==============================================================================================
# RNG state (only types torch.load(weights_only=True) accepts)
# ==============================================================================================
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


# ==============================================================================================
# data
# ==============================================================================================
class SeededDataset(data.Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded with NumPy, ``random`` and torch
    seeded from ``seed`` (the calling process's streams are restored afterwards)."""

    def __init__(self, dataset: data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                np.random.seed(seed)
                random.seed(seed)
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ResumableSampler(data.Sampler):
    """Distributed, epoch-seeded sampler of ``(index, seed)`` pairs that can start mid-epoch.

    Epoch ``e`` uses a generator seeded with ``seed + e``: a permutation of the ``n`` items (or
    ``0..n-1`` without shuffling) and one 31-bit seed per position. As ``DistributedSampler``
    (drop_last=False), the list is padded by wrapping to a multiple of ``num_replicas`` and rank ``r``
    takes every ``num_replicas``-th item from ``r``. :meth:`set_epoch` picks the epoch and how many
    of this rank's samples to skip.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        if n <= 0:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got {n} items")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.n, self.num_replicas, self.rank, self.shuffle, self.seed = n, num_replicas, rank, shuffle, seed
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 31 - 1, (self.n,), generator=g)
        total = self.per_rank * self.num_replicas
        pos = torch.arange(total) % self.n  # pad by wrapping around
        mine = pos[self.rank::self.num_replicas][self.start:]
        return iter([(int(order[p]), int(seeds[p])) for p in mine])

    def __len__(self) -> int:
        return self.per_rank - self.start


@contextlib.contextmanager
def rank0_first():
    """Under an initialised process group, run the block on rank 0 first, then on the other ranks
    (which wait at a barrier): rank 0 builds and caches the clip index, the others read the cache."""
    if not dist.is_initialized():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()
        yield
        return
    try:
        yield
    finally:  # also on an error, so that the other ranks fail on their own instead of waiting forever
        dist.barrier()


def open_datasets(args: argparse.Namespace) -> Tuple[data.Dataset, data.Dataset]:
    """Train and test datasets for ``--data_path`` as the original ``VideoData``: a folder gives a
    ``VideoDataset``, an HDF5 file an ``HDF5Dataset``; anything else raises a clear error. Under a
    process group rank 0 indexes a video folder first (see :func:`rank0_first`)."""
    from .data.loaders import DATA_PATH_FORMS, build_dataset
    path = args.data_path
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path {path!r} does not exist (expected {DATA_PATH_FORMS})")
    if os.path.isdir(path):
        for split in ("train", "test"):
            if not os.path.isdir(os.path.join(path, split)):
                raise FileNotFoundError(f"--data_path folder {path!r} has no {split}/ sub-folder (expected "
                                        f"{DATA_PATH_FORMS})")
    kw = dict(sequence_length=args.sequence_length, resolution=args.resolution)
    with rank0_first() if os.path.isdir(path) else contextlib.nullcontext():
        return build_dataset(path, train=True, **kw), build_dataset(path, train=False, **kw)


def make_loader(dataset: data.Dataset, sampler: ResumableSampler, args: argparse.Namespace,
                device: torch.device) -> data.DataLoader:
    # a private generator: creating an iterator must not draw from the global torch RNG (it would shift
    # the dropout stream of a resumed run); items are seeded per sample anyway
    g = torch.Generator()
    g.manual_seed(sampler.seed)
    return data.DataLoader(SeededDataset(dataset), batch_size=args.batch_size, sampler=sampler, generator=g,
                           num_workers=args.num_workers, pin_memory=device.type == "cuda", drop_last=False)


def retarget_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, t_max: int) -> None:
    """Make a (restored) cosine schedule end at ``t_max`` instead: the learning rates become the
    closed form at the current step for the new length. Setting ``T_max`` alone is not enough, since
    torch steps the schedule recursively from the previous rate: a run resumed after its end (rate 0)
    would stay at 0 forever."""
    scheduler.T_max = t_max
    t = min(scheduler.last_epoch, t_max)
    lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2
           for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _n_classes(dataset: data.Dataset) -> int:
    try:
        return int(dataset.n_classes)  # type: ignore[attr-defined]
    except Exception as e:  # HDF5Dataset raises ValueError, in-memory datasets lack the attribute
        raise ValueError(f"--class_cond needs a dataset with labels (a video folder with class sub-folders): {e}")


# ==============================================================================================
# models
# ==============================================================================================
class LossModule(nn.Module):
    """``batch -> (loss, metrics)`` for one stage; the module DDP wraps (so gradients sync)."""

    def __init__(self, model: nn.Module, stage: str):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if self.stage == "vqvae":
            recon_loss, _, vq = self.model(batch["video"])
            loss = recon_loss + vq["commitment_loss"]  # the original training_step
            return loss, {"recon_loss": recon_loss.detach(), "commitment_loss": vq["commitment_loss"].detach(),
                          "perplexity": vq["perplexity"].detach()}
        loss = self.model.compute_loss(batch)
        return loss, {}


def check_latent_fit(vqvae: nn.Module, args: argparse.Namespace) -> None:
    """Raise ValueError when the VQ-VAE's latent grid does not fit the prior's
    ``--sequence_length`` x ``--resolution``^2 videos."""
    ds = tuple(int(d) for d in vqvae.args.downsample)
    size = (args.sequence_length, args.resolution, args.resolution)
    if any(s % d for s, d in zip(size, ds)):
        raise ValueError(f"the VQ-VAE {args.vqvae!r} downsamples (T, H, W) by {ds}, which does not divide the "
                         f"requested videos (sequence_length, resolution, resolution) = {size}")
    want = tuple(s // d for s, d in zip(size, ds))
    have = tuple(int(s) for s in vqvae.latent_shape)
    if want != have:
        raise ValueError(
            f"the VQ-VAE {args.vqvae!r} was trained on (T, H, W) = ({vqvae.args.sequence_length}, "
            f"{vqvae.args.resolution}, {vqvae.args.resolution}) with latent shape {have}, but the prior asks for "
            f"{size}, whose latent shape is {want}: set --sequence_length {vqvae.args.sequence_length} "
            f"--resolution {vqvae.args.resolution} or use a matching VQ-VAE")
    if args.n_cond_frames >= args.sequence_length:
        raise ValueError(f"--n_cond_frames {args.n_cond_frames} must be < --sequence_length {args.sequence_length}")


def _model_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The hyper-parameters stored with the model (the original saved the whole parsed namespace);
    only plain values, so ``torch.load(weights_only=True)`` reads them."""
    keep = {}
    for k, v in vars(args).items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and all(
                isinstance(x, (bool, int, float, str)) for x in v)):
            keep[k] = v
    return argparse.Namespace(**keep)


def build_model(args: argparse.Namespace, train_set: data.Dataset,
                resume_ckpt: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A fresh VQVAE / VideoGPT for ``args`` (the prior's VQ-VAE from ``--vqvae``, or rebuilt from the
    checkpoint's own ``vqvae.*`` weights when resuming)."""
    from .gpt import VideoGPT
    from .vqvae import VQVAE

    if args.stage == "vqvae":
        return VQVAE(_model_namespace(args))
    if args.class_cond:
        args.class_cond_dim = _n_classes(train_set)
    else:
        args.class_cond_dim = None
    if resume_ckpt is not None:
        vqvae = VQVAE(infer_vqvae_args(args, resume_ckpt["state_dict"]))
    else:
        vqvae = load_vqvae(args.vqvae)
    check_latent_fit(vqvae, args)
    n_params = estimated_params(lambda a: VideoGPT(_model_namespace(a), vqvae=vqvae), args, "layers")
    check_model_memory(n_params, "the prior", "--hidden_dim or --layers", args.device)
    return VideoGPT(_model_namespace(args), vqvae=vqvae)


# ==============================================================================================
# metrics
# ==============================================================================================
class MetricsWriter:
    """Rank-0 metrics: one JSON object per line in ``metrics.jsonl`` (and TensorBoard when installed)."""

    def __init__(self, folder: Path, enabled: bool, resume_step: Optional[int]):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what a killed run logged after the checkpoint we resume from (and a torn last line)
            try:
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            except ValueError as e:
                raise ValueError(f"cannot resume: {e}; fix or delete that line (metrics.jsonl is only the log of "
                                 "the run; the checkpoints are intact), then resume again") from None
            text = "".join(json.dumps(r) + "\n" for r in kept)
            # atomically: a run killed while rewriting it must not lose the log of the earlier steps
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        elif self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: name the file (--resume auto drops the torn line it may leave)
            raise OSError(e.errno, f"could not append to {self.path}: {e.strerror or e}") from None
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: os.PathLike) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file. A torn last line (a run killed, or a disk filled,
    mid-write) is dropped with a warning; a malformed line elsewhere raises ValueError naming the
    file and line."""
    lines = [(i, l) for i, l in enumerate(Path(path).read_text(errors="replace").splitlines(), 1) if l.strip()]
    records = []
    for i, line in lines:
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == lines[-1][0]:
                log.warning("%s: dropping its torn last line %d (%s)", path, i, line[:60])
                break
            raise ValueError(f"{path} line {i} is not a metrics record ({e}): {line[:60]!r}") from None
        records.append(rec)
    return records


# ==============================================================================================
# trainer
# ==============================================================================================
class Trainer:
    """One training loop for both stages (and the demo, which passes in-memory datasets).

    Args:
        args: parsed ``train`` flags (see :func:`build_parser`), with ``args.stage``.
        train_set, val_set: datasets of ``dict(video=(C, T, H, W) in [-0.5, 0.5][, label])``; when
            None they come from ``--data_path``.
        progress_desc: the tqdm bar's label.
    """

    def __init__(self, args: argparse.Namespace, train_set: Optional[data.Dataset] = None,
                 val_set: Optional[data.Dataset] = None, progress_desc: Optional[str] = None):
        _validate_args(args)
        perf.validate_args(args)
        self.args = args
        self.device, self.rank, self.world = _setup_distributed(args.device)
        self.is_main = self.rank == 0
        self.progress_desc = progress_desc or f"train {args.stage}"
        self.output = Path(args.output)
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)

        self.dali_loader = None
        if train_set is None:
            train_set, val_set = open_datasets(args)
            self._report_skipped(train_set, val_set)
            use_dali, reason = self._choose_loader()
            if use_dali:
                from .data import make_loader as make_data_loader
                self.dali_loader, _ = make_data_loader("dali", args, train=True)
                self.announce(f"loader: DALI, GPU decoding ({reason}); --resume continues at the same step and "
                              "data position but not bit-exactly (DALI's own shuffling and crops)")
            else:
                source = "PyAV" if os.path.isdir(args.data_path) else "HDF5"
                self.announce(f"loader: PyTorch DataLoader + {source} ({reason})")
        from .data import require_clips, require_labels
        require_clips(train_set, f"the training set of {args.data_path!r}")
        if args.stage == "gpt" and args.class_cond:
            for ds in (train_set, val_set):
                require_labels(ds)
        self.train_set, self.val_set = train_set, val_set

        resume_path = self._resume_path()
        ckpt = safe_load(resume_path) if resume_path else None
        if ckpt is not None:
            self._adopt_checkpoint_args(ckpt, resume_path)
            check_fits(lambda: build_model(args, train_set, ckpt), ckpt["state_dict"], resume_path)

        torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        np.random.seed(args.seed)
        random.seed(args.seed)
        self.model = build_model(args, train_set, ckpt).to(self.device)
        perf_msgs = perf.configure_backends(self.device, args.tf32, not args.no_cudnn_benchmark)
        if args.channels_last_3d:
            perf.to_channels_last_3d(self.model)
        perf_msgs.append(perf.apply_activation_checkpointing(
            self.model, args.stage, perf.activation_checkpointing_arg(args.activation_checkpointing)))
        if ckpt is not None:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)

        net: nn.Module = LossModule(self.model, args.stage)
        if args.sync_batchnorm and (args.stage != "vqvae" or self.world == 1):
            why = "it applies to the VQ-VAE stage" if args.stage != "vqvae" else "one process: nothing to synchronise"
            self.announce(f"--sync_batchnorm has no effect here ({why})")
        if self.world > 1:
            if args.sync_batchnorm and args.stage == "vqvae":
                if self.device.type != "cuda":
                    raise ValueError("--sync_batchnorm needs CUDA (torch's SyncBatchNorm does not run on CPU)")
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
                self.model = net.model
            net = nn.parallel.DistributedDataParallel(
                net, **perf.ddp_kwargs(self.device, args.ddp_bucket_mb, compiled=args.compile))
            perf_msgs.append(f"DDP: gradient buckets of {net.bucket_bytes_cap / 2 ** 20:g} MiB all-reduced during "
                             "backward, static_graph, gradient_as_bucket_view")
        self.net = torch.compile(net) if args.compile else net

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        opt_kwargs, opt_desc = perf.optimizer_kwargs(self.device)
        self.optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                           **opt_kwargs)
        perf_msgs += [opt_desc, f"precision {args.precision}", f"torch.compile {'on' if args.compile else 'off'}",
                      f"channels_last_3d {'on' if args.channels_last_3d else 'off'}"]
        self.announce("performance: " + "; ".join(perf_msgs))
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, args.max_steps)
                          if args.stage == "gpt" else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.precision == "16")
        self.autocast_dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]

        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.train_sampler = ResumableSampler(len(train_set), self.world, self.rank, shuffle=True, seed=args.seed)
        self.batches_per_epoch = (len(self.dali_loader) if self.dali_loader is not None
                                  else math.ceil(self.train_sampler.per_rank / args.batch_size))
        self.val_loader = None
        if val_set is not None and len(val_set) > 0 and args.val_every >= 0:
            val_sampler = ResumableSampler(len(val_set), self.world, self.rank, shuffle=False, seed=args.seed)
            self.val_loader = make_loader(val_set, val_sampler, args, self.device)
        elif self.is_main and args.val_every >= 0:
            log.warning("no validation data: validation is skipped")

        # training-time randomness (dropout, codebook init) differs per rank
        torch.manual_seed(args.seed + self.rank)
        np.random.seed(args.seed + self.rank)
        random.seed(args.seed + self.rank)
        if ckpt is not None:
            self._restore(ckpt)
            if self.global_step > args.max_steps:
                raise ValueError(f"--resume: the checkpoint is at step {self.global_step}, past --max_steps "
                                 f"{args.max_steps}: nothing to train; give a larger --max_steps to continue")
            if self.global_step == args.max_steps:
                self.announce(f"--resume: the checkpoint is already at --max_steps {args.max_steps}; nothing to "
                              "train (give a larger --max_steps to continue)", logging.WARNING)
        if self.is_main:
            stale = remove_stale_temporaries(self.output)
            if stale:
                self.announce(f"removed {len(stale)} temporary file(s) an interrupted save left in {self.output}: "
                              + ", ".join(p.name for p in stale), logging.WARNING)
        self.metrics = MetricsWriter(self.output, self.is_main, self.global_step if ckpt is not None else None)
        self.history: List[Dict[str, Any]] = []
        # --keep_checkpoints counts the periodic checkpoints on disk, also those of the run resumed
        self.saved: List[Path] = periodic_checkpoints(self.output) if ckpt is not None else []
        self._copy_logged = False
        self._last_save_step = self._last_val_step = self.global_step if ckpt is not None else -1

    # ------------------------------------------------------------------------------------------
    def announce(self, msg: str, level: int = logging.INFO) -> None:
        """A run-start message: logged, and printed on rank 0 so that it shows without logging set up."""
        if self.is_main:
            log.log(level, msg, extra={_PRINTED: True})
            print(f"[videogpt_fast] {msg}", flush=True)

    def _report_skipped(self, *datasets: Optional[data.Dataset]) -> None:
        """Say how many video files indexing skipped as unreadable (they are only warned about there)."""
        for ds in datasets:
            files = getattr(ds, "skipped_files", None)
            if not files:
                continue
            shown = "; ".join(f"{p} ({err})" for p, err in files[:3]) + ("; ..." if len(files) > 3 else "")
            split = "train" if getattr(ds, "train", True) else "test"
            self.announce(f"skipped {len(files)} unreadable video file(s) of {split}/: {shown}", logging.WARNING)

    def _choose_loader(self) -> Tuple[bool, str]:
        """``(use DALI, why)`` for ``--loader``; raises ValueError when ``dali`` cannot run here."""
        kind = self.args.loader
        if kind == "pytorch":
            return False, "--loader pytorch"
        from .data import dali as dali_mod
        is_folder = os.path.isdir(self.args.data_path)
        if kind == "dali":
            if self.device.type != "cuda":
                raise ValueError("--loader dali decodes on the GPU: it needs a CUDA device "
                                 f"(this run is on {self.device}); use --loader pytorch or auto")
            if not is_folder:
                raise ValueError(f"--loader dali reads a video folder; {self.args.data_path!r} is not one")
            ok, why = dali_mod.dali_status("gpu")
            if not ok:
                raise ValueError(f"--loader dali: {why}")
            return True, "--loader dali"
        if not is_folder:
            return False, "auto: --data_path is an HDF5 file; DALI reads video folders"
        if self.device.type != "cuda":
            return False, "auto: no CUDA device"
        ok, why = dali_mod.dali_status("gpu")
        return ok, f"auto: CUDA device and {why}" if ok else f"auto: DALI unavailable: {why}"

    def _epoch_batches(self) -> Iterator[Dict[str, Any]]:
        """This epoch's remaining training batches."""
        if self.dali_loader is not None:
            it = iter(self.dali_loader)
            for _ in range(self.batch_in_epoch):  # fast-forward to the resumed position
                next(it)
            return it
        self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch * self.args.batch_size)
        return iter(make_loader(self.train_set, self.train_sampler, self.args, self.device))

    def _resume_path(self) -> Optional[Path]:
        r = self.args.resume
        if not r:
            return None
        if r == "auto":
            p = self.output / "last.ckpt"
            return p if p.is_file() else None
        p = Path(r)
        if not p.is_file():
            raise FileNotFoundError(f"--resume {r!r}: no such checkpoint file")
        return p

    def _adopt_checkpoint_args(self, ckpt: Dict[str, Any], path: Path) -> None:
        _split(ckpt, path)  # a dict with state_dict and args, or a clear CheckpointError
        kind = checkpoint_kind(ckpt.get("state_dict", {}))
        want = "vqvae" if self.args.stage == "vqvae" else "videogpt"
        if kind != want:
            raise ValueError(f"--resume {path} is a {kind} checkpoint, but this run trains the {self.args.stage}")
        if "videogpt_fast" not in ckpt:
            raise ValueError(f"--resume {path} holds no training state (optimiser, RNG, data position): it was not "
                             "written by videogpt_fast.train; start a new run from its weights instead")
        stored = ckpt["hyper_parameters"]["args"]
        for name in MODEL_ARGS[self.args.stage]:
            if hasattr(stored, name) and getattr(self.args, name, None) != getattr(stored, name):
                if self.is_main and name != "class_cond_dim":
                    log.warning("--resume: %s=%r from the checkpoint (command line had %r)",
                                name, getattr(stored, name), getattr(self.args, name, None))
                setattr(self.args, name, getattr(stored, name))

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        extra = ckpt["videogpt_fast"]
        self.optimizer.load_state_dict(ckpt["optimizer_states"][0])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["lr_schedulers"][0])
            if self.scheduler.T_max != self.args.max_steps:
                if self.is_main:
                    log.warning("--max_steps %d differs from the checkpoint's %d: the cosine schedule now ends at "
                                "%d", self.args.max_steps, self.scheduler.T_max, self.args.max_steps)
                retarget_cosine(self.scheduler, self.args.max_steps)
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.global_step, self.epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
        pos = extra["data"]
        same = (pos["world_size"] == self.world and pos["batch_size"] == self.args.batch_size
                and pos["dataset_len"] == len(self.train_set) and pos["seed"] == self.args.seed)
        rngs = extra["rng"]
        if same and len(rngs) == self.world:
            self.batch_in_epoch = int(pos["batch_in_epoch"])
            set_rng_state(rngs[self.rank])
        else:
            if self.is_main:
                log.warning("--resume with a different world size, batch size, dataset or seed: the data order "
                            "restarts at the next epoch and the run will not repeat the original exactly")
            self.epoch += 1 if pos["batch_in_epoch"] else 0
            self.batch_in_epoch = 0
        if self.is_main:
            log.info("resumed from step %d (epoch %d, batch %d)", self.global_step, self.epoch, self.batch_in_epoch)

    # ------------------------------------------------------------------------------------------
    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        batch = {k: (v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return perf.channels_last_batch(batch) if self.args.channels_last_3d else batch

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One optimiser step; returns the (detached) loss and the stage's metrics (with ``lr``, the
        learning rate this step used)."""
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        with self._autocast():
            loss, metrics = self.net(batch)
        self.scaler.scale(loss).backward()
        if self.args.gradient_clip_val > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.args.gradient_clip_val)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), {"lr": lr, **metrics}

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Mean validation metrics over ranks (``val/recon_loss`` ... or ``val/loss``)."""
        if self.val_loader is None:
            return {}
        with preserved_rng():
            self.model.eval()
            sums: Dict[str, torch.Tensor] = {}
            count = torch.zeros((), dtype=torch.float64, device=self.device)
            limit = self.args.limit_val_batches
            total = min(len(self.val_loader), limit) if limit else len(self.val_loader)
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="validate", leave=False, dynamic_ncols=True,
                       disable=not self.is_main or self.args.no_progress)
            for i, batch in enumerate(self.val_loader):
                if limit and i >= limit:
                    break
                bar.update(1)
                batch = self._to_device(batch)
                with self._autocast():
                    if self.args.stage == "vqvae":
                        recon_loss, _, vq = self.model(batch["video"])
                        vals = {"val/recon_loss": recon_loss, "val/perplexity": vq["perplexity"],
                                "val/commitment_loss": vq["commitment_loss"]}
                    else:
                        vals = {"val/loss": self.model.compute_loss(batch)}
                for k, v in vals.items():
                    sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64, device=self.device)) + v.double()
                count += 1
            bar.close()
            self.model.train()
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys] + [count]) if keys else count.reshape(1)
        if dist.is_initialized():
            dist.all_reduce(packed)
        n = float(packed[-1])
        return {k: float(packed[i]) / n for i, k in enumerate(keys)} if n else {}

    # ------------------------------------------------------------------------------------------
    def save(self, periodic: bool) -> Optional[Path]:
        """Write ``last.ckpt`` (and ``epoch=E-step=S.ckpt`` when ``periodic``) atomically; every rank
        takes part (the RNG states are gathered), rank 0 writes."""
        rngs = _all_gather_object(get_rng_state())
        path = None
        if self.is_main:
            extra = {
                "stage": self.args.stage,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rngs,
                "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.args.seed,
                         "world_size": self.world, "batch_size": self.args.batch_size,
                         "dataset_len": len(self.train_set)},
                "max_steps": self.args.max_steps,
            }
            ckpt = lightning_checkpoint(self.model, global_step=self.global_step, epoch=self.epoch, extra=extra)
            ckpt["optimizer_states"] = [self.optimizer.state_dict()]
            ckpt["lr_schedulers"] = [self.scheduler.state_dict()] if self.scheduler is not None else []
            if periodic:
                path = atomic_save(ckpt, self.output / f"epoch={self.epoch}-step={self.global_step}.ckpt")
                self.saved = [p for p in self.saved if p != path] + [path]
                keep = self.args.keep_checkpoints
                while keep and len(self.saved) > keep:
                    old = self.saved.pop(0)
                    if old.exists():
                        old.unlink()
                # last.ckpt: the same file, not a second full copy (a copy where hard links are missing)
                if link_or_copy(path, self.output / "last.ckpt") == "copy" and not self._copy_logged:
                    self._copy_logged = True
                    log.warning("%s has no hard links: last.ckpt is written as a full copy of each periodic "
                                "checkpoint", self.output)
            else:
                path = atomic_save(ckpt, self.output / "last.ckpt")
        self._last_save_step = self.global_step
        _barrier()
        return path

    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        self.metrics.write(record)

    def fit(self) -> List[Dict[str, Any]]:
        """Train to ``--max_steps``; returns the metric records (also in ``OUTPUT/metrics.jsonl``)."""
        args = self.args
        if self.global_step >= args.max_steps:
            self.announce(f"{args.stage}: the checkpoint is at step {self.global_step}, already --max_steps "
                          f"{args.max_steps}: nothing to train (raise --max_steps to continue)", logging.WARNING)
        bar = None
        if self.is_main and not args.no_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=args.max_steps, initial=self.global_step, desc=self.progress_desc, dynamic_ncols=True)
        pending: List[Tuple[int, torch.Tensor, Dict[str, torch.Tensor]]] = []
        t0 = time.time()
        try:
            while self.global_step < args.max_steps:
                for batch in self._epoch_batches():
                    loss, metrics = self.train_step(self._to_device(batch))
                    self.global_step += 1
                    self.batch_in_epoch += 1
                    epoch_done = self.batch_in_epoch >= self.batches_per_epoch
                    pending.append((self.global_step, self.epoch, loss, metrics))
                    if self.global_step % args.log_every == 0 or self.global_step >= args.max_steps:
                        self._flush(pending, bar, t0)
                    if bar is not None:
                        bar.update(1)
                    if epoch_done:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    if (args.val_every > 0 and self.global_step % args.val_every == 0) or (
                            args.val_every == 0 and epoch_done):
                        self._flush(pending, bar, t0)
                        self._validate_and_log(bar)
                    if args.save_every > 0 and self.global_step % args.save_every == 0:
                        self._flush(pending, bar, t0)
                        self.save(periodic=True)
                    if self.global_step >= args.max_steps or epoch_done:
                        break
            self._flush(pending, bar, t0)
            if args.val_every >= 0 and self._last_val_step != self.global_step:
                self._validate_and_log(bar)
            if self._last_save_step != self.global_step:
                self.save(periodic=True)
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        if self.is_main:
            print(f"[videogpt_fast] {args.stage}: {self.global_step} steps; checkpoints in {self.output} "
                  f"(last.ckpt), metrics in {self.metrics.path}", flush=True)
        return self.history

    def _flush(self, pending: list, bar, t0: float) -> None:
        if not pending:
            return
        for step, epoch, loss, metrics in pending:
            rec = {"step": step, "epoch": epoch, "loss": float(loss), "time": round(time.time() - t0, 3)}
            rec.update({k: float(v) for k, v in metrics.items()})
            self._log(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{float(pending[-1][2]):.4f}")
        pending.clear()

    def _validate_and_log(self, bar) -> None:
        self._last_val_step = self.global_step
        vals = self.validate()
        if vals:
            self._log({"step": self.global_step, "epoch": self.epoch, **vals})
            if bar is not None:
                bar.set_postfix({k.replace("/", "_"): f"{v:.4f}" for k, v in vals.items()})  # val_*: not train


# ==============================================================================================
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m videogpt_fast.train {vqvae,gpt} [flags]``."""
    args = parse_args(argv)
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=logging.INFO if _env_world()[0] == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for h in root.handlers:
        if h not in before:  # messages Trainer.announce printed are not logged a second time
            h.addFilter(lambda record: not getattr(record, _PRINTED, False))
    lock = OutputLock(args.output)
    try:
        if _env_world()[0] == 0:
            lock.acquire()  # before anything is written there; dropped when the run ends or dies
        if not args.resume:
            check_fresh_output(args.output)
        Trainer(args).fit()
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError, CheckpointWriteError an OSError
        print(f"videogpt-fast train {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        return report_out_of_memory(e, f"videogpt-fast train {args.stage}")
    finally:
        lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
