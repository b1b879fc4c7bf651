"""Checkpoints of a training run and ``--resume``: which file to resume from, whether it can be
resumed, writing ``last.ckpt`` / ``epoch=E-step=S.ckpt`` (the original Lightning layout plus the
optimiser, schedule, GradScaler, every rank's RNG states and the data position) and restoring them,
so that a resumed run repeats an uninterrupted one."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..checkpoint import atomic_save, checkpoint_kind, describe_kind, lightning_checkpoint, link_or_copy, split_checkpoint
from .distributed import all_gather_object, barrier, get_rng_state, set_rng_state

log = logging.getLogger("videogpt_fast.train")


def resume_path(resume: Optional[str], output: Path) -> Optional[Path]:
    """The checkpoint ``--resume`` names (``auto``: ``output/last.ckpt`` when it exists, else None);
    FileNotFoundError for a path that is no file."""
    if not resume:
        return None
    if resume == "auto":
        p = output / "last.ckpt"
        return p if p.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file")
    return p


def check_resumable(ckpt: Dict[str, Any], path: Path, stage: str) -> None:
    """ValueError unless ``ckpt`` (read from ``path``) is a checkpoint of ``stage`` written by this
    trainer, with its training state."""
    split_checkpoint(ckpt, path)  # a dict with state_dict and args, or a clear CheckpointError
    kind = checkpoint_kind(ckpt.get("state_dict", {}))
    want = "vqvae" if stage == "vqvae" else "videogpt"
    if kind != want:
        raise ValueError(f"--resume {path} is {describe_kind(kind)}, but this run trains the {stage}")
    if "videogpt_fast" not in ckpt:
        raise ValueError(f"--resume {path} holds no training state (optimiser, RNG, data position): it was not "
                         "written by videogpt_fast.train; start a new run from its weights instead")


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


def restore(trainer, ckpt: Dict[str, Any]) -> None:
    """Load the optimiser, schedule, GradScaler, step, epoch, data position and this rank's RNG
    state of ``ckpt`` into ``trainer`` (a :class:`~videogpt_fast.train.Trainer`). With another
    world size, batch size, dataset or seed the data order restarts at the next epoch (warned)."""
    args, extra = trainer.args, ckpt["videogpt_fast"]
    trainer.optimizer.load_state_dict(ckpt["optimizer_states"][0])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(ckpt["lr_schedulers"][0])
        if trainer.scheduler.T_max != args.max_steps:
            if trainer.is_main:
                log.warning("--max_steps %d differs from the checkpoint's %d: the cosine schedule now ends at "
                            "%d", args.max_steps, trainer.scheduler.T_max, args.max_steps)
            retarget_cosine(trainer.scheduler, args.max_steps)
    if extra.get("scaler"):
        trainer.scaler.load_state_dict(extra["scaler"])
    trainer.global_step, trainer.epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
    pos = extra["data"]
    same = (pos["world_size"] == trainer.world and pos["batch_size"] == args.batch_size
            and pos["dataset_len"] == len(trainer.train_set) and pos["seed"] == args.seed)
    rngs = extra["rng"]
    if same and len(rngs) == trainer.world:
        trainer.batch_in_epoch = int(pos["batch_in_epoch"])
        set_rng_state(rngs[trainer.rank])
    else:
        if trainer.is_main:
            log.warning("--resume with a different world size, batch size, dataset or seed: the data order "
                        "restarts at the next epoch and the run will not repeat the original exactly")
        trainer.epoch += 1 if pos["batch_in_epoch"] else 0
        trainer.batch_in_epoch = 0
    if trainer.is_main:
        log.info("resumed from step %d (epoch %d, batch %d)", trainer.global_step, trainer.epoch,
                 trainer.batch_in_epoch)


def save(trainer, periodic: bool) -> Optional[Path]:
    """Write ``last.ckpt`` (and ``epoch=E-step=S.ckpt`` when ``periodic``, keeping the newest
    ``--keep_checkpoints``) of ``trainer`` atomically; every rank takes part (the RNG states are
    gathered), rank 0 writes. Returns the path written (None on other ranks)."""
    args = trainer.args
    rngs = all_gather_object(get_rng_state())
    path = None
    if trainer.is_main:
        extra = {
            "stage": args.stage,
            "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {},
            "rng": rngs,
            "data": {"epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch, "seed": args.seed,
                     "world_size": trainer.world, "batch_size": args.batch_size,
                     "dataset_len": len(trainer.train_set)},
            "max_steps": args.max_steps,
        }
        ckpt = lightning_checkpoint(trainer.model, global_step=trainer.global_step, epoch=trainer.epoch, extra=extra)
        ckpt["optimizer_states"] = [trainer.optimizer.state_dict()]
        ckpt["lr_schedulers"] = [trainer.scheduler.state_dict()] if trainer.scheduler is not None else []
        output = trainer.output
        if periodic:
            path = atomic_save(ckpt, output / f"epoch={trainer.epoch}-step={trainer.global_step}.ckpt")
            trainer.saved = [p for p in trainer.saved if p != path] + [path]
            keep = args.keep_checkpoints
            while keep and len(trainer.saved) > keep:
                old = trainer.saved.pop(0)
                if old.exists():
                    old.unlink()
            # last.ckpt: the same file, not a second full copy (a copy where hard links are missing)
            if link_or_copy(path, output / "last.ckpt") == "copy" and not trainer._copy_logged:
                trainer._copy_logged = True
                log.warning("%s has no hard links: last.ckpt is written as a full copy of each periodic "
                            "checkpoint", output)
        else:
            path = atomic_save(ckpt, output / "last.ckpt")
    trainer._last_save_step = trainer.global_step
    barrier()
    return path
