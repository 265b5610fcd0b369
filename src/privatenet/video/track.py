"""Track ids for detected faces, and per-track smoothing of their class probabilities.

:class:`IoUTracker` is the simplest tracker that works for a fixed camera: each processed frame,
detections are matched to the live tracks greedily by intersection over union (the pair with
the highest IoU first, then the next among those left, as long as IoU >= ``iou_threshold``,
default 0.3). A matched track takes the detection's box; an unmatched detection starts a track
with the next id (1, 2, ...); a track unmatched for more than ``max_missed`` processed frames in
a row (default 5) ends, and its id is never reused. There is no motion model: a face that moves
by more than about half its width between processed frames (mind ``every``) gets a new id.

:class:`EmaSmoother` smooths each track's probabilities over processed frames with an
exponential moving average: ``s_t = alpha * p_t + (1 - alpha) * s_{t-1}``, ``s`` starting at
the track's first ``p``. The default ``alpha`` = :data:`DEFAULT_ALPHA` = 0.3 weighs the newest
frame by 0.3 and a frame k processed frames back by 0.3 * 0.7^k: a half-life of about two
processed frames (about 65 ms at 30 frames/s with every frame processed), enough to calm
frame-to-frame flicker without hiding an expression held for a fraction of a second.
``alpha`` = 1 turns smoothing off.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from privatenet.errors import SettingError

__all__ = ["DEFAULT_ALPHA", "DEFAULT_IOU", "DEFAULT_MAX_MISSED", "EmaSmoother", "IoUTracker",
           "Track", "iou"]

#: Defaults of the tracker and the smoother (see the module docstring).
DEFAULT_IOU = 0.3
DEFAULT_MAX_MISSED = 5
DEFAULT_ALPHA = 0.3


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)`` (0 when either is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    """A live track: its id, last box, consecutive missed frames and matched frames."""

    id: int
    box: tuple
    missed: int = 0
    hits: int = 1


class IoUTracker:
    """Greedy IoU matching of detections to tracks (see the module docstring)."""

    def __init__(self, *, iou_threshold: float = DEFAULT_IOU,
                 max_missed: int = DEFAULT_MAX_MISSED) -> None:
        if not 0 < iou_threshold <= 1:
            raise SettingError("iou_threshold", iou_threshold, "is invalid; give a number "
                                                               "in (0, 1] (0.3 is usual)")
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 0:
            raise SettingError("max_missed", max_missed, "is invalid; give a whole number "
                                                         ">= 0 of processed frames")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = max_missed
        self.tracks: dict[int, Track] = {}
        self.ended: list[int] = []  #: ids of the tracks the last update ended
        self._next_id = 1

    @property
    def config(self) -> dict:
        """Plain values describing the tracker."""
        return {"name": "iou", "iou_threshold": self.iou_threshold,
                "max_missed": self.max_missed}

    def update(self, boxes: Sequence[Sequence[float]]) -> list[int]:
        """Match this processed frame's ``boxes``; the track id of each box, in order."""
        pairs = []
        for t in self.tracks.values():
            for j, box in enumerate(boxes):
                overlap = iou(t.box, box)
                if overlap >= self.iou_threshold:
                    pairs.append((-overlap, t.id, j))
        pairs.sort()  # highest IoU first; ties by track id, then detection order
        ids: list[int | None] = [None] * len(boxes)
        matched: set[int] = set()
        for _, tid, j in pairs:
            if tid in matched or ids[j] is not None:
                continue
            matched.add(tid)
            ids[j] = tid
            track = self.tracks[tid]
            track.box, track.missed, track.hits = tuple(boxes[j]), 0, track.hits + 1
        self.ended = []
        for tid in list(self.tracks):
            if tid not in matched:
                track = self.tracks[tid]
                track.missed += 1
                if track.missed > self.max_missed:
                    del self.tracks[tid]
                    self.ended.append(tid)
        for j, box in enumerate(boxes):
            if ids[j] is None:
                ids[j] = self._next_id
                self.tracks[self._next_id] = Track(self._next_id, tuple(box))
                self._next_id += 1
        return [int(i) for i in ids]

    def reset(self) -> None:
        """Forget every track (ids continue from where they were)."""
        self.ended = list(self.tracks)
        self.tracks.clear()


class EmaSmoother:
    """Per-key exponential moving average of probability vectors (see the module docstring)."""

    def __init__(self, *, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise SettingError("alpha", alpha, "is invalid; give a number in (0, 1] (the "
                                               "weight of the newest frame; 1 turns smoothing off)")
        self.alpha = float(alpha)
        self._state: dict[Hashable, np.ndarray] = {}

    def update(self, key: Hashable, probs: np.ndarray) -> np.ndarray:
        """The smoothed probabilities of ``key`` after this frame's ``probs``."""
        probs = np.asarray(probs, dtype=np.float64)
        prev = self._state.get(key)
        smoothed = probs.copy() if prev is None else self.alpha * probs + (1 - self.alpha) * prev
        self._state[key] = smoothed
        return smoothed.copy()

    def forget(self, keys: Iterable[Hashable]) -> None:
        """Drop the state of ``keys`` (ended tracks)."""
        for key in keys:
            self._state.pop(key, None)
