"""``videogpt-fast train`` arguments: the parser, the up-front checks, and :func:`complete_args`,
the one function that fills in and changes ``args`` (defaults that depend on the stage, the
checkpoint's architecture on ``--resume``, the number of classes of the data)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, Optional, Sequence

import torch
import torch.utils.data as data

from .. import perf
from ..argtypes import DefaultsHelpFormatter, device_name, seed_int
from ..model_size import check_model_memory, estimated_params
from ..utils import cpu_count
from .models import model_namespace

log = logging.getLogger("videogpt_fast.train")

STAGES = ("vqvae", "gpt")
#: hyper-parameters that define each stage's architecture (taken from the checkpoint on --resume)
MODEL_ARGS = {
    "vqvae": ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample", "sequence_length",
              "resolution", "temporal_padding"),
    "gpt": ("vqvae", "n_cond_frames", "class_cond", "class_cond_dim", "hidden_dim", "heads", "layers",
            "dropout", "attn_type", "attn_dropout", "sequence_length", "resolution"),
}
#: what a checkpoint that lacks one of :data:`MODEL_ARGS` was trained with (its args predate the flag)
ABSENT_MODEL_ARGS = {"temporal_padding": "zeros"}
_ABSENT = object()
VQVAE_MAX_STEPS = 200000  # scripts/train_vqvae.py hard-codes Trainer(max_steps=200000)
VAL_BATCHES = 100  # default --limit_val_batches: a validation never sits silent over a whole large test split
USAGE = """Train the VQ-VAE or the VideoGPT prior, in one process or under torchrun (DDP)."""


def default_num_workers() -> int:
    """min(8, CPU cores this process may use): more workers than cores only contend (and PyTorch warns)."""
    return min(8, cpu_count())


def build_parser(stage: str) -> argparse.ArgumentParser:
    """The flags of ``train {stage}``: the original script's, plus the trainer's own."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    from ..gpt import VideoGPT
    from ..vqvae import VQVAE

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
    o.add_argument("--log_every", type=int, default=10,
                   help="write the training metrics to metrics.jsonl (one record per step) and the bar every N steps")
    o.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``{vqvae,gpt} [flags]``; a bad flag value is an argparse usage error (exit status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="videogpt-fast train", description=USAGE,
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
        from ..vqvae import VQVAE
        n_params = estimated_params(lambda a: VQVAE(model_namespace(a)), args, "n_res_layers")
        check_model_memory(n_params, "the VQ-VAE", "--n_hiddens, --n_res_layers, --embedding_dim or --n_codes",
                           args.device)
        with torch.device("meta"):
            VQVAE(model_namespace(args)).latent_shape  # noqa: B018 (raises on clip sizes the strides do not divide)


def check_args(args: argparse.Namespace) -> None:
    """Every check of ``args`` that needs no data (also for ``args`` that did not come through
    :func:`parse_args`, as the demo's); raises ValueError. Changes nothing."""
    if args.max_steps is None and args.stage == "gpt":
        raise ValueError("--max_steps is required for the prior (its CosineAnnealingLR schedule runs over "
                         "max_steps), as in the original scripts/train_videogpt.py")
    check_flag_values(args)
    perf.validate_args(args)


def _n_classes(dataset: data.Dataset) -> int:
    try:
        return int(dataset.n_classes)  # type: ignore[attr-defined]
    except Exception as e:  # HDF5Dataset raises ValueError, in-memory datasets lack the attribute
        raise ValueError(f"--class_cond needs a dataset with labels (a video folder with class sub-folders): {e}")


def complete_args(args: argparse.Namespace, train_set: data.Dataset, ckpt: Optional[Dict[str, Any]] = None,
                  is_main: bool = True) -> argparse.Namespace:
    """The one place ``args`` is changed, before the model is built: ``--max_steps`` defaults to the
    original's 200000 for the VQ-VAE, ``downsample`` becomes a list of ints, on ``--resume`` the
    architecture (:data:`MODEL_ARGS`) comes from the checkpoint ``ckpt`` (a warning where the
    command line differs), and a class-conditional prior takes ``class_cond_dim`` from
    ``train_set``'s classes. Returns ``args`` (changed in place); ValueError for ``--class_cond``
    on a dataset without labels."""
    if args.max_steps is None:
        args.max_steps = VQVAE_MAX_STEPS
    if args.stage == "vqvae":
        args.downsample = [int(d) for d in args.downsample]
    if ckpt is not None:
        stored = ckpt["hyper_parameters"]["args"]
        for name in MODEL_ARGS[args.stage]:
            value = getattr(stored, name, ABSENT_MODEL_ARGS.get(name, _ABSENT))
            if value is not _ABSENT and getattr(args, name, None) != value:
                if is_main and name != "class_cond_dim":
                    log.warning("--resume: %s=%r from the checkpoint (command line had %r)",
                                name, value, getattr(args, name, None))
                setattr(args, name, value)
    if args.stage == "gpt":
        args.class_cond_dim = _n_classes(train_set) if args.class_cond else None
    return args
