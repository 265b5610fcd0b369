"""Reading video files with PyAV (FFmpeg bundled in its wheels; no system FFmpeg needed).

:class:`VideoReader` opens a file (mp4, avi, mkv, webm, or anything else the bundled FFmpeg
demuxes), checks it, and decodes its first video stream into RGB ``uint8`` frames (H x W x 3).
Every problem a user can fix is a one-line :class:`PrivatenetError` that names the file: a
missing file, a folder, an empty file, a file FFmpeg cannot read (random bytes, a text file, an
mp4 cut before its index), a file without a video stream, a still image, a file without a single
decodable frame, and, after the last frame, a file that is truncated: a decode error part-way, or
fewer frames (or a shorter stream) than the container announces. The first frame is decoded when
the reader is opened, so a caller can check its input before writing anything.

Frame times are in seconds from the first frame (its presentation time stamp minus the first
one's; ``index / fps`` where a frame has no time stamp). Display rotation metadata (phone
videos) is not applied.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privatenet.errors import PrivatenetError, SettingError
from privatenet.video._deps import require

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FPS", "Frame", "VideoInfo", "VideoReader", "check_every"]

def check_every(every: object, *, name: str = "every") -> int:
    """``every`` (every N-th frame) if it is a whole number >= 1, else one line naming
    ``name``."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise SettingError(name, every, "is invalid; give a whole number >= 1 (1: every frame)")
    return every


#: Frame rate assumed (with a warning) for a stream that declares none.
DEFAULT_FPS = 25.0
#: FFmpeg demuxers that read still images, not videos.
_IMAGE_FORMATS = ("image2",)
_FORMATS_HINT = "pass a video file (mp4, avi, mkv, webm)"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, read when it is opened.

    ``frames`` and ``duration`` are the container's announcements (``None`` where it announces
    none, as mkv and webm usually do for the frame count); ``fps`` is the stream's average frame
    rate (its guessed or base rate where that is missing, else :data:`DEFAULT_FPS`).
    """

    path: str
    format: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int | None
    duration: float | None

    def as_dict(self) -> dict:
        """Plain values, for JSON."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream (0-based), its time in seconds from the first
    frame, and its pixels (RGB ``uint8``, H x W x 3)."""

    index: int
    time: float
    image: np.ndarray


def _first_line(exc: BaseException) -> str:
    """FFmpeg's reason (without the errno and the file name it repeats), else the first line."""
    reason = getattr(exc, "strerror", None)
    if isinstance(reason, str) and reason.strip():
        return reason.strip()[:200]
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class VideoReader:
    """An open video file; iterate :meth:`frames` for its frames. Use as a context manager (or
    call :meth:`close`).

    ``threads``: decoder threads (``None``: FFmpeg chooses, usually one per core).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.read = 0  #: frames decoded so far
        self._container = None
        self._check_file()
        av = require("av")
        self._av = av
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as e:
            raise PrivatenetError(f"{self.path}: not a readable video ({_first_line(e)}); the "
                                  f"file is truncated, corrupt or not a video; {_FORMATS_HINT}"
                                  ) from None
        except OSError as e:
            raise PrivatenetError(f"{self.path}: cannot open ({e.strerror or e}); "
                                  f"{_FORMATS_HINT}") from None
        try:
            self._open_stream(threads)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _check_file(self) -> None:
        path = self.path
        if not path.exists():
            raise PrivatenetError(f"{path}: file not found; {_FORMATS_HINT}")
        if path.is_dir():
            raise PrivatenetError(f"{path} is a folder, not a video file; {_FORMATS_HINT}")
        try:
            size = path.stat().st_size
        except OSError as e:
            raise PrivatenetError(f"{path}: cannot read ({e.strerror}); {_FORMATS_HINT}"
                                  ) from None
        if size == 0:
            raise PrivatenetError(f"{path}: empty file (0 bytes), not a video; {_FORMATS_HINT}")
        if not os.access(path, os.R_OK):
            raise PrivatenetError(f"{path}: no permission to read it; {_FORMATS_HINT}")

    def _open_stream(self, threads: int | None) -> None:
        container = self._container
        fmt = container.format.name
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise PrivatenetError(f"{self.path}: a still image ({fmt}), not a video; "
                                  f"{_FORMATS_HINT}")
        if not container.streams:
            raise PrivatenetError(f"{self.path}: no streams at all ({fmt}); the file is "
                                  "truncated (an mp4 cut before its index) or not a video; "
                                  f"{_FORMATS_HINT}")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            raise PrivatenetError(f"{self.path}: no video stream (it holds only "
                                  f"{', '.join(kinds)}); {_FORMATS_HINT}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads is not None:
            stream.thread_count = int(threads)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not math.isfinite(fps) or fps <= 0:
            log.warning("%s declares no frame rate; assuming %g frames/s", self.path,
                        DEFAULT_FPS)
            fps = DEFAULT_FPS
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        frames = int(stream.frames) if stream.frames else None
        self._stream, self._fps = stream, fps
        self._decoder = container.decode(stream)
        self._t0: float | None = None
        self._last_time: float | None = None
        first = self._next()
        if first is None:
            raise PrivatenetError(f"{self.path}: no decodable video frame (the file is empty "
                                  f"or truncated); {_FORMATS_HINT}")
        self._pending: Frame | None = first
        self.info = VideoInfo(
            path=str(self.path), format=fmt, codec=stream.codec_context.name,
            width=int(first.image.shape[1]), height=int(first.image.shape[0]), fps=fps,
            frames=frames, duration=duration)

    # ------------------------------------------------------------------ decoding

    def _next(self, *, convert: bool = True) -> Frame | None:
        """The next decoded frame (pixels only with ``convert``), or None at the end."""
        av = self._av
        try:
            frame = next(self._decoder)
        except StopIteration:
            return None
        except av.error.FFmpegError as e:
            raise PrivatenetError(f"{self.path}: cannot decode frame {self.read} "
                                  f"({_first_line(e)}); the file is truncated or corrupt "
                                  "(re-encode or copy it again)") from None
        index = self.read
        self.read += 1
        t = frame.time
        if t is None:
            t = index / self._fps
        else:
            if self._t0 is None:
                self._t0 = t
            t = t - self._t0
        self._last_time = t
        image = frame.to_ndarray(format="rgb24") if convert else None
        return Frame(index=index, time=float(t), image=image)

    def frames(self, *, every: int = 1) -> Iterator[Frame]:
        """Decode the stream to its end, yielding every ``every``-th frame (indices 0, N, 2N,
        ...; the frames between are decoded, which the codec needs, but not converted).

        Raises a one-line :class:`PrivatenetError` for a decode error, and after the last frame
        when the file turns out truncated: fewer frames than the container announces (by more
        than 2 frames and 1 %), or a last frame more than 3 frame intervals (and 1 %) before the
        announced end of the stream.
        """
        check_every(every)
        if self._container is None:
            raise ValueError("the VideoReader is closed")
        while True:
            if self._pending is not None:
                frame, self._pending = self._pending, None
            else:
                frame = self._next(convert=self.read % every == 0)
                if frame is None:
                    break
            if frame.index % every == 0:
                yield frame
        self._check_complete()

    def _check_complete(self) -> None:
        info, read = self.info, self.read
        if info.frames is not None and read < info.frames - max(2, info.frames // 100):
            raise PrivatenetError(f"{self.path}: truncated: {read} frames decoded of the "
                                  f"{info.frames} the file announces; copy or record it again")
        if info.duration is not None and self._last_time is not None:
            step = 1.0 / info.fps
            end = self._last_time + step
            if end < info.duration - max(3 * step, 0.01 * info.duration):
                raise PrivatenetError(f"{self.path}: truncated: the frames end at {end:.2f} s "
                                      f"of the {info.duration:.2f} s the file announces; copy "
                                      "or record it again")

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r})"
