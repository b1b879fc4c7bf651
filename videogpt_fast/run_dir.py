"""The training output folder (``--output``): its lock, its periodic checkpoints, leftovers of a
killed save.

* :class:`OutputLock` -- ``fcntl.flock`` on ``OUTPUT/.videogpt_fast.lock`` (the file names the holder's
  pid, host and start time), so two trainings never write into one folder together. The kernel
  drops the lock when the process dies, so a killed run never leaves a stale lock behind.
* :func:`check_fresh_output` -- a new run (no ``--resume``) only starts in an empty or new folder.
* :func:`remove_stale_temporaries` -- temporary files a killed save left (see
  :func:`videogpt_fast.checkpoint.atomic_write`).
* :func:`periodic_checkpoints` -- the ``epoch=E-step=S.ckpt`` files on disk, oldest step first (the
  keep list of ``--keep_checkpoints`` after a resume).
"""
from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import List, Optional

from .checkpoint.writing import is_temporary

log = logging.getLogger(__name__)

LOCK_NAME = ".videogpt_fast.lock"
_PERIODIC = re.compile(r"epoch=(\d+)-step=(\d+)\.ckpt")


class OutputLockedError(ValueError):
    """Another process holds the lock of this output folder."""


class OutputLock:
    """Exclusive lock of a training output folder (created when missing).

    :meth:`acquire` raises :class:`OutputLockedError` naming the holder (pid, host, start time) when
    another process holds it. On a filesystem without ``flock`` (some network filesystems) the run
    goes on unlocked, with a warning. Usable as a context manager.
    """

    def __init__(self, folder: os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file = None

    def acquire(self) -> "OutputLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--output {self.folder} is a file, not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent is a file, no permission, ...
            raise ValueError(f"--output {self.folder}: cannot create the folder ({e.strerror or e})") from None
        try:
            import fcntl
        except ImportError:  # not POSIX
            log.warning("cannot lock --output %s: no fcntl on this platform; make sure no other training "
                        "writes there", self.folder)
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLockedError(
                    f"--output {self.folder} is in use by another training ({self.holder() or 'holder unknown'}; "
                    f"lock file {self.path}): wait for it to finish or choose another --output") from None
            log.warning("cannot lock --output %s (%s): this filesystem has no flock; running without the lock, "
                        "so make sure no other training writes there", self.folder, os.strerror(e.errno or 0))
            return self
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
        f.flush()
        self._file = f
        return self

    def holder(self) -> Optional[str]:
        """``pid P on host H since T`` from the lock file, or None when it is empty or unreadable."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on host {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with a process opening it)."""
        if self._file is None:
            return
        import fcntl
        f, self._file = self._file, None
        try:
            f.truncate(0)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        finally:
            f.close()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_fresh_output(folder: os.PathLike,
                       advice: str = "pass --resume auto to continue the run there, or choose a new or empty "
                                     "--output") -> None:
    """Raise ValueError when ``folder`` holds anything but its lock file: a new run (no ``--resume``)
    would mix its checkpoints and metrics with an earlier run's. ``advice`` ends the message."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--output {folder} is a file, not a folder")
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"--output {folder} is not empty ({shown}): {advice}")


def remove_stale_temporaries(folder: os.PathLike) -> List[Path]:
    """Delete the temporary files a killed save left in ``folder``; returns them."""
    folder = Path(folder)
    stale = sorted(p for p in folder.iterdir() if p.is_file() and is_temporary(p.name)) if folder.is_dir() else []
    for p in stale:
        p.unlink()
    return stale


def periodic_checkpoints(folder: os.PathLike) -> List[Path]:
    """The ``epoch=E-step=S.ckpt`` files in ``folder``, by step (oldest first)."""
    folder = Path(folder)
    found = [(int(m.group(2)), p) for p in folder.glob("epoch=*-step=*.ckpt") if (m := _PERIODIC.fullmatch(p.name))]
    return [p for _, p in sorted(found)]
