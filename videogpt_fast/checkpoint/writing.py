"""Atomic writes: a crash or a full disk never leaves a partial checkpoint (or other output file).

``atomic_write`` writes through a temporary file in the same folder that is fsynced and renamed;
``atomic_save`` is ``torch.save`` through it; ``link_or_copy`` puts a hard link (or a copy) in place
atomically. Failures are a :class:`CheckpointWriteError` naming the path.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Union

import torch

from .errors import CheckpointWriteError, short_reason

__all__ = ["atomic_write", "atomic_save", "link_or_copy", "is_temporary"]

PathLike = Union[str, os.PathLike]


def _write_error(path: Path, e: BaseException) -> CheckpointWriteError:
    code = getattr(e, "errno", None) or errno.EIO
    reason = os.strerror(code) if getattr(e, "errno", None) else short_reason(e)
    hint = "; free some space or choose another folder" if code == errno.ENOSPC else ""
    return CheckpointWriteError(code, f"could not write {path}: {reason}{hint} (nothing was written; an "
                                      f"existing file of that name is unchanged)")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` / :func:`link_or_copy` (left by a
    process killed while writing)."""
    return bool(re.fullmatch(r"\..+\.tmp(\.[A-Za-z0-9]+)?", name))


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` for a temporary file ``tmp`` in ``path``'s folder (``.STEM.*.tmp.EXT``: the
    extension still picks the format), fsync it, then rename it over ``path``: a crash or a full disk
    never leaves a partial ``path``, and the temporary file is removed on any error.

    Raises:
        CheckpointWriteError: writing failed with an ``OSError`` (a full disk, no permission); the
            message names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise (e if isinstance(e, CheckpointWriteError) else _write_error(path, e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class _WriteRecorder:
    """File wrapper that remembers the first ``OSError`` a write raised: ``torch.save`` turns it into
    an unrelated ``inline_container`` RuntimeError, which :func:`atomic_save` replaces with it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`: a crash never leaves a half-written checkpoint,
    and a failed write (a full disk) raises :class:`CheckpointWriteError` naming ``path``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            recorder = _WriteRecorder(f)
            try:
                torch.save(obj, recorder)
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise
    return atomic_write(path, write)


def link_or_copy(src: PathLike, dst: PathLike) -> str:
    """Make ``dst`` the same file as ``src`` without a second copy on disk: a hard link, put in place
    atomically by :func:`atomic_write`. Where the filesystem has no hard links it falls back to an
    (atomic) copy. Returns ``"hard link"`` or ``"copy"``; raises :class:`CheckpointWriteError`."""
    how: List[str] = []

    def put(tmp: str) -> None:
        os.unlink(tmp)  # os.link needs a free name
        try:
            os.link(src, tmp)
            how.append("hard link")
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                               errno.ENOSYS, errno.EACCES):
                raise
            shutil.copyfile(src, tmp)
            how.append("copy")

    atomic_write(dst, put)
    return how[0]
