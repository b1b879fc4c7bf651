"""``safe_load``: ``torch.load`` restricted to what original (Lightning 1.x) checkpoints hold.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with an explicit
allow-list of what Lightning 1.x checkpoints of VideoGPT really hold (``argparse.Namespace`` and
Lightning's callback classes, which only appear as dictionary keys and are mapped to inert
stand-ins). Anything else is refused with :class:`UnsafeCheckpointError`; damaged files are a
:class:`CorruptCheckpointError`.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, List, Union

import torch

from .errors import CorruptCheckpointError, UnsafeCheckpointError, short_reason

__all__ = ["safe_load"]

PathLike = Union[str, os.PathLike]


class _LightningStandIn:
    """Inert stand-in for a Lightning class referenced by a checkpoint (as a dictionary key of
    ``callbacks``); it has no behaviour and is never called with data."""


class _AttributeDict(dict):
    """Stand-in for ``pytorch_lightning.utilities.parsing.AttributeDict`` (a plain dict)."""


_LIGHTNING_CLASSES = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.progress.ProgressBar",
]


def _allowed_globals() -> List[Any]:
    allowed: List[Any] = [argparse.Namespace]
    allowed += [(type(name.rsplit(".", 1)[1], (_LightningStandIn,), {}), name) for name in _LIGHTNING_CLASSES]
    allowed.append((_AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"))
    return allowed


_ALLOWED_NAMES = {"argparse.Namespace", *_LIGHTNING_CLASSES, "pytorch_lightning.utilities.parsing.AttributeDict"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def _referenced_globals(message: str) -> List[str]:
    """Global names (``module.name``) a refused ``weights_only`` load reports; garbage names (a
    truncated pickle stops mid-name) are left out."""
    names = [n.rstrip(".") for n in re.findall(r"GLOBAL (\S+)", message)]
    return list(dict.fromkeys(n for n in names if re.fullmatch(rf"{_IDENT}(\.{_IDENT})+", n)))


def _unpickler_reason(e: BaseException) -> str:
    """What torch's weights-only unpickler stumbled on (e.g. 'Unsupported operand 24')."""
    m = re.search(r"WeightsUnpickler error:\s*(.+)", str(e), flags=re.S)
    lines = [l.strip() for l in (m.group(1) if m else "").splitlines() if l.strip()]
    reason = lines[0] if lines else short_reason(e)
    return re.split(r"\s(?:Please|Check|Re-running|You can)\b", reason)[0].rstrip(". ")


def _check_zip_crcs(path: Path) -> None:
    """CorruptCheckpointError when ``path`` is a zip checkpoint one of whose members fails its CRC-32
    (``torch.load`` does not check them, so a flipped byte would load as silently different weights).
    Legacy (non-zip) files and zips too damaged to list are left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its member {bad} fails its CRC-32 check "
                                     "(the file was damaged after it was written)")


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors, containers and the allow-list above.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the file references a global outside the allow-list (named in the
            message); nothing of it was executed.
        CorruptCheckpointError: the file is empty, truncated, corrupt or not a PyTorch checkpoint.
    Both are :class:`CheckpointError` (a ``ValueError``) with a one-line message naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes): not a PyTorch checkpoint")
    _check_zip_crcs(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            # a plain pickle (not a checkpoint) makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [g for g in _referenced_globals(str(e)) if g not in _ALLOWED_NAMES]
        if not refused:
            try:
                refused = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                           if g not in _ALLOWED_NAMES]
            except Exception:  # not a zip checkpoint (legacy format) or unreadable: nothing more to name
                refused = []
        if refused:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it references {', '.join(refused)}, outside videogpt_fast's "
                f"allow-list of checkpoint contents (tensors, containers, argparse.Namespace, Lightning's "
                f"callback keys); unpickling it could execute code, so it was not loaded") from None
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint (its pickle data cannot be read: "
            f"{_unpickler_reason(e)})") from None
    except (PermissionError, IsADirectoryError):
        raise
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, TypeError, AttributeError, OSError,
            UnicodeDecodeError, MemoryError, OverflowError, zipfile.BadZipFile) as e:  # OSError: EINVAL on a cut zip
        what = ("ends early (truncated)" if isinstance(e, EOFError) else "holds unreadable pickle data"
                if isinstance(e, KeyError) else f"cannot be read ({short_reason(e)})")
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint: it {what}") from None
