"""Indexing the video files of a folder once (``probe_video``) and caching the index on disk.

The index holds, for every file of a split folder, the decoded timestamp and pixel CRC of each frame
of a straight decode (see ``video_reader``), its frame rate and size, or why it could not be read.
It is stored as JSON (never pickle) in a cache folder outside the data, ``$VIDEOGPT_FAST_HOME/
video_index/`` (default ``~/.cache/videogpt_fast/video_index/``), one file per split folder named by
a hash of the folder's absolute path, and re-used entry by entry: a file whose relative path, size and
mtime are unchanged is not decoded again, so re-opening a large dataset only lists and ``stat``s it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..utils import cpu_count
from .video_reader import VIDEO_EXTS, ClipReadError, list_videos, probe_video, read_video, timestamps_ordered

__all__ = ["VIDEO_EXTS", "VideoEntry", "VideoIndex", "ClipReadError", "list_videos", "probe_video",
           "default_cache_dir"]

logger = logging.getLogger("videogpt_fast.data")

INDEX_VERSION = 2
#: name of the in-folder index file that versions before 2 wrote (now only reported, never read)
INDEX_NAME = ".videogpt_fast_index.json"


@dataclass
class VideoEntry:
    """One file of a split folder: where it is, its stat key and either its frame record or an error.

    ``pts[i]``/``digests[i]``: decoded timestamp / pixel CRC-32 of frame ``i`` of a straight decode
    (see ``video_reader.probe_video``); ``keyframes``: indices of key frames.
    """

    path: str  # relative to the split folder, '/'-separated
    size: int
    mtime_ns: int
    pts: list = field(default_factory=list)
    digests: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    keyframes: list = field(default_factory=list)
    fps: float | None = None
    width: int = 0
    height: int = 0
    error: str | None = None

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def ordered_timestamps(self) -> bool:
        """Whether the decoded timestamps identify frames (see ``video_reader.timestamps_ordered``)."""
        return timestamps_ordered(self.pts)

    def to_json(self) -> dict:
        d = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "fps": self.fps,
             "width": self.width, "height": self.height, "error": self.error, "keyframes": list(self.keyframes),
             "digests": base64.b64encode(np.asarray(self.digests, "<u4").tobytes()).decode("ascii")}
        p = self.pts
        # Constant-frame-rate videos (the common case) are stored as start/step/count.
        if len(p) >= 2 and self.ordered_timestamps and all(p[i + 1] - p[i] == p[1] - p[0] for i in range(len(p) - 1)):
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
            pts = [None if x is None else int(x) for x in d["pts"]]
        digests = np.frombuffer(base64.b64decode(d["digests"]), "<u4").astype(np.uint32)
        if len(digests) != len(pts):
            raise ValueError(f"entry {d['path']!r}: {len(digests)} digests for {len(pts)} frames")
        return cls(path=d["path"], size=int(d["size"]), mtime_ns=int(d["mtime_ns"]), pts=pts, digests=digests,
                   keyframes=[int(k) for k in d["keyframes"]], fps=d["fps"], width=int(d["width"]),
                   height=int(d["height"]), error=d["error"])


def _probe_entry(args: tuple[str, str, int, int]) -> VideoEntry:
    folder, rel, size, mtime_ns = args
    entry = VideoEntry(path=rel, size=size, mtime_ns=mtime_ns)
    try:
        info = probe_video(os.path.join(folder, rel))
        for k in ("pts", "digests", "keyframes", "fps", "width", "height"):
            setattr(entry, k, info[k])
    except ClipReadError as e:  # corrupt, truncated, empty, no video: recorded, never raised
        entry.error = e.reason
    except Exception as e:  # anything else PyAV raises on a bad file
        entry.error = f"{type(e).__name__}: {e}".strip()
    return entry


def default_cache_dir() -> str:
    """``$VIDEOGPT_FAST_HOME`` (default ``~/.cache/videogpt_fast``), where pretrained files live too."""
    return os.path.expanduser(os.environ.get("VIDEOGPT_FAST_HOME") or "~/.cache/videogpt_fast")


class VideoIndex:
    """The indexed files of one split folder, loaded from and saved to a JSON cache.

    Args:
        folder: the split folder (``<data_folder>/train`` or ``/test``).
        cache_dir: folder of the index cache. ``None``: ``default_cache_dir()``; ``False``: no cache.
            The index of ``folder`` is ``<cache_dir>/video_index/<sha1(abspath(folder))[:16]>.json``
            (``cache_path``); where it is gets logged (logger ``videogpt_fast.data``, INFO).
        num_workers: threads that decode new files (default: one per usable core; 1: no pool).

    Raises ``ValueError`` when ``folder`` is not a directory. Unreadable files are recorded (``unreadable``)
    and warned about (``RuntimeWarning``) when first indexed, never raised.
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
        if os.path.exists(os.path.join(self.folder, INDEX_NAME)):
            logger.info("%s was written by an older videogpt_fast and is no longer used (delete it freely)",
                        os.path.join(self.folder, INDEX_NAME))
        unordered = sum(1 for e in self.readable if not e.ordered_timestamps)
        logger.info("video index of %s: %d files (%d decoded now, %d unreadable), cache %s%s", self.folder,
                    len(self.entries), len(todo), len(self.unreadable), self.cache_path or "disabled",
                    f"; {unordered} file(s) have decoded timestamps out of presentation order (e.g. AVI with "
                    "B-frames): their frames are numbered by decoding order from key frames" if unordered else "")

    # -- cache -------------------------------------------------------------------------------
    def _cache_path(self, cache_dir: str | None | bool) -> str | None:
        if cache_dir is False:
            return None
        if cache_dir is None or cache_dir is True:
            cache_dir = default_cache_dir()
        key = hashlib.sha1(self.folder.encode()).hexdigest()[:16]
        return os.path.join(str(cache_dir), "video_index", f"{key}.json")

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
            logger.warning("ignoring unreadable video index %s (%s); indexing again", self.cache_path, e)
            return {}

    def _save_cache(self) -> None:
        d = {"version": INDEX_VERSION, "folder": self.folder, "entries": [e.to_json() for e in self.entries]}
        tmp = None
        try:
            os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.cache_path), suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(d, f, separators=(",", ":"))
            os.replace(tmp, self.cache_path)  # atomic: concurrent ranks never read half a file
        except OSError as e:
            logger.warning("could not write the video index %s (%s): the folder is indexed again next time "
                           "(set $VIDEOGPT_FAST_HOME to a writable folder)", self.cache_path, e)
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _probe_all(todo: list, num_workers: int | None) -> list[VideoEntry]:
        if num_workers is None:
            num_workers = min(len(todo), cpu_count())
        logger.info("indexing %d video file(s) (decoding each once)", len(todo))
        if num_workers <= 1 or len(todo) < 4:
            return [_probe_entry(t) for t in todo]
        # Threads, not processes: PyAV releases the GIL while demuxing/decoding, and threads need no
        # ``if __name__ == "__main__"`` guard in the calling script.
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

    def read(self, entry: VideoEntry, start: int, num_frames: int) -> np.ndarray:
        """Frames ``start .. start + num_frames - 1`` of ``entry`` as uint8 (T, H, W, 3) (see ``read_video``).

        Raises ``ClipReadError`` naming the file when it changed since it was indexed (size or mtime)
        or fewer frames than asked could be decoded.
        """
        path = self.abspath(entry)
        try:
            st = os.stat(path)
        except OSError as e:
            raise ClipReadError(f"{path} was indexed but cannot be read now ({e})") from e
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            raise ClipReadError(f"{path} changed since it was indexed (size or mtime); open the dataset again "
                                "to re-index it")
        frames = read_video(path, num_frames, start, pts=entry.pts, digests=entry.digests, keyframes=entry.keyframes)
        if len(frames) != num_frames:
            raise ClipReadError(f"decoded {len(frames)} of {num_frames} frames from frame {start} of {path}")
        return frames
