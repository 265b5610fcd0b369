"""Writing RGB frames to a video file with PyAV (libx264 where the bundled FFmpeg has it, else
mpeg4)."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from privatenet.errors import PrivatenetError
from privatenet.video._deps import require

log = logging.getLogger(__name__)

__all__ = ["CODECS", "VideoWriter", "pick_codec"]

#: Encoders tried in order; the first the bundled FFmpeg can encode with is used.
CODECS = ("libx264", "mpeg4")
#: Encoder options: near-visually-lossless quality, fast.
_OPTIONS = {"libx264": {"crf": "18", "preset": "veryfast"}, "mpeg4": {"qscale": "2"}}


def pick_codec() -> str:
    """The first of :data:`CODECS` the installed PyAV can encode with, or a one-line error."""
    av = require("av")
    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # UnknownCodecError and friends: not in this FFmpeg build
            continue
        return name
    raise PrivatenetError(f"the FFmpeg bundled with PyAV {av.__version__} has none of the "
                          f"encoders {', '.join(CODECS)}; reinstall PyAV from its wheels: "
                          'pip install -e ".[video]"')


class VideoWriter:
    """Write RGB ``uint8`` frames (H x W x 3, all the same size) to ``path`` at ``fps``.

    ``codec``: an FFmpeg encoder (default :func:`pick_codec`); ``format``: the container
    (default: from the file name, so a temporary name needs ``format="mp4"``). Frames of odd
    width or height are padded by one edge pixel (yuv420p needs even sides). Use as a context
    manager; leaving the ``with`` block by an exception closes the file without flushing.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float, width: int, height: int,
                 codec: str | None = None, format: str | None = None) -> None:
        av = require("av")
        if not (fps > 0) or width < 1 or height < 1:
            raise ValueError(f"VideoWriter needs fps > 0 and a positive size, got fps={fps}, "
                             f"{width}x{height}")
        self.path = Path(path)
        self.codec = codec or pick_codec()
        self.width, self.height = int(width), int(height)
        self.frames = 0
        self._container = None
        try:
            self._container = av.open(str(self.path), mode="w", format=format)
            rate = Fraction(fps).limit_denominator(1001)
            stream = self._container.add_stream(self.codec, rate=rate)
            stream.width, stream.height = self.width + self.width % 2, self.height + self.height % 2
            stream.pix_fmt = "yuv420p"
            stream.options = dict(_OPTIONS.get(self.codec, {}))
            self._stream = stream
        except (av.error.FFmpegError, OSError) as e:
            self.close(flush=False)
            raise PrivatenetError(f"cannot write the video {self.path} with {self.codec} "
                                  f"({str(e).splitlines()[0][:200]}); choose a writable folder"
                                  ) from None

    def write(self, image: np.ndarray) -> None:
        """Encode one RGB frame."""
        av = self._av()
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 ({self.height}, {self.width}, 3), got "
                             f"{image.dtype} {image.shape}")
        pad = ((0, self.height % 2), (0, self.width % 2), (0, 0))
        if any(p[1] for p in pad):
            image = np.pad(image, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    @staticmethod
    def _av():
        return require("av")

    def close(self, *, flush: bool = True) -> None:
        """Flush the encoder (unless ``flush`` is False) and close the file (idempotent)."""
        if self._container is None:
            return
        try:
            if flush:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(flush=exc_type is None)
