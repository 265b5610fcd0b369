"""Drawing a frame's faces: a box per face, with its track id, label and probability."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privatenet.video._deps import require
from privatenet.video.pipeline import FaceResult

__all__ = ["draw_faces", "track_colour"]


def track_colour(track: int) -> tuple[int, int, int]:
    """A bright RGB colour for ``track``, the same every time (golden-ratio hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((track * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_faces(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of ``image`` (RGB uint8, H x W x 3) with each face's box and a label
    ``#track label p`` drawn with OpenCV."""
    cv2 = require("cv2")
    out = np.ascontiguousarray(image).copy()
    height = out.shape[0]
    scale = max(0.35, min(1.0, height / 720))
    thick = max(1, round(2 * scale))
    for face in faces:
        x0, y0, x1, y1 = (int(v) for v in face.box)
        colour = track_colour(face.track)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        text = f"#{face.track} {face.label} {float(np.max(face.probs)):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - 3 if y0 - th - base - 3 >= 0 else min(y1 + th + 3, height - base - 1)
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out
