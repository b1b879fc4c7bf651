"""Finding video files and decoding frames with PyAV, in presentation order.

The frame order is the decoder's output order of a straight decode (every frame from the start of
the first video stream): frame ``i`` is the ``i``-th frame the decoder returns. Container and
decoded timestamps are never trusted to order frames: in AVI, for example, H.264 B-frames come back
with timestamps in decode order. ``probe_video`` records, for each frame of a straight decode, its
decoded timestamp and a CRC-32 of its decoded (native pixel format) pixels. ``read_video`` with that
record may seek to a key frame to skip the start; it numbers the frames after the seek by their
timestamps (when the record's are strictly increasing) or from the key frame whose CRC it finds first
(otherwise), and keeps them only when they come consecutively and every kept frame's CRC matches the
record; any failed check means decoding from the start. So a clip always equals consecutive frames of
a straight decode, in any container (MP4, MKV, MOV, AVI, WebM, GIF) and codec, with or without
B-frames, open or closed GOPs.

``import av`` happens inside the functions (the GPU machines may lack PyAV).
"""
from __future__ import annotations

import logging
import os
import zlib
from typing import Iterable, Sequence

import numpy as np

__all__ = ["VIDEO_EXTS", "ClipReadError", "list_videos", "video_files", "probe_video", "read_video",
           "frame_digest"]

logger = logging.getLogger("videogpt_fast.data")

#: extensions of the video files that are listed (matched case-insensitively)
VIDEO_EXTS = (".avi", ".gif", ".mkv", ".mov", ".mp4", ".webm")


class ClipReadError(ValueError):
    """A video file, or some of its frames, could not be decoded (the message names the file;
    ``reason`` is the message without it)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _why(e: Exception) -> str:
    """An FFmpeg error's text without the file name PyAV appends."""
    return getattr(e, "strerror", None) or str(e)


def _is_video(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTS)


def list_videos(folder: str) -> list[str]:
    """Relative ``/``-separated paths of the video files under ``folder`` (recursive, sorted).

    A video file has one of ``VIDEO_EXTS`` (any case). Hidden files and folders (leading dot) are
    not listed; symbolic links to folders are followed.
    """
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files if _is_video(f)]
    return sorted(out)


def video_files(paths: Sequence[str] | str) -> list[str]:
    """Video files among ``paths``: files as given (any extension), folders by ``list_videos``; a file
    named twice (directly and through its folder, or in overlapping folders) is listed once, first place kept.

    Raises ``FileNotFoundError`` naming a path that is neither a file nor a folder.
    """
    out: list[str] = []
    for p in [paths] if isinstance(paths, str) else paths:
        if os.path.isdir(p):
            out += [os.path.join(p, rel) for rel in list_videos(p)]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p!r} is neither a video file nor a folder")
    seen: set[str] = set()
    return [f for f in out if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]


def frame_digest(frame) -> int:
    """CRC-32 of a decoded ``av.VideoFrame``'s pixels in its native format (RGB when PyAV cannot
    export that format); equal for equal decoded frames, so it tells whether two decodes agree."""
    try:
        arr = frame.to_ndarray()
    except Exception:  # formats or sizes PyAV cannot export as they are (e.g. odd-width yuv420p)
        arr = frame.to_ndarray(format="rgb24")
    if isinstance(arr, tuple):  # palette formats: (indices, palette)
        crc = 0
        for a in arr:
            crc = zlib.crc32(np.ascontiguousarray(a), crc)
        return crc
    return zlib.crc32(np.ascontiguousarray(arr))


def _open(path: str):
    import av
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipReadError(f"cannot open {path}: {_why(e)}", f"cannot open: {_why(e)}") from e


def probe_video(path: str) -> dict:
    """Decode every frame of the first video stream of ``path`` once.

    Returns ``dict(pts=[int | None] * T, digests=uint32 (T,), keyframes=[frame indices], fps, width,
    height)``: per frame of the straight decode (frame order = decoder output order), its decoded
    timestamp (``frame.pts``, in the stream's time base; may be out of order or ``None``) and the
    ``frame_digest``. Raises ``ClipReadError`` (file, reason) when the file cannot be opened, has no
    video stream or no frames, or decoding fails part-way.
    """
    import av
    pts: list[int | None] = []
    digests: list[int] = []
    keyframes: list[int] = []
    with _open(path) as container:
        if not container.streams.video:
            raise ClipReadError(f"{path} has no video stream", "no video stream")
        stream = container.streams.video[0]
        width = height = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i == 0:
                    width, height = frame.width, frame.height
                pts.append(None if frame.pts is None else int(frame.pts))
                digests.append(frame_digest(frame))
                if frame.key_frame:
                    keyframes.append(i)
        except av.FFmpegError as e:
            why = f"decoding failed after {len(pts)} frames: {_why(e)}"
            raise ClipReadError(f"{path}: {why}", why) from e
        fps = float(stream.average_rate) if stream.average_rate else None
    if not pts:
        raise ClipReadError(f"{path} has no decodable video frames", "no decodable video frames")
    return {"pts": pts, "digests": np.asarray(digests, np.uint32), "keyframes": keyframes, "fps": fps,
            "width": int(width), "height": int(height)}


def timestamps_ordered(pts: Sequence[int | None]) -> bool:
    """Whether decoded timestamps identify frames: none missing, strictly increasing in output order."""
    return all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:]))


def read_video(path: str, max_frames: int | None = None, start: int = 0, *, pts: Sequence[int | None] | None = None,
               digests: np.ndarray | None = None, keyframes: Sequence[int] = ()) -> np.ndarray:
    """Frames ``start .. start + max_frames - 1`` of a straight decode of ``path``, uint8 (T, H, W, 3) RGB.

    Without ``pts``/``digests`` (a file not probed) the file is decoded from the start. With the
    ``probe_video`` record of the file, frames before ``start`` may be skipped by seeking to a key
    frame, checked as the module docstring says; a check that fails falls back to decoding from the
    start. Returns fewer frames when the video ends first (``max_frames=None``: to the end).

    Raises ``FileNotFoundError`` for a missing file, ``ClipReadError`` (a ``ValueError`` naming the
    file) when it cannot be decoded, when no frame is at or after
    ``start``, or when a frame differs from the recorded digest (the file changed since it was probed).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path!r} does not exist")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames <= 0):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    stop = None if max_frames is None else start + max_frames
    if pts is not None and digests is not None:
        stop = len(pts) if stop is None else min(stop, len(pts))
        if start > 0:
            frames = _read_by_seeking(path, start, stop, pts, digests, keyframes)
            if frames is not None:
                return frames
    frames = _read_from_start(path, start, stop, digests)
    if not frames:
        raise ClipReadError(f"{path} has no decodable video frame at or after frame {start}")
    return np.stack(frames)


def _read_from_start(path: str, start: int, stop: int | None, digests: np.ndarray | None) -> list[np.ndarray]:
    import av
    frames = []
    with _open(path) as container:
        if not container.streams.video:
            raise ClipReadError(f"{path} has no video stream")
        try:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if stop is not None and i >= stop:
                    break
                if i < start:
                    continue
                if digests is not None and (i >= len(digests) or frame_digest(frame) != int(digests[i])):
                    raise ClipReadError(f"frame {i} of {path} differs from when the file was indexed (was the "
                                        "file changed? it is indexed again when its size or mtime changes)")
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as e:
            raise ClipReadError(f"decoding {path} failed at frame {start + len(frames)}: {_why(e)}") from e
    return frames


def _read_by_seeking(path: str, start: int, stop: int, pts: Sequence[int | None], digests: np.ndarray,
                     keyframes: Iterable[int]) -> np.ndarray | None:
    """Frames ``start .. stop - 1`` after a seek, or ``None`` when a check fails (see the module docstring).

    Ordered timestamps: seek to ``pts[start]`` (the demuxer goes back to a key frame) and number the
    decoded frames by their timestamps. Out-of-order timestamps: seek to a key frame ``k <= start``
    and number the decoded frames ``k, k + 1, ...`` once the first one's CRC is that of frame ``k``.
    Either way, frames must come consecutively and every kept frame's CRC must match the record.
    When the seek lands after ``start``, up to two earlier key frames are tried.
    """
    import av
    ordered = timestamps_ordered(pts)
    pts_arr = np.asarray(pts if ordered else [-1 if p is None else p for p in pts], dtype=np.int64)
    earlier = [k for k in sorted(keyframes, reverse=True) if 0 < k <= start and pts[k] is not None][:3]
    targets = ([start] + [k for k in earlier if k < start][:2]) if ordered else earlier
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            for target in targets:
                container.seek(int(pts_arr[target]), stream=stream, backward=True, any_frame=False)
                frames, i = [], None
                for frame in container.decode(stream):
                    if i is None:  # the first frame after the seek: which one is it?
                        if ordered:
                            i = int(np.searchsorted(pts_arr, frame.pts)) if frame.pts is not None else len(pts_arr)
                            if i >= len(pts_arr) or pts_arr[i] != frame.pts:
                                return None
                        elif frame_digest(frame) == int(digests[target]):
                            i = target
                        else:
                            break  # not the key frame aimed at: try an earlier one
                        if i > start:
                            break  # landed after start: try an earlier key frame
                    else:
                        i += 1
                        if i >= len(pts_arr) or (ordered and frame.pts != pts_arr[i]):
                            return None  # timestamps after the seek do not follow the straight decode
                    if i >= start:
                        if frame_digest(frame) != int(digests[i]):
                            return None
                        frames.append(frame.to_ndarray(format="rgb24"))
                        if i + 1 >= stop:
                            return np.stack(frames)
                else:
                    return None  # the stream ended early
    except (av.FFmpegError, ClipReadError, IndexError) as e:
        logger.debug("seeking in %s failed (%s); decoding from the start", path, e)
    return None
