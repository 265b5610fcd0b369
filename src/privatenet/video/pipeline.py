"""The video analytics pipeline: detect faces, track them, classify each face on its own, smooth
per track.

:class:`FaceAnalyzer` does one frame at a time (a file, a camera, any source of RGB frames):
detector -> :class:`~privatenet.video.track.IoUTracker` (track ids) -> crops with a margin
(:func:`~privatenet.video.classify.crop_faces`) -> classifier (each face independent of the
others) -> per-track exponential moving average of the probabilities
(:class:`~privatenet.video.track.EmaSmoother`) -> the label, the class of highest smoothed
probability. :func:`analyze_video` runs it over a video file's frames (every ``every``-th).

Nothing here knows about private attributes: the only names a result carries are the
classifier's task classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from privatenet.errors import SettingError
from privatenet.video.classify import DEFAULT_MARGIN, Classifier, crop_faces
from privatenet.video.detect import FaceDetector, HaarFaceDetector, check_frame
from privatenet.video.live import LiveReader
from privatenet.video.reader import VideoReader, check_every
from privatenet.video.track import (
    DEFAULT_ALPHA,
    DEFAULT_IOU,
    DEFAULT_MAX_MISSED,
    EmaSmoother,
    IoUTracker,
)

__all__ = ["FaceAnalyzer", "FaceResult", "FrameResult", "analyze_video"]


@dataclass(frozen=True)
class FaceResult:
    """One face in one processed frame.

    ``probs``: the track's smoothed class probabilities (what ``label`` is the arg-max of);
    ``raw``: this frame's probabilities of this face alone.
    """

    track: int
    box: tuple[int, int, int, int]
    score: float
    probs: np.ndarray
    raw: np.ndarray
    label: str

    def as_record(self, classes: tuple[str, ...], digits: int = 6) -> dict:
        """Plain values: ``{"track", "box", "score", "probs": {class: p}, "raw": {...},
        "label"}``."""
        return {"track": self.track, "box": [int(v) for v in self.box],
                "score": round(float(self.score), 4),
                "probs": {c: round(float(p), digits) for c, p in zip(classes, self.probs,
                                                                     strict=True)},
                "raw": {c: round(float(p), digits) for c, p in zip(classes, self.raw,
                                                                   strict=True)},
                "label": self.label}


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: its index in the video, time in seconds, faces, and pixels (RGB
    uint8, H x W x 3, for drawing)."""

    index: int
    time: float
    faces: list[FaceResult]
    image: np.ndarray

    def as_record(self, classes: tuple[str, ...]) -> dict:
        """Plain values: ``{"index", "time", "faces": [...]}`` (no pixels)."""
        return {"index": self.index, "time": round(self.time, 6),
                "faces": [f.as_record(classes) for f in self.faces]}


class FaceAnalyzer:
    """Detect, track, classify and smooth, one RGB frame at a time (module docstring).

    ``classifier``: a :class:`~privatenet.video.classify.Classifier`; ``detector``: a
    :class:`~privatenet.video.detect.FaceDetector` (default :class:`HaarFaceDetector`);
    ``margin``: crop margin per side, as a share of the box; ``alpha``: the smoothing weight of
    the newest frame; ``iou_threshold``, ``max_missed``: the tracker's. ``detect_every``: run
    the detector on every N-th frame only; in between, each face found last is classified
    again where it was found (the detector is most of a frame's cost; a face moves little in
    N - 1 frames).
    """

    def __init__(self, *, classifier: Classifier, detector: FaceDetector | None = None,
                 margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA,
                 iou_threshold: float = DEFAULT_IOU, max_missed: int = DEFAULT_MAX_MISSED,
                 detect_every: int = 1) -> None:
        if not callable(getattr(classifier, "predict_proba", None)):
            raise TypeError(f"classifier must have predict_proba(crops), got "
                            f"{type(classifier).__name__}")
        detector = detector if detector is not None else HaarFaceDetector()
        if not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector must have detect(frame), got {type(detector).__name__}")
        if not margin >= 0:
            raise SettingError("margin", margin, "is invalid; give a share of the box >= 0 "
                                                 "(0.2 adds 20 % on each side)")
        self.classifier, self.detector, self.margin = classifier, detector, float(margin)
        self.classes = tuple(classifier.classes)
        self.tracker = IoUTracker(iou_threshold=iou_threshold, max_missed=max_missed)
        self.smoother = EmaSmoother(alpha=alpha)
        self.detect_every = check_every(detect_every, name="detect_every")
        self._since = 0  # frames since the last detection
        self._last: tuple[list, list, list] = ([], [], [])  # its boxes, scores, track ids

    @property
    def config(self) -> dict:
        """Plain values describing the pipeline's settings."""
        detector = getattr(self.detector, "config", None)
        return {"detector": detector if isinstance(detector, dict)
                else {"name": type(self.detector).__name__},
                "tracker": self.tracker.config, "margin": self.margin,
                "detect_every": self.detect_every,
                "smoothing": {"method": "ema", "alpha": self.smoother.alpha}}

    def process(self, image: np.ndarray) -> list[FaceResult]:
        """The faces of one frame (RGB uint8, H x W x 3), in the detector's order."""
        image = check_frame(image)
        if self._since % self.detect_every == 0:
            detections = list(self.detector.detect(image))
            boxes = [tuple(int(round(v)) for v in d[0]) for d in detections]
            ids = self.tracker.update(boxes)
            self.smoother.forget(self.tracker.ended)
            self._last = (boxes, [float(d[1]) for d in detections], ids)
        self._since += 1
        boxes, scores, ids = self._last
        if not boxes:
            return []
        crops = crop_faces(image, boxes, size=self.classifier.image_size, margin=self.margin)
        probs = np.asarray(self.classifier.predict_proba(crops), dtype=np.float64)
        faces = []
        for box, score, tid, p in zip(boxes, scores, ids, probs, strict=True):
            smoothed = self.smoother.update(tid, p)
            faces.append(FaceResult(track=tid, box=box, score=score, probs=smoothed,
                                    raw=p, label=self.classes[int(np.argmax(smoothed))]))
        return faces


def analyze_video(video: VideoReader | LiveReader | str | os.PathLike, *,
                  analyzer: FaceAnalyzer,
                  every: int = 1, on_frame: Callable[[int, int | None], None] | None = None
                  ) -> Iterator[FrameResult]:
    """Run ``analyzer`` over every ``every``-th frame of ``video`` (an open
    :class:`VideoReader`, or a path opened and closed here), yielding one
    :class:`FrameResult` per processed frame.

    ``on_frame(frames_read, frames_announced_or_None)`` is called after each processed frame
    (a progress bar's hook). Errors of the file (truncated, corrupt) are one-line
    :class:`PrivatenetError` s, raised where they are found (possibly after the last frame).
    """
    check_every(every)
    # an open reader (a file's, or a live source's) is used as it is; a path is opened here
    reader = VideoReader(video) if isinstance(video, (str, os.PathLike)) else video
    try:
        total = reader.info.frames
        for frame in reader.frames(every=every):
            faces = analyzer.process(frame.image)
            yield FrameResult(index=frame.index, time=frame.time, faces=faces,
                              image=frame.image)
            if on_frame is not None:
                on_frame(reader.read, total)
    finally:
        if reader is not video:
            reader.close()
