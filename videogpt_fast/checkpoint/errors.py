"""The checkpoint errors: one exception family, each with a one-line message naming the file."""
from __future__ import annotations

import pickle
import re

__all__ = ["CheckpointError", "UnsafeCheckpointError", "CorruptCheckpointError", "CheckpointMismatchError",
           "CheckpointWriteError", "short_reason"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and why (one line). Base of
    :class:`UnsafeCheckpointError`, :class:`CorruptCheckpointError` and :class:`CheckpointMismatchError`;
    a checkpoint of the wrong kind (a prior given as a VQ-VAE) raises it directly."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint holds objects outside the allow-list; it was not loaded."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, corrupt or not a PyTorch checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's hyper-parameters (``args``) do not describe its own weights (keys or shapes),
    or the model they describe cannot be built."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or another output file) failed, e.g. a full disk; the message names the
    path, and no partial file was left behind. ``errno`` is the underlying error's."""


def short_reason(e: BaseException) -> str:
    """The first sentence of an error message (torch appends advice after it), on one line."""
    text = " ".join(str(e).split())
    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0] if text else ""
    return text.rstrip(".:") or type(e).__name__
