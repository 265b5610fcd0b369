"""Face detection behind a small interface, so that another detector can be plugged in.

A detector is anything with ``detect(frame) -> list[Detection]`` (:class:`FaceDetector`): the
frame is an RGB ``uint8`` array (H x W x 3), a :class:`Detection` a box ``(x0, y0, x1, y1)`` in
pixels (x1, y1 exclusive) and a score (higher: more confident; its scale is the detector's own).

:class:`HaarFaceDetector` is OpenCV's frontal-face Haar cascade
(``haarcascade_frontalface_default.xml``), which ships inside ``opencv-python-headless``
(``cv2.data.haarcascades``): nothing is downloaded. It finds upright, roughly frontal faces of at
least ``min_size`` pixels; profiles, strongly rotated or small faces are missed, and it has
false positives on textured backgrounds. Its score is the number of neighbouring raw detections
merged into the box (OpenCV's ``detectMultiScale2``), so at least ``min_neighbors``.
:class:`DlibHogDetector` is dlib's HOG detector (``pip install dlib-bin``), and
:class:`Downscaled` runs any detector on a shrunk frame. Which one ``privatenet video`` uses, and
on how many pixels, was chosen by measured recall on real faces and frame rate
(``benchmarks/face_detectors.py``, ``benchmarks/video_rate.py``; docs/design.md §4.3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from privatenet.errors import PrivatenetError, SettingError
from privatenet.video._deps import require

__all__ = ["CASCADE", "DETECTORS", "Box", "Detection", "DlibHogDetector", "FaceDetector",
           "HaarFaceDetector", "check_frame", "make_detector"]

#: The cascade file of :class:`HaarFaceDetector`, in ``cv2.data.haarcascades``.
CASCADE = "haarcascade_frontalface_default.xml"

#: A box ``(x0, y0, x1, y1)`` in pixels; x1 and y1 are exclusive.
Box = tuple[int, int, int, int]


class Detection(NamedTuple):
    """One detected face: ``box`` ``(x0, y0, x1, y1)`` and the detector's ``score``."""

    box: Box
    score: float


@runtime_checkable
class FaceDetector(Protocol):
    """What the pipeline needs of a face detector."""

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """The faces in ``frame`` (RGB uint8, H x W x 3)."""
        ...


def check_frame(frame: object) -> np.ndarray:
    """``frame`` if it is an RGB ``uint8`` array (H x W x 3), else a ``ValueError``."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or \
            frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else \
            type(frame).__name__
        raise ValueError(f"a frame must be an RGB uint8 array (H, W, 3), got {got}")
    return frame


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (see the module docstring).

    ``scale_factor``: image pyramid step (> 1; smaller finds more, slower); ``min_neighbors``:
    raw detections needed to keep a box (higher: fewer false positives, more misses);
    ``min_size``: smallest face side in pixels; ``cascade``: another cascade XML file.
    """

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24,
                 cascade: str | os.PathLike | None = None) -> None:
        cv2 = require("cv2")
        if not scale_factor > 1:
            raise SettingError("scale_factor", scale_factor, "is invalid; give a number "
                                                             "> 1 (1.1 is usual)")
        if isinstance(min_neighbors, bool) or not isinstance(min_neighbors, int) or \
                min_neighbors < 0:
            raise SettingError("min_neighbors", min_neighbors, "is invalid; give a whole "
                                                               "number >= 0 (5 is usual)")
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise SettingError("min_size", min_size, "is invalid; give a face side in "
                                                     "pixels >= 1")
        path = Path(cascade) if cascade is not None else Path(cv2.data.haarcascades) / CASCADE
        if not path.is_file():
            raise PrivatenetError(f"{path}: cascade file not found; reinstall "
                                  'opencv-python-headless (pip install -e ".[video]") or pass '
                                  "an existing cascade XML")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise PrivatenetError(f"{path}: not a readable OpenCV cascade XML; pass another "
                                  "cascade file")
        self.cascade = str(path)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    @property
    def config(self) -> dict:
        """Plain values describing the detector (for a run's summary)."""
        return {"name": "haar", "cascade": Path(self.cascade).name,
                "scale_factor": self.scale_factor, "min_neighbors": self.min_neighbors,
                "min_size": self.min_size}

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in ``frame`` (RGB uint8, H x W x 3), ordered left to right, top to bottom."""
        cv2 = self._cv2
        gray = cv2.cvtColor(check_frame(frame), cv2.COLOR_RGB2GRAY)
        rects, neighbours = self._cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size))
        found = [Detection((int(x), int(y), int(x + w), int(y + h)), float(n))
                 for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4),
                                            np.asarray(neighbours).reshape(-1), strict=True)]
        return sorted(found, key=lambda d: (d.box[0], d.box[1]))

    def __repr__(self) -> str:
        return (f"HaarFaceDetector(scale_factor={self.scale_factor}, "
                f"min_neighbors={self.min_neighbors}, min_size={self.min_size})")


class DlibHogDetector:
    """dlib's frontal-face detector: HOG features and a linear SVM, its weights compiled into
    the library (the ``dlib-bin`` wheel; nothing is downloaded). It finds upright, roughly
    frontal faces of about 80 pixels or more (``upsample`` doubles the frame that many times
    first, for smaller faces, at four times the cost each). Its score is the SVM's margin
    (above 0; higher: more confident)."""

    def __init__(self, *, upsample: int = 0) -> None:
        dlib = require("dlib")
        if isinstance(upsample, bool) or not isinstance(upsample, int) or not 0 <= upsample <= 2:
            raise SettingError("upsample", upsample, "is invalid; give 0, 1 or 2")
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    @property
    def config(self) -> dict:
        return {"name": "dlib-hog", "upsample": self.upsample}

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in ``frame`` (RGB uint8, H x W x 3), ordered left to right, top to bottom."""
        frame = np.ascontiguousarray(check_frame(frame))
        rects, scores, _ = self._detector.run(frame, self.upsample, 0.0)
        h, w = frame.shape[:2]
        found = [Detection((max(0, r.left()), max(0, r.top()), min(w, r.right() + 1),
                            min(h, r.bottom() + 1)), float(s))
                 for r, s in zip(rects, scores, strict=True)]
        return sorted(found, key=lambda d: (d.box[0], d.box[1]))

    def __repr__(self) -> str:
        return f"DlibHogDetector(upsample={self.upsample})"


class Downscaled:
    """``detector`` run on the frame shrunk so that its longer side is at most ``side`` pixels
    (area interpolation), its boxes scaled back to the frame: a detector's cost grows with the
    pixels it scans, and a face of 100 pixels in a 640-pixel frame is still 50 in a 320-pixel
    one. Frames already that small are passed as they are."""

    def __init__(self, detector: FaceDetector, *, side: int) -> None:
        if isinstance(side, bool) or not isinstance(side, int) or side < 32:
            raise SettingError("detect_side", side, "is invalid; give the longer side in "
                                                    "pixels, >= 32")
        self.detector, self.side = detector, side
        self._cv2 = require("cv2")

    @property
    def config(self) -> dict:
        inner = getattr(self.detector, "config", {"name": type(self.detector).__name__})
        return {**inner, "detect_side": self.side}

    def detect(self, frame: np.ndarray) -> list[Detection]:
        h, w = check_frame(frame).shape[:2]
        scale = self.side / max(h, w)
        if scale >= 1:
            return self.detector.detect(frame)
        small = self._cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                                 interpolation=self._cv2.INTER_AREA)
        return [Detection((int(d.box[0] / scale), int(d.box[1] / scale),
                           min(w, int(round(d.box[2] / scale))),
                           min(h, int(round(d.box[3] / scale)))), d.score)
                for d in self.detector.detect(small)]

    def __repr__(self) -> str:
        return f"Downscaled({self.detector!r}, side={self.side})"


#: The detectors ``privatenet video --detector`` offers, by name.
DETECTORS = {"haar": HaarFaceDetector, "dlib-hog": DlibHogDetector}


def make_detector(name: str, *, side: int | None = None) -> FaceDetector:
    """The detector ``name`` (:data:`DETECTORS`), run on frames shrunk to ``side`` pixels on the
    longer side when given (:class:`Downscaled`)."""
    if name not in DETECTORS:
        raise SettingError("detector", name, f"is unknown; use one of {', '.join(DETECTORS)}")
    detector = DETECTORS[name]()
    return detector if side is None else Downscaled(detector, side=side)
