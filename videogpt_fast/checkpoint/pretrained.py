"""The original's pretrained files by name, resolved in a local cache and never downloaded.

Names resolve in ``$VIDEOGPT_FAST_HOME`` (default ``~/.cache/videogpt_fast``), then the original's
``~/.cache/videogpt``; a missing file is a FileNotFoundError naming where to put it and a ``gdown``
command that fetches it from the original release's Google Drive id.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Union

__all__ = ["PRETRAINED_VQVAE", "PRETRAINED_VIDEOGPT", "PRETRAINED_I3D", "cache_dirs", "download",
           "resolve_pretrained", "resolve_name_or_path"]

PathLike = Union[str, os.PathLike]

#: The original's pretrained VQ-VAEs: name -> (Google Drive id, what it was trained on).
PRETRAINED_VQVAE: Dict[str, tuple] = {
    "bair_stride4x2x2": ("1iIAYJ2Qqrx5Q94s5eIXQYJgAydzvT_8L", "BAIR, 16 frames of 64x64"),
    "ucf101_stride4x4x4": ("1uuB_8WzHP_bbBmfuaIV7PK_Itl3DyHY5", "UCF-101, 16 frames of 128x128"),
    "kinetics_stride4x4x4": ("1DOvOZnFAIQmux6hG7pN_HkyJZy3lXbCB", "Kinetics-600, 16 frames of 128x128"),
    "kinetics_stride2x4x4": ("1jvtjjtrtE4cy6pl7DK_zWFEPY3RZt2pB", "Kinetics-600, 16 frames of 128x128"),
}
#: The original's pretrained priors.
PRETRAINED_VIDEOGPT: Dict[str, tuple] = {
    "bair_gpt": ("1fNTtJAgO6grEtPNrufkpbee1CfGztW-1", "BAIR, 1-frame conditional, 16 frames of 64x64"),
    "ucf101_uncond_gpt": ("1QkF_Sb2XVRgSbFT_SxQ6aZUeDFoliPQq", "UCF-101, unconditional, 16 frames of 128x128"),
}
#: The I3D network used for FVD.
PRETRAINED_I3D: Dict[str, tuple] = {
    "i3d_pretrained_400.pt": ("1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT", "I3D (Kinetics-400) for FVD"),
}


def cache_dirs() -> List[Path]:
    """Folders searched for pretrained files, in order."""
    home = os.environ.get("VIDEOGPT_FAST_HOME")
    dirs = [Path(home).expanduser() if home else Path("~/.cache/videogpt_fast").expanduser(),
            Path("~/.cache/videogpt").expanduser()]
    return list(dict.fromkeys(dirs))


_DRIVE_URL = "https://drive.google.com/uc?id="  # gdown >= 5 dropped --id; a URL works with every version


def _search_dirs(root: Optional[PathLike]) -> List[Path]:
    """``[root]`` when given, else :func:`cache_dirs`."""
    return [Path(root).expanduser()] if root is not None else cache_dirs()


def _not_cached(kind: str, fname: str, drive_id: str, dirs: List[Path], what: str = "") -> FileNotFoundError:
    target = dirs[0] / fname
    return FileNotFoundError(
        f"{kind} {fname!r}{f' ({what})' if what else ''} is not in the local cache; videogpt_fast never downloads. "
        f"Put the original's file at {target} (searched: {', '.join(str(d) for d in dirs)}); "
        f"it is the original release's Google Drive file id {drive_id}, e.g. "
        f"`mkdir -p {shlex.quote(str(dirs[0]))} && gdown {shlex.quote(_DRIVE_URL + drive_id)} "
        f"-O {shlex.quote(str(target))}`.")


def download(id: str, fname: str, root: Optional[PathLike] = None) -> str:
    """The original ``videogpt.download.download(id, fname, root)``, without the download.

    Returns the path (str) of ``root/fname`` when that file exists. ``root=None`` (the original's
    default is ``~/.cache/videogpt``) searches :func:`cache_dirs`: ``$VIDEOGPT_FAST_HOME`` (default
    ``~/.cache/videogpt_fast``), then ``~/.cache/videogpt``. ``id`` is the Google Drive file id.
    Raises FileNotFoundError naming the file, where to put it and a ``gdown`` command that fetches it.
    """
    dirs = _search_dirs(root)
    for folder in dirs:
        if (folder / fname).is_file():
            return str(folder / fname)
    raise _not_cached("file", fname, id, dirs)


def resolve_pretrained(name: str, table: Dict[str, tuple], root: Optional[PathLike] = None) -> Path:
    """Path of the cached file for pretrained ``name`` (saved as ``name`` or ``name.ckpt``) in
    ``root``, or in :func:`cache_dirs` when ``root`` is None. Raises FileNotFoundError as
    :func:`download` does."""
    dirs = _search_dirs(root)
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.ckpt"):
            if candidate.is_file():
                return candidate
    drive_id, what = table[name]
    raise _not_cached("pretrained file", name, drive_id, dirs, what)


def resolve_name_or_path(name_or_path: PathLike, table: Dict[str, tuple], root: Optional[PathLike] = None) -> Path:
    """``name_or_path`` as a file: a pretrained name of ``table`` (unless a file of that name exists)
    through :func:`resolve_pretrained`, else an existing file. FileNotFoundError otherwise."""
    if isinstance(name_or_path, str) and name_or_path in table and not os.path.exists(name_or_path):
        return resolve_pretrained(name_or_path, table, root)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(table))
        raise FileNotFoundError(f"{name_or_path!s} is neither an existing checkpoint file nor a "
                                f"pretrained name ({names})")
    return path
