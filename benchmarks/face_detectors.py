"""Face detectors side by side on real photographs that ship inside a package: recall, false
positives and time per 640 x 480 frame.

    python benchmarks/face_detectors.py              # about a minute on two cores

The faces are scikit-image's LFW subset (``skimage.data.lfw_subset()``: 100 real faces from
Labeled Faces in the Wild, 25 x 25 grey crops, and 100 patches without a face), each enlarged
to a face of ``--sides`` pixels and pasted at a seeded random place into a 640 x 480 real
photograph without faces (``skimage.data.coffee()``, resized); a face counts as found when a
detection overlaps its box with IoU >= 0.5 (the usual criterion, fixed before any run). Two
photographs with one face in its own scene (``astronaut``, ``camera``) are reported apart. The
non-face patches, pasted the same way, count false positives. Each detector runs on the full
frame and on the frame shrunk to 320 pixels on its longer side (what ``privatenet video
--detect-side 320`` does). Needs the video extra and scikit-image (``pip install
scikit-image``). Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from privatenet.video.detect import Downscaled, make_detector
from privatenet.video.track import iou

FRAME = (480, 640)
#: IoU a detection needs with a face's box to find it: the usual 0.5, fixed before any run.
MATCH_IOU = 0.5


def _frames(cv2, sides: list[int], seed: int):
    """(frame, box or None, what) for every LFW face and non-face at every side, then the two
    photographs with a face in their own scene (their box: the face as drawn by hand here)."""
    from skimage import data

    lfw = data.lfw_subset()  # 100 faces, then 100 non-faces, 25 x 25 floats in [0, 1]
    back = cv2.resize(data.coffee(), FRAME[::-1], interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    for side in sides:
        for i, crop in enumerate(lfw):
            patch = cv2.resize((crop * 255).astype(np.uint8), (side, side),
                               interpolation=cv2.INTER_CUBIC)
            y = int(rng.integers(0, FRAME[0] - side))
            x = int(rng.integers(0, FRAME[1] - side))
            frame = back.copy()
            frame[y:y + side, x:x + side] = patch[..., None]
            yield frame, (x, y, x + side, y + side), ("face" if i < 100 else "non-face", side)
    # whole photographs, each with one face (boxes drawn by hand, brow to chin; the
    # cameraman is turned three-quarters away: a hard case for frontal detectors)
    yield np.ascontiguousarray(data.astronaut()), (172, 70, 270, 175), ("astronaut", None)
    yield np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1)), (180, 100, 260, 195), \
        ("camera", None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", default="64,96,128", help="face sides in pixels (comma list)")
    p.add_argument("--detectors", default="haar,dlib-hog")
    p.add_argument("--detect-side", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import cv2

    cv2.setNumThreads(1)  # one core for the detector; the other decodes and classifies
    sides = [int(s) for s in a.sides.split(",")]
    frames = list(_frames(cv2, sides, a.seed))
    print(f"{len(frames)} frames of 640 x 480 (LFW subset faces and non-faces at {sides} px, "
          "pasted into skimage's coffee photograph; astronaut, camera); IoU >= "
          f"{MATCH_IOU} finds a face; OpenCV with 1 thread")
    print(f"{'detector':28s} {'face':>5s} {'recall':>7s} {'false+/frame':>13s}")
    for name in a.detectors.split(","):
        for shrink in (None, a.detect_side):
            det = make_detector(name)
            det = Downscaled(det, side=shrink) if shrink else det
            found, total, false, times, scenes = {}, {}, {}, [], []
            for frame, box, (what, side) in frames:
                start = time.perf_counter()
                dets = det.detect(frame)
                times.append((time.perf_counter() - start) * 1e3)
                hits = [d for d in dets if iou(d.box, box) >= MATCH_IOU]
                if what in ("astronaut", "camera"):
                    scenes.append(f"{what} {'found' if hits else 'missed'}")
                    continue
                key = (what, side)
                false[key] = false.get(key, 0) + len(dets) - (1 if hits and what == "face" else 0)
                if what == "face":
                    total[side] = total.get(side, 0) + 1
                    found[side] = found.get(side, 0) + bool(hits)
            label = f"{name}" + (f" @ {shrink} px" if shrink else " @ full frame")
            for side in sides:
                print(f"{label:28s} {side:5d} {found[side] / total[side]:7.0%} "
                      f"{false[('face', side)] / total[side]:13.2f}")
            non_face = sum(v for (what, _), v in false.items() if what == "non-face")
            print(f"{'':28s} median {statistics.median(times):.1f} ms a frame; {non_face} false "
                  f"positives in {100 * len(sides)} frames with a non-face patch; "
                  + ", ".join(scenes))


if __name__ == "__main__":
    main()
