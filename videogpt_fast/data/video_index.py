"""Scanning a video folder, probing files with PyAV, caching the result on disk, reading clips.

The index holds, for every file of a split folder, its frame presentation timestamps (the role of
torchvision ``VideoClips`` metadata in the original), frame rate and size. It is stored as JSON
(never pickle) and re-used entry by entry: a file whose relative path, size and mtime are unchanged
is not probed again, so re-opening a large dataset only lists and ``stat``s the folder.

Frame timestamps follow torchvision's ``read_video_timestamps`` (the original's path): packet
timestamps when the stream was written by libavcodec (``b"Lavc"`` in the extradata), decoded frame
timestamps otherwise; sorted; no frame-rate resampling (the original passes ``frame_rate=None``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import numpy as np

__all__ = ["VIDEO_EXTS", "VideoEntry", "VideoIndex", "ClipReadError", "list_videos", "probe_video", "read_clip",
           "default_cache_dir"]

logger = logging.getLogger("videogpt_fast.data")

VIDEO_EXTS = ("avi", "mp4", "webm")
INDEX_VERSION = 1
INDEX_NAME = ".videogpt_fast_index.json"


class ClipReadError(RuntimeError):
    """A clip could not be decoded completely."""


@dataclass
class VideoEntry:
    """One file of a split folder: where it is, its stat key and either its timestamps or an error."""

    path: str  # relative to the split folder, '/'-separated
    size: int
    mtime_ns: int
    pts: list[int] = field(default_factory=list)
    fps: float | None = None
    width: int = 0
    height: int = 0
    error: str | None = None

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def to_json(self) -> dict:
        d = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "fps": self.fps,
             "width": self.width, "height": self.height, "error": self.error}
        p = self.pts
        # Constant-frame-rate videos (the common case) are stored as start/step/count.
        if len(p) >= 2 and all(p[i + 1] - p[i] == p[1] - p[0] for i in range(len(p) - 1)):
            d["pts_range"] = [p[0], p[1] - p[0], len(p)]
        else:
            d["pts"] = list(p)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "VideoEntry":
        if "pts_range" in d:
            start, step, n = d["pts_range"]
            pts = [start + i * step for i in range(n)]
        else:
            pts = [int(x) for x in d["pts"]]
        return cls(path=d["path"], size=int(d["size"]), mtime_ns=int(d["mtime_ns"]), pts=pts, fps=d["fps"],
                   width=int(d["width"]), height=int(d["height"]), error=d["error"])


def list_videos(folder: str, exts: tuple[str, ...] = VIDEO_EXTS) -> list[str]:
    """Relative paths of ``*.{ext}`` files under ``folder`` (recursive, sorted).

    Like the original's ``glob(folder/**/*.ext, recursive=True)``: case-sensitive extensions, hidden
    files and folders (leading dot) are not matched.
    """
    suffixes = tuple(f".{e}" for e in exts)
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(suffixes) and not name.startswith("."):
                out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(out)


def probe_video(path: str) -> dict:
    """Frame timestamps, fps and size of the first video stream of ``path`` (raises on failure)."""
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise ClipReadError("no video stream")
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata
        if extradata is not None and b"Lavc" in bytes(extradata):
            pts = [p.pts for p in container.demux(stream) if p.pts is not None]
        else:
            pts = [f.pts for f in container.decode(stream) if f.pts is not None]
        fps = float(stream.average_rate) if stream.average_rate else None
        width, height = stream.codec_context.width, stream.codec_context.height
    if not pts:
        raise ClipReadError("no decodable frames")
    return {"pts": sorted(set(int(p) for p in pts)), "fps": fps, "width": int(width), "height": int(height)}


def _probe_entry(args: tuple[str, str, int, int]) -> VideoEntry:
    folder, rel, size, mtime_ns = args
    entry = VideoEntry(path=rel, size=size, mtime_ns=mtime_ns)
    try:
        info = probe_video(os.path.join(folder, rel))
        entry.pts, entry.fps, entry.width, entry.height = info["pts"], info["fps"], info["width"], info["height"]
    except Exception as e:  # corrupt, truncated, empty, unsupported: recorded, never raised
        entry.error = f"{type(e).__name__}: {e}".strip()
    return entry


def default_cache_dir() -> str:
    """``$VIDEOGPT_FAST_CACHE`` or ``$XDG_CACHE_HOME/videogpt_fast`` (default ``~/.cache/videogpt_fast``)."""
    if os.environ.get("VIDEOGPT_FAST_CACHE"):
        return os.environ["VIDEOGPT_FAST_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "videogpt_fast")


class VideoIndex:
    """The probed files of one split folder, loaded from and saved to a JSON cache.

    Args:
        folder: the split folder (``<data_folder>/train`` or ``/test``).
        cache_dir: where to keep the index. ``None``: ``<folder>/.videogpt_fast_index.json`` when the
            folder is writable, else ``default_cache_dir()/index-<sha1(folder)>.json``. ``False``: no cache.
        num_workers: threads that probe new files (default: one per usable core; 1: no pool).
    """

    def __init__(self, folder: str, cache_dir: str | None | bool = None, num_workers: int | None = None):
        if not os.path.isdir(folder):
            raise ValueError(f"video folder {folder!r} does not exist or is not a directory")
        self.folder = os.path.abspath(folder)
        self.cache_path = self._cache_path(cache_dir)
        cached = self._load_cache()
        todo, entries = [], {}
        for rel in list_videos(self.folder):
            st = os.stat(os.path.join(self.folder, rel))
            old = cached.get(rel)
            if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                entries[rel] = old
            else:
                todo.append((self.folder, rel, st.st_size, st.st_mtime_ns))
        if todo:
            for entry in self._probe_all(todo, num_workers):
                entries[entry.path] = entry
        self.entries: list[VideoEntry] = [entries[k] for k in sorted(entries)]
        probed = {t[1] for t in todo}
        for e in self.entries:
            if e.error is not None and e.path in probed:
                warnings.warn(f"skipping unreadable video {os.path.join(self.folder, e.path)}: {e.error}",
                              RuntimeWarning, stacklevel=3)
        if self.cache_path and (todo or set(cached) != set(entries)):
            self._save_cache()

    # -- cache -------------------------------------------------------------------------------
    def _cache_path(self, cache_dir: str | None | bool) -> str | None:
        if cache_dir is False:
            return None
        if cache_dir is None:
            if os.access(self.folder, os.W_OK):
                return os.path.join(self.folder, INDEX_NAME)
            cache_dir = default_cache_dir()
        key = hashlib.sha1(self.folder.encode()).hexdigest()[:16]
        return os.path.join(str(cache_dir), f"index-{key}.json")

    def _load_cache(self) -> dict[str, VideoEntry]:
        if not self.cache_path or not os.path.exists(self.cache_path):
            return {}
        try:
            with open(self.cache_path, encoding="utf-8") as f:
                d = json.load(f)
            if d.get("version") != INDEX_VERSION or d.get("folder") != self.folder:
                return {}
            return {e["path"]: VideoEntry.from_json(e) for e in d["entries"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable video index %s (%s)", self.cache_path, e)
            return {}

    def _save_cache(self) -> None:
        d = {"version": INDEX_VERSION, "folder": self.folder, "entries": [e.to_json() for e in self.entries]}
        try:
            os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.cache_path), suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(d, f, separators=(",", ":"))
            os.replace(tmp, self.cache_path)  # atomic: concurrent ranks never read half a file
        except OSError as e:
            logger.warning("could not write video index %s (%s)", self.cache_path, e)

    @staticmethod
    def _probe_all(todo: list, num_workers: int | None) -> list[VideoEntry]:
        if num_workers is None:
            num_workers = min(len(todo), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else (os.cpu_count() or 1))
        if num_workers <= 1 or len(todo) < 4:
            return [_probe_entry(t) for t in todo]
        # Threads, not processes: PyAV releases the GIL while demuxing/decoding, and threads need no
        # ``if __name__ == "__main__"`` guard in the calling script.
        logger.info("probing %d videos with %d threads", len(todo), num_workers)
        with ThreadPoolExecutor(num_workers) as ex:
            return list(ex.map(_probe_entry, todo))

    # -- queries -----------------------------------------------------------------------------
    @property
    def readable(self) -> list[VideoEntry]:
        return [e for e in self.entries if e.error is None]

    @property
    def unreadable(self) -> list[VideoEntry]:
        return [e for e in self.entries if e.error is not None]

    def abspath(self, entry: VideoEntry) -> str:
        return os.path.join(self.folder, entry.path)


def read_clip(path: str, pts: list[int]) -> np.ndarray:
    """Decode the frames whose timestamps are ``pts`` (sorted) as a uint8 (T, H, W, 3) RGB array.

    Seeks to the key frame at or before ``pts[0]`` and decodes forward, like torchvision's
    ``read_video(path, pts[0], pts[-1])``; raises ``ClipReadError`` unless exactly those frames came out.
    """
    start, end = pts[0], pts[-1]
    wanted = set(pts)
    frames: dict[int, np.ndarray] = {}
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        for attempt in range(2):
            # Second attempt: the seek overshot (sparse or missing index), decode from the start.
            container.seek(start if attempt == 0 else (stream.start_time or 0), stream=stream,
                           backward=True, any_frame=False)
            overshot = False
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if not frames and frame.pts > start and attempt == 0:
                    overshot = True
                    break
                if frame.pts > end:
                    break
                if frame.pts in wanted:
                    frames[frame.pts] = frame.to_ndarray(format="rgb24")
            if not overshot:
                break
    if len(frames) != len(pts):
        raise ClipReadError(f"decoded {len(frames)} of {len(pts)} frames in pts [{start}, {end}] of {path}")
    return np.stack([frames[p] for p in pts])
