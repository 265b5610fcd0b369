"""The ``video`` job: the video analytics pipeline over one file, with its run folder.

The pipeline itself is the library's (:mod:`privatenet.video`); this job adds what a run folder
needs (docs/design.md §4). It checks every input first — the video opens and its first frame
decodes, the model loads (a finished ``train`` run folder, or an export folder with
``export.json``), the detector and, with ``annotate``, an encoder exist — then claims ``out``
with :func:`~privatenet.train.rundir.open_run` (``kind="video"``) and writes:

* ``config.yaml``: the settings;
* ``frames.jsonl``: one record per processed frame, ``{"index", "time" (s), "faces": [{"track",
  "box" [x0, y0, x1, y1], "score", "probs" {class: p} (smoothed per track), "raw" {class: p}
  (this frame's, this face alone), "label"}]}``; streamed to a temporary file and renamed at
  the end;
* ``annotated.mp4`` (with ``annotate``): the processed frames with boxes and labels, at the
  video's frame rate divided by ``every``;
* ``timeline.png``: each track's label over time;
* ``summary.json``: the input, frame counts, the model, the settings and per track its first and
  last time, seconds on screen (processed frames it was seen in x ``every`` / fps), the dominant
  label (the most frequent smoothed label) and the share of each label;
* ``results.json``, last: the finished-run marker with the counts.

A job that fails (a file truncated half-way, Ctrl-C) removes everything it wrote, so no
half-written folder is left; a folder holding a finished video run is refused. The only class
names any output carries are the model's task classes: nothing names a private attribute.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from privatenet.app.jobs import file_digest
from privatenet.errors import PrivatenetError, SettingError
from privatenet.readers import MAX_JSON_BYTES, read_bytes
from privatenet.settings import setting
from privatenet.storage import atomic_write_bytes, checkpoint_digest, write_json, write_yaml
from privatenet.train.rundir import open_disposable_run
from privatenet.video.annotate import draw_faces
from privatenet.video.classify import OnnxSplitClassifier, TorchClassifier, check_threads
from privatenet.video.detect import DETECTORS, make_detector
from privatenet.video.live import LiveReader
from privatenet.video.pipeline import FaceAnalyzer, analyze_video
from privatenet.video.reader import VideoReader, check_every
from privatenet.video.writer import VideoWriter, pick_codec

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_FILES", "open_classifier", "timeline_png", "video_job"]

#: The files a finished video run holds besides run.json / run.lock (results.json last).
OUTPUT_FILES = ("config.yaml", "frames.jsonl", "annotated.mp4", "timeline.png", "summary.json",
                "results.json")
#: Most tracks drawn in timeline.png (the longest ones); summary.json lists every track.
TIMELINE_TRACKS = 40


def open_classifier(model: str | os.PathLike, *, device: str = "cpu",
                    threads: int | None = None):
    """The classifier of ``model``: an export folder (``export.json``: ONNX Runtime, untrusted
    then trusted part) or a finished ``train`` run folder (or its ``model`` checkpoint stem:
    the torch network on ``device``). ``threads``: CPU threads of either backend (``None``:
    its default)."""
    path = Path(model)
    if path.is_dir() and (path / "export.json").exists():
        return OnnxSplitClassifier(path, threads=threads)
    stem = path / "model" if path.is_dir() else path
    if not stem.with_suffix(".json").is_file():
        what = "not found" if not path.exists() else (
            "neither a finished 'privatenet train' run (model.json) nor an export folder "
            "(export.json)")
        raise PrivatenetError(f"{path}: {what}; pass the folder of a finished 'privatenet "
                              "train' run or of a 'privatenet export'")
    clf = TorchClassifier.from_checkpoint(stem, device=device, threads=threads)
    clf._description["run"] = str(path)
    return clf


def _model_identity(classifier) -> str:
    """SHA-256 of what decides the classifier's outputs (the fingerprint's model)."""
    import hashlib

    config = classifier.config
    if config["backend"] == "onnx":
        return hashlib.sha256(read_bytes(Path(config["export"]) / "export.json",
                                         limit=MAX_JSON_BYTES)).hexdigest()
    run = Path(config["run"])
    return checkpoint_digest(run / "model" if run.is_dir() else run)


def timeline_png(tracks: dict[int, list[tuple[float, str]]], *, classes: tuple[str, ...],
                 step: float, title: str) -> bytes:
    """A PNG of each track's label over time: one row per track (the
    :data:`TIMELINE_TRACKS` longest), a bar of the label's colour per processed frame (``step``
    seconds wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = sorted(sorted(tracks, key=lambda t: -len(tracks[t]))[:TIMELINE_TRACKS])
    colours = {c: plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(i % 20)
               for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.35 * max(len(shown), 1)))
    for row, tid in enumerate(shown):
        # runs of consecutive processed frames with the same label become one bar
        runs: list[list] = []
        for t, label in tracks[tid]:
            if runs and runs[-1][2] == label and t - runs[-1][1] <= step * 1.5:
                runs[-1][1] = t
            else:
                runs.append([t, t, label])
        for label in classes:
            bars = [(a, b - a + step) for a, b, lab in runs if lab == label]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=colours[label])
    ax.set_yticks(range(len(shown)), [f"#{t}" for t in shown])
    ax.set_ylim(-0.6, max(len(shown), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("track")
    more = f" ({len(shown)} longest of {len(tracks)} tracks)" if len(shown) < len(tracks) else ""
    ax.set_title(title + more, fontsize=9)
    if not tracks:
        ax.text(0.5, 0.5, "no faces detected", transform=ax.transAxes, ha="center",
                va="center")
    ax.legend(handles=[Patch(color=colours[c], label=c) for c in classes], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _track_summary(tid: int, seen: list[tuple[float, str]], classes: tuple[str, ...],
                   seconds_per_frame: float, lasts: dict[float, float] | None = None) -> dict:
    """A track's times, frames and labels. Each processed frame stands for
    ``seconds_per_frame`` of video, or for ``lasts[time]`` where given (a live run, whose
    processed frames are as far apart as the pipeline's pace made them)."""
    counts = {c: 0 for c in classes}
    for _, label in seen:
        counts[label] += 1
    n = len(seen)
    dominant = max(classes, key=lambda c: counts[c])  # ties: the first class in order
    seconds = (n * seconds_per_frame if lasts is None
               else sum(lasts.get(t, seconds_per_frame) for t, _ in seen))
    return {"track": tid, "first": round(seen[0][0], 6), "last": round(seen[-1][0], 6),
            "seconds_on_screen": round(seconds, 6), "frames": n,
            "dominant": dominant, "shares": {c: round(counts[c] / n, 6) for c in classes}}


def _leftovers(folder: Path) -> list[Path]:
    """Our output files and temporary files in a claimed video run folder."""
    return [folder / name for name in OUTPUT_FILES] + [
        p for p in folder.glob(".*.tmp") if p.is_file()]


#: The defaults of ``privatenet video``'s detection, chosen by measured recall and frame rate
#: (docs/design.md §4.3, README "export and video").
DEFAULT_DETECTOR = "haar"
DETECT_SIDE: int | None = 320
DETECT_EVERY = 1


@dataclass
class VideoConfig:
    """How ``video`` goes over a file, checked on creation (the pipeline's own settings keep
    the library's defaults)."""

    every: int = setting(1, "process every N-th frame only (1: every frame)")
    detector: str = setting(DEFAULT_DETECTOR, "face detector: haar (OpenCV's cascade) or "
                                              "dlib-hog (dlib's HOG detector: pip install "
                                              "dlib-bin)", choices=tuple(DETECTORS))
    detect_side: int | None = setting(DETECT_SIDE, "run the detector on the frame shrunk to "
                                                   "this many pixels on its longer side (0: the "
                                                   "full frame)")
    detect_every: int = setting(DETECT_EVERY, "detect on every N-th processed frame; in "
                                              "between, classify each face where it was last "
                                              "found")
    annotate: bool = setting(False, "also write annotated.mp4: boxes, track ids and labels")
    live: bool = setting(False, "INPUT is a live source: a camera index (0), a device "
                                "(/dev/video0) or a stream URL; frames are analysed as they "
                                "arrive, the newest first, and those the pipeline cannot keep "
                                "up with are dropped (counted); Ctrl-C ends the run and keeps it")
    realtime: bool = setting(False, "play the video file at its own frame rate, as a camera "
                                    "would deliver it, dropping what the pipeline cannot keep "
                                    "up with (a rehearsal of a live run)")
    seconds: float | None = setting(None, "end a live or real-time run after this many "
                                          "seconds")
    threads: int | None = setting(None, "CPU threads of the classifier (unset: torch's or ONNX "
                                        "Runtime's, one per core; 1 is as fast on a face crop)")

    def __post_init__(self) -> None:
        check_every(self.every)
        check_every(self.detect_every, name="detect_every")
        if self.detector not in DETECTORS:
            raise SettingError("detector", self.detector,
                               f"is unknown; use one of {', '.join(DETECTORS)}")
        if self.detect_side == 0:  # the command line's way to say: the full frame
            self.detect_side = None
        if self.live and self.realtime:
            raise SettingError("realtime", True, "is for a video file; a {live} source comes "
                               "in real time already", mentions=("live",))
        if (self.live or self.realtime) and self.every != 1:
            raise SettingError("every", self.every, "is for files read as fast as they "
                               "decode; a live or real-time run drops what it cannot process")
        if self.seconds is not None and not (self.live or self.realtime):
            raise SettingError("seconds", self.seconds, "is for a {live} or {realtime} run",
                               mentions=("live", "realtime"))
        if not isinstance(self.annotate, bool):
            raise SettingError("annotate", self.annotate, "is invalid; give True or False")
        check_threads(self.threads)


def video_job(*, input: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
              annotate: bool = False, every: int = 1, detector=None,
              detect_side: int | None = DETECT_SIDE, detect_every: int = DETECT_EVERY,
              live: bool = False, realtime: bool = False, seconds: float | None = None,
              margin: float | None = None, alpha: float | None = None,
              iou_threshold: float | None = None, max_missed: int | None = None,
              device: str = "cpu", threads: int | None = None,
              on_frame: Callable[[int, int | None], None] | None = None) -> dict:
    """Run the video analytics pipeline over ``input`` with ``model`` into the run folder
    ``out`` (see the module docstring for the files); returns ``summary.json``'s content.

    ``model``: a finished ``train`` run folder (torch, on ``device``) or an export folder
    (ONNX Runtime). ``every``: process every N-th frame (the others are decoded but neither
    analysed nor recorded). ``detector``: a name of
    :data:`~privatenet.video.detect.DETECTORS` (default :data:`DEFAULT_DETECTOR`), run on the
    frame shrunk to ``detect_side`` pixels on its longer side (``None``: the full frame), or a
    :class:`~privatenet.video.detect.FaceDetector` object used as it is; ``detect_every``: the
    detector runs on every N-th processed frame (docs/design.md §4.3). ``live``: ``input`` is a
    camera index, a device or a stream URL (:class:`~privatenet.video.live.LiveReader`);
    ``realtime``: the file played at its frame rate the same way; ``seconds``: how long such a
    run lasts at most (Ctrl-C also ends it, keeping its records). ``margin``, ``alpha``,
    ``iou_threshold``, ``max_missed``: the pipeline's settings (``None``: the library's
    defaults). ``threads``: CPU threads of the classifier (``None``: torch's or ONNX Runtime's
    default). ``on_frame(frames_read, frames_announced_or_None)``: called after each processed
    frame (progress bars).
    """
    named = detector is None or isinstance(detector, str)
    video = VideoConfig(every=every, detector=detector if named and detector else
                        DEFAULT_DETECTOR, detect_side=detect_side, detect_every=detect_every,
                        annotate=bool(annotate), live=live, realtime=realtime,
                        seconds=seconds, threads=threads)
    if named:
        detector = make_detector(video.detector, side=video.detect_side)
    options = {k: v for k, v in {"margin": margin, "alpha": alpha,
                                 "iou_threshold": iou_threshold,
                                 "max_missed": max_missed}.items() if v is not None}
    # Every input is checked before the folder is claimed.
    reader = (LiveReader(input, seconds=seconds, pace=realtime) if live or realtime
              else VideoReader(input))
    try:
        classifier = open_classifier(model, device=device, threads=threads)
        analyzer = FaceAnalyzer(classifier=classifier, detector=detector,
                                detect_every=detect_every, **options)
        codec = pick_codec() if annotate else None
        settings = {"job": "video", "input": str(input), "model": str(model), "every": every,
                    "annotate": bool(annotate), **analyzer.config,
                    **({"live": live, "realtime": realtime, "seconds": seconds}
                       if live or realtime else {})}
        fingerprint = {"input": None if live else file_digest(input),
                       "model": _model_identity(classifier),
                       "settings": {k: v for k, v in settings.items()
                                    if k not in ("input", "model")}}
        with open_disposable_run(out, kind="video", what="video run",
                                 fingerprint=fingerprint, outputs=_leftovers) as run:
            summary = _run(run.path, reader=reader, analyzer=analyzer, settings=settings,
                           fingerprint=fingerprint, every=every, codec=codec,
                           on_frame=on_frame)
    finally:
        reader.close()
    return summary


def _run(folder: Path, *, reader: VideoReader | LiveReader, analyzer: FaceAnalyzer,
         settings: dict, fingerprint: dict, every: int, codec: str | None,
         on_frame: Callable[[int, int | None], None] | None) -> dict:
    """The work of :func:`video_job` inside its claimed folder."""
    classifier, classes, info = analyzer.classifier, analyzer.classes, reader.info
    write_yaml(folder / "config.yaml", settings)
    start = time.perf_counter()
    tracks: dict[int, list[tuple[float, str]]] = {}
    processed = faces = 0
    times: list[float] = []  # of the processed frames
    frames_tmp = folder / ".frames.jsonl.tmp"
    video_tmp = folder / ".annotated.mp4.tmp"
    writer = None
    with open(frames_tmp, "w", encoding="utf-8") as lines:
        try:
            if codec is not None:
                writer = VideoWriter(video_tmp, fps=info.fps / every, width=info.width,
                                     height=info.height, codec=codec, format="mp4")
            try:
                for result in analyze_video(reader, analyzer=analyzer, every=every,
                                            on_frame=on_frame):
                    lines.write(json.dumps(result.as_record(classes)) + "\n")
                    processed += 1
                    times.append(result.time)
                    faces += len(result.faces)
                    for face in result.faces:
                        tracks.setdefault(face.track, []).append((result.time, face.label))
                    if writer is not None:
                        writer.write(draw_faces(result.image, result.faces))
            except KeyboardInterrupt:  # how a camera run ends: keep what it analysed
                if not isinstance(reader, LiveReader):
                    raise
                log.info("live run ended by Ctrl-C after %d processed frames", processed)
            if writer is not None:
                writer.close()
        finally:
            if writer is not None:
                writer.close(flush=False)
        lines.flush()
        os.fsync(lines.fileno())
    seconds = time.perf_counter() - start
    os.replace(frames_tmp, folder / "frames.jsonl")
    if writer is not None:
        os.replace(video_tmp, folder / "annotated.mp4")
    step = every / info.fps
    # a live run's frames last until the next one it processed (the dropped ones between)
    lasts = ({t: nxt - t for t, nxt in zip(times, times[1:], strict=False)}
             if isinstance(reader, LiveReader) else None)
    name = Path(info.path).name
    atomic_write_bytes(folder / "timeline.png", timeline_png(
        tracks, classes=classes, step=step,
        title=f"{name}: label per track ({classifier.config.get('target') or 'task'})"))
    summary = {
        "input": {**info.as_dict(), "sha256": fingerprint["input"]},
        "fps": info.fps,
        "frames_read": reader.read,
        "frames_processed": processed,
        "every": every,
        "faces": faces,
        "model": classifier.config,
        **{k: v for k, v in settings.items() if k in ("detector", "detect_every", "tracker",
                                                      "margin", "smoothing")},
        "tracks": [_track_summary(t, tracks[t], classes, step, lasts) for t in sorted(tracks)],
        **({"live": reader.stats()} if isinstance(reader, LiveReader) else {}),
        "processing": {"seconds": round(seconds, 3),
                       "frames_read_per_s": round(reader.read / seconds, 2) if seconds else None,
                       "frames_processed_per_s":
                           round(processed / seconds, 2) if seconds else None},
        "files": [f for f in OUTPUT_FILES if f != "annotated.mp4" or writer is not None],
    }
    write_json(folder / "summary.json", summary)
    write_json(folder / "results.json", {
        "frames_read": reader.read, "frames_processed": processed, "faces": faces,
        "tracks": len(tracks), "summary": "summary.json"})
    log.info("video: %d of %d frames processed, %d faces in %d tracks, %.1f s", processed,
             reader.read, faces, len(tracks), seconds)
    return summary
