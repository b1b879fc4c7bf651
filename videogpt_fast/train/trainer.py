"""The training loop shared by both stages (and the demo): :class:`Trainer`."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.data as data

from .. import perf
from ..checkpoint import check_fits, safe_load
from ..data import choose_loader, dali_loader, open_datasets, require_clips, require_labels
from ..run_dir import periodic_checkpoints, remove_stale_temporaries
from . import resume
from .args import check_args, complete_args
from .distributed import preserved_rng, seed_all, setup_distributed
from .metrics import MetricsWriter, announce, report_skipped
from .models import LossModule, build_model, stage_loss
from .sampling import ResumableSampler, seeded_loader

log = logging.getLogger("videogpt_fast.train")


#: consecutive steps with a non-finite loss that end a run: fp16's GradScaler skips the updates of such
#: steps and recovers by lowering its scale, so it gets some; without it one NaN loss poisons the weights
NONFINITE_STEPS_ALLOWED = {True: 20, False: 1}


class TrainingDivergedError(RuntimeError):
    """The training loss stopped being finite: the run ends before it writes a checkpoint of the
    diverged weights (the checkpoints already written are unchanged)."""


class Trainer:
    """One training loop for both stages (and the demo, which passes in-memory datasets).

    Args:
        args: parsed ``train`` flags (see :func:`~videogpt_fast.train.build_parser`), with
            ``args.stage``; completed in place by :func:`~videogpt_fast.train.args.complete_args`.
        train_set, val_set: datasets of ``dict(video=(C, T, H, W) in [-0.5, 0.5][, label])``; when
            None they come from ``--data_path``.
        progress_desc: the tqdm bar's label.
    """

    def __init__(self, args: argparse.Namespace, train_set: Optional[data.Dataset] = None,
                 val_set: Optional[data.Dataset] = None, progress_desc: Optional[str] = None):
        check_args(args)
        self.args = args
        self.device, self.rank, self.world = setup_distributed(args.device)
        self.is_main = self.rank == 0
        self.progress_desc = progress_desc or f"train {args.stage}"
        self.output = Path(args.output)
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)

        self.dali_loader = None
        if train_set is None:
            train_set, val_set = open_datasets(args)
            report_skipped(train_set, val_set, is_main=self.is_main)
            use_dali, reason = choose_loader(args.loader, args.data_path, self.device)
            if use_dali:
                self.dali_loader = dali_loader(args, train=True)
                self.announce(f"loader: DALI, GPU decoding ({reason}); --resume continues at the same step and "
                              "data position but not bit-exactly (DALI's own shuffling and crops)")
            else:
                source = "PyAV" if os.path.isdir(args.data_path) else "HDF5"
                self.announce(f"loader: PyTorch DataLoader + {source} ({reason})")
        require_clips(train_set, f"the training set of {args.data_path!r}")
        if args.stage == "gpt" and args.class_cond:
            for ds in (train_set, val_set):
                require_labels(ds)
        self.train_set, self.val_set = train_set, val_set

        resume_path = resume.resume_path(args.resume, self.output)
        ckpt = safe_load(resume_path) if resume_path else None
        if ckpt is not None:
            resume.check_resumable(ckpt, resume_path, args.stage)
        complete_args(args, train_set, ckpt, self.is_main)
        if ckpt is not None:
            check_fits(lambda: build_model(args, ckpt), ckpt["state_dict"], resume_path)

        seed_all(args.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        self.model = build_model(args, ckpt).to(self.device)
        perf_msgs = perf.configure_backends(self.device, args.tf32, not args.no_cudnn_benchmark)
        if args.channels_last_3d:
            perf.to_channels_last_3d(self.model)
        perf_msgs.append(perf.apply_activation_checkpointing(
            self.model, args.stage, perf.activation_checkpointing_arg(args.activation_checkpointing)))
        if ckpt is not None:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        self.net = self._wrap(perf_msgs)

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        opt_kwargs, opt_desc = perf.optimizer_kwargs(self.device)
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
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
            self.val_loader = seeded_loader(val_set, val_sampler, args, self.device)
        elif self.is_main and args.val_every >= 0:
            log.warning("no validation data: validation is skipped")

        seed_all(args.seed + self.rank)  # training-time randomness (dropout, codebook init) differs per rank
        if ckpt is not None:
            resume.restore(self, ckpt)
            if self.global_step > args.max_steps:
                raise ValueError(f"--resume: the checkpoint is at step {self.global_step}, past --max_steps "
                                 f"{args.max_steps}: nothing to train; give a larger --max_steps to continue")
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
        self._nonfinite_steps = 0

    def _wrap(self, perf_msgs: List[str]) -> nn.Module:
        """The loss module the step runs: SyncBatchNorm and DDP under a process group, compiled with
        ``--compile``."""
        args = self.args
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
        return torch.compile(net) if args.compile else net

    # ------------------------------------------------------------------------------------------
    def announce(self, msg: str, level: int = logging.INFO) -> None:
        """A run-start message: logged, and printed on rank 0 (see :func:`metrics.announce`)."""
        announce(msg, level, self.is_main)

    def _epoch_batches(self) -> Iterator[Dict[str, Any]]:
        """This epoch's remaining training batches."""
        if self.dali_loader is not None:
            it = iter(self.dali_loader)
            for _ in range(self.batch_in_epoch):  # fast-forward to the resumed position
                next(it)
            return it
        self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch * self.args.batch_size)
        return iter(seeded_loader(self.train_set, self.train_sampler, self.args, self.device))

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
                    loss, metrics = stage_loss(self.model, self.args.stage, batch)
                vals = {f"val/{k}": v for k, v in metrics.items()} or {"val/loss": loss}
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

    def save(self, periodic: bool) -> Optional[Path]:
        """Write the checkpoints (see :func:`videogpt_fast.train.resume.save`)."""
        return resume.save(self, periodic)

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
        pending: List[Tuple[int, int, torch.Tensor, Dict[str, torch.Tensor]]] = []
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
            self._check_finite(step, rec["loss"])
        if bar is not None:
            bar.set_postfix(loss=f"{float(pending[-1][2]):.4f}")
        pending.clear()

    def _check_finite(self, step: int, loss: float) -> None:
        """Raise :class:`TrainingDivergedError` after :data:`NONFINITE_STEPS_ALLOWED` consecutive steps
        with a NaN/inf loss (the loss is already on the host here: no extra sync)."""
        self._nonfinite_steps = 0 if math.isfinite(loss) else self._nonfinite_steps + 1
        allowed = NONFINITE_STEPS_ALLOWED[self.scaler.is_enabled()]
        if self._nonfinite_steps >= allowed:
            last = (f"the last at step {self._last_save_step} in {self.output}" if self._last_save_step >= 0
                    else "none was written")
            raise TrainingDivergedError(
                f"training diverged: the loss is {loss} at step {step} ({self._nonfinite_steps} consecutive "
                f"non-finite step{'s' if self._nonfinite_steps > 1 else ''}); no checkpoint of these weights is "
                f"written, the earlier ones are unchanged ({last}): resume from one with a lower --lr, "
                f"--gradient_clip_val, or --precision 32 (or look for NaN/inf values in the training videos)")

    def _validate_and_log(self, bar) -> None:
        self._last_val_step = self.global_step
        vals = self.validate()
        if vals:
            self._log({"step": self.global_step, "epoch": self.epoch, **vals})
            if bar is not None:
                bar.set_postfix({k.replace("/", "_"): f"{v:.4f}" for k, v in vals.items()})  # val_*: not train

