"""``videogpt-fast train`` / ``python -m videogpt_fast.train``: parse the flags, lock the output
folder, train, and turn bad input into a one-line error (exit status 2)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch.distributed as dist

from ..backends import BackendUnavailableError
from ..model_size import report_out_of_memory
from ..run_dir import OutputLock, check_fresh_output
from .args import parse_args
from .distributed import env_world
from .metrics import setup_logging
from .trainer import Trainer, TrainingDivergedError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m videogpt_fast.train {vqvae,gpt} [flags]``; returns the exit status (2: a clear
    one-line error on stderr)."""
    args = parse_args(argv)
    rank = env_world()[0]
    setup_logging(rank)
    lock = OutputLock(args.output)
    try:
        if rank == 0:
            lock.acquire()  # before anything is written there; dropped when the run ends or dies
        if not args.resume:
            check_fresh_output(args.output)
        Trainer(args).fit()
    # CheckpointError is a ValueError, CheckpointWriteError an OSError; BackendUnavailableError (a
    # RuntimeError) is a backend set in VIDEOGPT_FAST_BACKEND that cannot run here
    except (ValueError, OSError, BackendUnavailableError) as e:
        print(f"videogpt-fast train {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        print(f"videogpt-fast train {args.stage}: error: {e}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        return report_out_of_memory(e, f"videogpt-fast train {args.stage}")
    finally:
        lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
