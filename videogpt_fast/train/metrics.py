"""What a training run reports: run-start messages (printed on rank 0 and logged once), the
metrics log ``metrics.jsonl`` (and TensorBoard when installed), and reading that log back."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.utils.data as data

from ..checkpoint import atomic_write

log = logging.getLogger("videogpt_fast.train")
PRINTED = "videogpt_fast_printed"  # log-record attribute: the message was also printed (see announce)


def setup_logging(rank: int) -> None:
    """INFO logging on rank 0 (WARNING on the others) when the application configured none; its
    handlers skip the messages :func:`announce` already printed."""
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for h in root.handlers:
        if h not in before:  # messages announce printed are not logged a second time
            h.addFilter(lambda record: not getattr(record, PRINTED, False))


def announce(msg: str, level: int = logging.INFO, is_main: bool = True) -> None:
    """A run-start message: logged, and printed on rank 0 so that it shows without logging set up."""
    if is_main:
        log.log(level, msg, extra={PRINTED: True})
        print(f"[videogpt_fast] {msg}", flush=True)


def report_skipped(*datasets: Optional[data.Dataset], is_main: bool = True) -> None:
    """Say how many video files indexing skipped as unreadable (they are only warned about there)."""
    for ds in datasets:
        files = getattr(ds, "skipped_files", None)
        if not files:
            continue
        shown = "; ".join(f"{p} ({err})" for p, err in files[:3]) + ("; ..." if len(files) > 3 else "")
        split = "train" if getattr(ds, "train", True) else "test"
        announce(f"skipped {len(files)} unreadable video file(s) of {split}/: {shown}", logging.WARNING, is_main)


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
