"""Live input: a camera or a stream, processed as it arrives, never falling behind.

:class:`LiveReader` decodes its source in a thread of its own and keeps only the newest frame
(:class:`NewestFrame`): a consumer slower than the source gets the newest frame each time it
asks, and the frames in between are dropped (counted), so the delay between a frame's arrival
and its processing stays bounded by one frame's processing time instead of growing with the
run. It offers what :func:`~privatenet.video.pipeline.analyze_video` and the video job read of a
:class:`~privatenet.video.reader.VideoReader` (``info``, ``read``, ``frames()``, ``close()``),
plus :meth:`LiveReader.stats` (frames dropped, delays).

Sources: a camera index (``0`` is ``/dev/video0``, read with FFmpeg's v4l2 demuxer), a device
path, or a URL that PyAV opens (``rtsp://``, ``http://``, ``udp://``...). ``pace=True`` plays a
video file at its own frame rate, as a camera would deliver it (a demo, and the tests).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Iterator

from privatenet.errors import PrivatenetError, SettingError
from privatenet.video._deps import require
from privatenet.video.reader import DEFAULT_FPS, Frame, VideoInfo, check_every

__all__ = ["LiveReader", "NewestFrame", "live_source"]

log = logging.getLogger(__name__)


def live_source(source: str | int) -> tuple[str, str | None]:
    """``(what PyAV opens, the FFmpeg demuxer or None)`` for a camera index, a device path or
    a URL; a one-line error for anything else."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        if isinstance(source, bool) or int(source) < 0:
            raise SettingError("live", source, "is invalid; give a camera index >= 0, a "
                                               "device path or a stream URL")
        return f"/dev/video{int(source)}", "v4l2"
    if isinstance(source, str) and source.startswith("/dev/"):
        return source, "v4l2"
    if isinstance(source, str) and "://" in source:
        return source, None
    raise SettingError("live", source, "is not a live source; give a camera index (0), a "
                                       "device (/dev/video0) or a stream URL (rtsp://...)")


class NewestFrame:
    """A one-frame slot between a producer and a consumer: :meth:`put` replaces an untaken
    frame (counting it dropped), :meth:`take` waits for a frame not taken yet and returns it
    with its arrival time, or ``None`` once the producer has :meth:`finish` ed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple[Frame, float] | None = None
        self._done = False
        self.dropped = 0

    def put(self, frame: Frame, arrived: float) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = (frame, arrived)
            self._cond.notify()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()

    def take(self) -> tuple[Frame, float] | None:
        with self._cond:
            while self._item is None and not self._done:
                self._cond.wait()
            item, self._item = self._item, None
            return item


class LiveReader:
    """A live source read in a thread, newest frame first (module docstring).

    ``seconds``: stop after this long (``None``: at the end of the stream, or never for a
    camera); ``pace``: play a file at its frame rate (a stand-in for a camera).
    """

    def __init__(self, source: str | int, *, seconds: float | None = None,
                 pace: bool = False) -> None:
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0
                                        and math.isfinite(seconds)):
            raise SettingError("seconds", seconds, "is invalid; give a duration > 0")
        av = require("av")
        target, fmt = (str(source), None) if pace else live_source(source)
        try:
            self._container = av.open(target, mode="r", format=fmt, timeout=10.0)
        except (av.error.FFmpegError, OSError) as e:
            raise PrivatenetError(f"{target}: cannot open the live source "
                                  f"({getattr(e, 'strerror', None) or e}); check the camera "
                                  "index, the device or the URL") from None
        if not self._container.streams.video:
            self._container.close()
            raise PrivatenetError(f"{target}: no video stream; give a camera or a video "
                                  "stream")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate and float(rate) > 0 else DEFAULT_FPS
        cc = stream.codec_context
        self.info = VideoInfo(path=target, format=self._container.format.name,
                              codec=cc.name, width=int(cc.width), height=int(cc.height),
                              fps=fps, frames=None, duration=None)
        self.path, self.read, self.seconds, self.pace = target, 0, seconds, pace
        self._stream, self._slot, self._stop = stream, NewestFrame(), threading.Event()
        self._error: PrivatenetError | None = None
        self._delays: list[float] = []
        self._thread = threading.Thread(target=self._produce, name="privatenet-live",
                                        daemon=True)
        self._start = time.perf_counter()
        self._thread.start()

    def _produce(self) -> None:
        """Decode until the end, a stop or ``seconds``; each frame into the slot."""
        try:
            for frame in self._container.decode(self._stream):
                now = time.perf_counter() - self._start
                if self._stop.is_set() or (self.seconds is not None and now > self.seconds):
                    break
                t = float(frame.time) if frame.time is not None else self.read / self.info.fps
                if self.pace and t > now:  # a file played as a camera delivers it
                    time.sleep(t - now)
                image = frame.to_ndarray(format="rgb24")
                self._slot.put(Frame(index=self.read, time=t, image=image),
                               time.perf_counter())
                self.read += 1
        except Exception as e:  # a broken stream ends the run with one line, not a hang
            self._error = PrivatenetError(f"{self.path}: the live source failed after "
                                          f"{self.read} frames ({e}); check the source")
        finally:
            self._slot.finish()

    def frames(self, *, every: int = 1) -> Iterator[Frame]:
        """The newest frame each time one is asked for (``every``: 1 only; a live source is
        thinned by its own pace, not by a stride)."""
        if check_every(every) != 1:
            raise SettingError("every", every, "is for files; a live source drops the frames "
                                               "it cannot process in time")
        while True:
            item = self._slot.take()
            if item is None:
                break
            frame, arrived = item
            self._delays.append(time.perf_counter() - arrived)
            yield frame
        if self._error is not None:
            raise self._error

    def stats(self) -> dict:
        """Frames decoded and dropped, and the delay from a frame's arrival to its processing
        (seconds: median and the largest)."""
        d = self._delays
        return {"frames_decoded": self.read, "frames_dropped": self._slot.dropped,
                "delay_s_median": statistics.median(d) if d else None,
                "delay_s_max": max(d) if d else None}

    def close(self) -> None:
        """Stop the thread and close the source (idempotent)."""
        self._stop.set()
        self._thread.join(timeout=5)  # it stops at its next frame
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> LiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
