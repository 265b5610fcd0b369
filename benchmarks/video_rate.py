"""``privatenet video`` end to end at 640 x 480: frames per second and how often the face is
found, for each detector setting, side by side.

    python benchmarks/video_rate.py --out /tmp/video_rate      # a few minutes on two cores

Writes a 640 x 480, 25 fps clip (``--frames`` frames) in which one real face (the first of
scikit-image's LFW subset, enlarged to ``--face`` pixels) moves across a real photograph without
faces (``skimage.data.coffee()``), trains a small network for one epoch on synthfaces (the
classifier's cost, not its accuracy, matters here), then runs the video job on the clip for
every setting: the rate is the job's own (decoding, detection, tracking, classification,
records), and "found" the share of processed frames with a reported box of IoU >= 0.5 with
the face (fixed before any run). Needs the video extra and scikit-image. Prints figures; it is
not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from privatenet.app.jobs import train_job
from privatenet.app.video_job import video_job
from privatenet.data import load_dataset
from privatenet.train.config import TrainConfig
from privatenet.video.track import iou
from privatenet.video.writer import VideoWriter

SETTINGS = (  # (detector, detect_side or None, detect_every)
    ("haar", None, 1), ("haar", 320, 1), ("haar", 320, 2), ("haar", 320, 3),
    ("dlib-hog", None, 1), ("dlib-hog", None, 2), ("dlib-hog", None, 3),
)


def _clip(path: Path, frames: int, face: int) -> list[tuple[int, int, int, int]]:
    """Write the clip; return the face's box in every frame."""
    import cv2
    from skimage import data

    back = cv2.resize(data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)
    patch = cv2.resize((data.lfw_subset()[0] * 255).astype(np.uint8), (face, face),
                       interpolation=cv2.INTER_CUBIC)[..., None]
    boxes = []
    with VideoWriter(path, fps=25, width=640, height=480) as writer:
        for i in range(frames):
            # across and back, about 2 pixels a frame: a walk past a kiosk camera
            x = int(20 + (640 - face - 40) * (0.5 - 0.5 * np.cos(2 * np.pi * i / frames)))
            y = 480 // 2 - face // 2 + int(20 * np.sin(2 * np.pi * i / 50))
            frame = back.copy()
            frame[y:y + face, x:x + face] = patch
            writer.write(frame)
            boxes.append((x, y, x + face, y + face))
    return boxes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the clip, the network, the runs")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--face", type=int, default=128, help="face side in pixels")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / "clip.mp4"
    truth = _clip(clip, a.frames, a.face)
    net = out / "net"
    if not (net / "results.json").exists():
        train_job(data=load_dataset("synthfaces:n=400,size=64"), out=net, model="arm_small",
                  target="emotion", config=TrainConfig(epochs=1, device="cpu"))
    print(f"clip: 640 x 480, 25 fps, {a.frames} frames, one {a.face} px LFW face moving "
          "across skimage's coffee photograph; network arm_small 64 px; classifier 1 thread")
    print(f"{'detector':10s} {'detect side':>11s} {'every':>5s} {'frames/s':>9s} "
          f"{'found':>6s}")
    for detector, side, every in SETTINGS:
        run = out / f"run-{detector}-{side or 'full'}-{every}"
        s = video_job(input=clip, model=net, out=run, detector=detector, detect_side=side,
                      detect_every=every, threads=1)
        records = [json.loads(line) for line in (run / "frames.jsonl").read_text().splitlines()]
        found = sum(any(iou(f["box"], truth[r["index"]]) >= 0.5 for f in r["faces"])
                    for r in records) / len(records)
        print(f"{detector:10s} {side or 'full':>11} {every:5d} "
              f"{s['processing']['frames_processed_per_s']:9.1f} {found:6.0%}")


if __name__ == "__main__":
    main()
