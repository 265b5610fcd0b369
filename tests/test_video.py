"""``privatenet video``: read a clip, detect faces, track them, classify each face on its own.

The clips are made here: synthfaces faces drawn into moving 160x120 frames and written with PyAV
(not with the library's writer, so that the reader is checked against independent files).
OpenCV's Haar cascade detects only part of the synthfaces faces (about half of 80-px faces on
a grey background; drawn faces are not what it was trained on), so the clip tests use faces it
is checked to detect on every frame of their path (:func:`_detected_faces`): they show that the
pipeline works on faces the cascade finds, not how often it finds real faces. Tracking and
smoothing logic is also tested with a scripted detector that does not depend on the cascade.
The model is a ``small_cnn`` trained for one epoch on tiny synthfaces with an HSIC privacy term
on gender, so its run folder does name a private attribute: the outputs must not.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from cli_helpers import fails  # noqa: E402

from privatenet.cli import main  # noqa: E402
from privatenet.data.labels import AGE_GROUPS, EMOTIONS, GENDERS  # noqa: E402
from privatenet.errors import PrivatenetError  # noqa: E402
from privatenet.video import (  # noqa: E402
    Detection,
    DlibHogDetector,
    Downscaled,
    EmaSmoother,
    FaceAnalyzer,
    HaarFaceDetector,
    IoUTracker,
    OnnxSplitClassifier,
    TorchClassifier,
    VideoReader,
    analyze_video,
    crop_box,
    crop_faces,
    iou,
    make_detector,
)
from privatenet.video.live import LiveReader, NewestFrame, live_source  # noqa: E402
from privatenet.video.reader import Frame  # noqa: E402

W, H, FPS = 160, 120, 15
GREY = 128


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs: one intra-op thread is fastest and keeps the machine's load light."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- clips

def _write(path: Path, frames: list[np.ndarray], *, fps: int = FPS, codec: str = "libx264",
           options: dict | None = None, container_options: dict | None = None) -> Path:
    """Write RGB frames with PyAV directly."""
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = options if options is not None else (
            {"crf": "12"} if codec == "libx264" else {"qscale": "2"} if codec == "mpeg4"
            else {})
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _frame(faces: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """A grey 160x120 frame with ``(face HxWx3, x, y)`` pasted in."""
    frame = np.full((H, W, 3), GREY, np.uint8)
    for face, x, y in faces:
        frame[y:y + face.shape[0], x:x + face.shape[1]] = face
    return frame


def _inside(box, x: int, y: int, side: int) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return x <= cx < x + side and y <= cy < y + side


def _detected_faces(size: int, paths: list[list[tuple[int, int]]], count: int) -> list:
    """``count`` synthfaces faces (seed 0) that the Haar cascade finds exactly once, centred in
    the face, at every position of each of ``paths`` (a path per face, alone in the frame)."""
    from privatenet.data.synthfaces import make_synthfaces

    detector = HaarFaceDetector()
    faces = make_synthfaces(n=60, size=size, seed=0).splits["train"].images
    chosen: list[np.ndarray] = []
    for face in faces.numpy().transpose(0, 2, 3, 1):
        path = paths[len(chosen)]
        ok = True
        for x, y in path:
            found = detector.detect(_frame([(face, x, y)]))
            if len(found) != 1 or not _inside(found[0].box, x, y, size):
                ok = False
                break
        if ok:
            chosen.append(np.ascontiguousarray(face))
            if len(chosen) == count:
                return chosen
    raise AssertionError(f"fewer than {count} synthfaces faces of {size} px are detected")


N_FRAMES = 24
PATH_ONE = [(4 + 3 * i, 20) for i in range(N_FRAMES)]           # 80 px, moving right
PATH_A = [(2 + i // 2, 28) for i in range(N_FRAMES)]             # 64 px, moving right
PATH_B = [(94 - i // 2, 28) for i in range(N_FRAMES)]            # 64 px, moving left


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One-face, two-face, no-face clips (mp4, libx264) and the faces drawn in them."""
    root = tmp_path_factory.mktemp("clips")
    (one,) = _detected_faces(80, [PATH_ONE], 1)
    a, b = _detected_faces(64, [PATH_A, PATH_B], 2)
    rng = np.random.default_rng(0)
    noise = [np.clip(GREY + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)
             for _ in range(10)]
    return {
        "one": _write(root / "one.mp4", [_frame([(one, x, y)]) for x, y in PATH_ONE]),
        "two": _write(root / "two.mp4", [_frame([(a, *pa), (b, *pb)])
                                         for pa, pb in zip(PATH_A, PATH_B, strict=True)]),
        "none": _write(root / "none.mp4", noise),
        "faces": {"one": one, "a": a, "b": b},
        "root": root,
    }


# ---------------------------------------------------------------- models

@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A small_cnn trained for one epoch on 32-px synthfaces, with an HSIC term on gender."""
    from privatenet.app.jobs import train_job
    from privatenet.data.synthfaces import make_synthfaces
    from privatenet.train.config import TrainConfig

    out = tmp_path_factory.mktemp("models") / "train"
    train_job(data=make_synthfaces(n=120, size=32, seed=0), out=out, model="small_cnn",
              target="emotion", config=TrainConfig(epochs=1, batch_size=32, device="cpu"),
              privacy={"loss": "hsic", "tap": "pool", "private": "gender", "lam": 0.5})
    assert "gender" in (out / "config.yaml").read_text()  # the run does know the attribute
    return out


class _Untrusted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_taps(x)[1]["pool"]


class _Trusted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, f):
        return self.net.forward_from("pool", f)


def _onnx_bytes(module: torch.nn.Module, example: torch.Tensor, names: tuple[str, str]
                ) -> bytes:
    """``module`` as ONNX with a dynamic batch (the TorchScript exporter: fast; torch.export
    where it is gone)."""
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, dynamo=False, input_names=[names[0]],
                              output_names=[names[1]],
                              dynamic_axes={names[0]: {0: "N"}, names[1]: {0: "N"}})
            return buf.getvalue()
        except Exception:
            program = torch.onnx.export(module, (example,), dynamo=True, report=False,
                                        input_names=[names[0]], output_names=[names[1]],
                                        dynamic_shapes=({0: torch.export.Dim("N")},))
            return program.model_proto.SerializeToString()


@pytest.fixture(scope="module")
def export_dir(train_run, tmp_path_factory):
    """The trained network split by hand at its 'pool' tap into two ONNX files, with an
    export.json per the contract of 'privatenet export' (format 1)."""
    pytest.importorskip("onnxruntime")
    from privatenet.app.jobs import load_model, model_meta

    net, _ = load_model(train_run)
    net.eval()
    meta = model_meta(train_run)
    size = meta["image_size"]
    out = tmp_path_factory.mktemp("models") / "export"
    out.mkdir()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = _Untrusted(net)(x)
    (out / "untrusted.onnx").write_bytes(_onnx_bytes(_Untrusted(net).eval(), x,
                                                     ("image", "features")))
    (out / "trusted.onnx").write_bytes(_onnx_bytes(_Trusted(net).eval(), feats,
                                                   ("features", "logits")))
    doc = {"format": 1,
           "input": {"size": size, "channels": 3, "mean": [0.485, 0.456, 0.406],
                     "std": [0.229, 0.224, 0.225], "dtype": "float32", "layout": "NCHW"},
           "classes": meta["classes"], "target": meta["target"], "tap": "pool",
           "parts": {"untrusted": {"file": "untrusted.onnx", "input_name": "image",
                                   "output_name": "features"},
                     "trusted": {"file": "trusted.onnx", "input_name": "features",
                                 "output_name": "logits"}}}
    (out / "export.json").write_text(json.dumps(doc))
    return out


def _video(capsys, *args) -> tuple[int, str, str]:
    code = main(["video", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_run(clips, train_run, tmp_path_factory):
    """``privatenet video one.mp4 --annotate`` with the torch model, run once."""
    out = tmp_path_factory.mktemp("video") / "one"
    assert main(["video", str(clips["one"]), "--model", str(train_run), "--out", str(out),
                 "--annotate"]) == 0
    return out


# ---------------------------------------------------------------- reader

@pytest.mark.parametrize("suffix, codec", [("mp4", "libx264"), ("avi", "mpeg4"),
                                           ("mkv", "libx264"), ("webm", "libvpx-vp9")])
def test_reader_reads_every_container(tmp_path, suffix, codec):
    frames = [np.full((H, W, 3), 20 * i, np.uint8) for i in range(12)]
    path = _write(tmp_path / f"c.{suffix}", frames, codec=codec,
                  options={} if codec == "libvpx-vp9" else None)
    with VideoReader(path) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps) == (W, H, FPS)
        got = list(reader.frames())
        assert reader.read == 12
    assert [f.index for f in got] == list(range(12))
    assert [f.time for f in got] == pytest.approx([i / FPS for i in range(12)], abs=2e-3)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in got)
    means = [float(f.image.mean()) for f in got]
    assert means == pytest.approx([20 * i for i in range(12)], abs=4)  # the right frames
    with VideoReader(path) as reader:
        every = list(reader.frames(every=5))
        assert [f.index for f in every] == [0, 5, 10] and reader.read == 12


# ---------------------------------------------------------------- detector, tracker, crops

def test_haar_cascade_detects_the_clip_faces_after_encoding(clips):
    """The cascade is checked on raw frames when the faces are chosen; here on the decoded
    H.264 frames: one face on every frame, centred in the drawn face."""
    detector = HaarFaceDetector()
    with VideoReader(clips["one"]) as reader:
        for frame, (x, y) in zip(reader.frames(), PATH_ONE, strict=True):
            found = detector.detect(frame.image)
            assert len(found) == 1 and _inside(found[0].box, x, y, 80)
            x0, y0, x1, y1 = found[0].box
            assert 30 <= x1 - x0 <= 80 and found[0].score >= 5


def test_haar_cascade_finds_nothing_in_noise_and_takes_only_rgb_frames():
    detector = HaarFaceDetector()
    rng = np.random.default_rng(1)
    assert detector.detect(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(np.zeros((H, W), np.uint8))
    with pytest.raises(PrivatenetError, match="min_neighbors"):
        HaarFaceDetector(min_neighbors=-1)


def test_iou_and_greedy_tracker():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0
    t = IoUTracker(iou_threshold=0.3, max_missed=2)
    assert t.update([(0, 0, 10, 10), (50, 50, 60, 60)]) == [1, 2]
    # moved a little: same ids, whatever the order of the detections
    assert t.update([(52, 50, 62, 60), (2, 0, 12, 10)]) == [2, 1]
    # greedy: the pair of highest IoU wins; the other detection starts track 3
    assert t.update([(3, 0, 13, 10), (2, 0, 12, 10)]) == [3, 1]
    # a jump (IoU < 0.3) is a new track
    assert t.update([(30, 0, 40, 10)]) == [4]
    # a track unmatched for more than max_missed=2 processed frames in a row ends: track 2
    # (unmatched since the third update) now, tracks 1 and 3 one frame later
    assert t.update([(30, 0, 40, 10)]) == [4]
    assert set(t.tracks) == {1, 3, 4} and t.ended == [2]
    t.update([(30, 0, 40, 10)])
    assert set(t.tracks) == {4} and sorted(t.ended) == [1, 3]
    # ids are never reused
    assert t.update([(0, 0, 10, 10)]) == [5]
    with pytest.raises(PrivatenetError, match="iou_threshold"):
        IoUTracker(iou_threshold=0)


def test_ema_smoother():
    s = EmaSmoother(alpha=0.25)
    assert s.update(1, [1.0, 0.0]) == pytest.approx([1.0, 0.0])  # starts at the first value
    assert s.update(1, [0.0, 1.0]) == pytest.approx([0.75, 0.25])
    assert s.update(2, [0.0, 1.0]) == pytest.approx([0.0, 1.0])  # per key
    s.forget([1])
    assert s.update(1, [0.0, 1.0]) == pytest.approx([0.0, 1.0])
    assert EmaSmoother(alpha=1).update(1, [0.2, 0.8]) == pytest.approx([0.2, 0.8])
    with pytest.raises(PrivatenetError, match="alpha"):
        EmaSmoother(alpha=0)


def test_crop_margin_clipping_and_size():
    frame = np.zeros((H, W, 3), np.uint8)
    frame[40:60, 50:70] = 200
    # a 20-px box with a 20 % margin: a 28-px square around the same centre
    assert crop_box((50, 40, 70, 60), width=W, height=H, margin=0.2) == (46, 36, 74, 64)
    assert crop_box((0, 0, 20, 20), width=W, height=H, margin=0.2) == (0, 0, 24, 24)  # clipped
    assert crop_box((150, 110, 160, 120), width=W, height=H, margin=0.5) == (145, 105, 160,
                                                                             120)
    crops = crop_faces(frame, [(50, 40, 70, 60), (0, 0, 20, 20)], size=32, margin=0.2)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == np.uint8
    assert crops[0, :, 16, 16].tolist() == [200] * 3 and crops[0, :, 0, 0].tolist() == [0] * 3
    assert crop_faces(frame, [], size=32).shape == (0, 3, 32, 32)


class _Script:
    """A detector that returns scripted detections, one list per call."""

    def __init__(self, frames: list[list[tuple]]):
        self.frames = iter(frames)

    def detect(self, frame):
        return [Detection(box, 1.0) for box in next(self.frames)]


class _Fixed:
    """A classifier that answers a probability vector given by the crop's mean brightness."""

    classes = ("a", "b")
    image_size = 8
    config = {"backend": "fake"}

    def predict_proba(self, crops):
        bright = crops.reshape(len(crops), -1).mean(1) / 255
        return np.stack([bright, 1 - bright], 1).astype(np.float32)


def test_pipeline_tracks_and_smooths_with_a_scripted_detector():
    """Tracking and smoothing through FaceAnalyzer, independent of the cascade."""
    box1 = [(10 + 4 * i, 10, 50 + 4 * i, 50) for i in range(5)]
    script = [[box1[0]], [box1[1], (100, 60, 140, 100)], [box1[2]], [], [box1[3]], [box1[4]]]
    analyzer = FaceAnalyzer(classifier=_Fixed(), detector=_Script(script), alpha=0.5,
                            max_missed=1)
    frames = [np.full((H, W, 3), v, np.uint8) for v in (255, 0, 0, 0, 0, 0)]
    out = [analyzer.process(f) for f in frames]
    assert [[f.track for f in faces] for faces in out] == [[1], [1, 2], [1], [], [1], [1]]
    # raw is this frame's answer; probs the per-track EMA (alpha 0.5) of the raw answers
    assert out[0][0].raw == pytest.approx([1, 0]) and out[0][0].label == "a"
    assert out[1][0].probs == pytest.approx([0.5, 0.5])
    assert out[2][0].probs == pytest.approx([0.25, 0.75]) and out[2][0].label == "b"
    assert out[1][1].probs == pytest.approx([0, 1])


def test_detection_every_n_frames_carries_the_faces_in_between():
    calls = []

    class Counting(_Script):
        def detect(self, frame):
            calls.append(int(frame[0, 0, 0]))
            return super().detect(frame)

    box = (10, 10, 50, 50)
    analyzer = FaceAnalyzer(classifier=_Fixed(), detector=Counting([[box], [], [box]]),
                            detect_every=3)
    out = [analyzer.process(np.full((H, W, 3), i, np.uint8)) for i in range(7)]
    assert calls == [0, 3, 6]  # the detector saw frames 0, 3 and 6 only
    # frames 1-2 classify the face found on frame 0 where it was; frame 3 found none, so
    # frames 3-5 have none; frame 6 finds it again
    assert [[f.box for f in faces] for faces in out] == [[box]] * 3 + [[]] * 3 + [[box]]
    assert out[1][0].raw == pytest.approx([1 / 255, 254 / 255])  # this frame's crop, anew
    assert analyzer.config["detect_every"] == 3
    with pytest.raises(PrivatenetError, match="detect_every=0 is invalid"):
        FaceAnalyzer(classifier=_Fixed(), detector=Counting([]), detect_every=0)


def test_a_downscaled_detector_sees_a_small_frame_and_reports_full_size_boxes():
    seen = []

    class Half:
        def detect(self, frame):
            seen.append(frame.shape)
            return [Detection((10, 20, 30, 40), 2.0)]

    det = Downscaled(Half(), side=320)
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == [Detection((20, 40, 60, 80), 2.0)]
    assert seen == [(240, 320, 3)]
    # a frame no larger than the side is passed as it is
    assert det.detect(np.zeros((200, 300, 3), np.uint8)) == [Detection((10, 20, 30, 40), 2.0)]
    with pytest.raises(PrivatenetError, match="detect_side=16 is invalid"):
        Downscaled(Half(), side=16)
    with pytest.raises(PrivatenetError, match="detector='nope' is unknown"):
        make_detector("nope")


def test_dlib_hog_detector_finds_nothing_in_noise():
    pytest.importorskip("dlib")
    detector = make_detector("dlib-hog")
    rng = np.random.default_rng(1)
    assert detector.detect(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) == []
    assert detector.config == {"name": "dlib-hog", "upsample": 0}
    with pytest.raises(PrivatenetError, match="upsample=3 is invalid"):
        DlibHogDetector(upsample=3)


def test_video_detection_settings_reach_the_summary(clips, train_run, tmp_path, capsys):
    code, out, err = _video(capsys, clips["one"], "--run", train_run, "--out", tmp_path / "o",
                            "--detect-side", "0", "--detect-every", "2")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["detector"] == {**HaarFaceDetector().config}  # the full frame: no side
    code, _, err = _video(capsys, clips["one"], "--run", train_run, "--out", tmp_path / "p")
    assert code == 0, err
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["detector"]["detect_side"] == 320  # the default
    code, _, err = _video(capsys, clips["one"], "--run", train_run, "--out", tmp_path / "q",
                          "--detector", "nope")
    assert code == 2 and "--detector" in err and not (tmp_path / "q").exists()


def test_the_newest_frame_slot_drops_what_was_not_taken():
    slot = NewestFrame()
    frames = [Frame(index=i, time=i / 10, image=np.zeros((2, 2, 3), np.uint8)) for i in range(3)]
    for i, f in enumerate(frames):
        slot.put(f, float(i))
    frame, arrived = slot.take()
    assert (frame.index, arrived, slot.dropped) == (2, 2.0, 2)
    slot.put(frames[0], 5.0)
    slot.finish()
    assert slot.take()[0].index == 0 and slot.take() is None  # the last frame, then the end


def test_live_sources_are_cameras_devices_or_urls():
    assert live_source(0) == ("/dev/video0", "v4l2") == live_source("0")
    assert live_source("/dev/video2") == ("/dev/video2", "v4l2")
    assert live_source("rtsp://cam.local/stream") == ("rtsp://cam.local/stream", None)
    for bad in ("clip.mp4", -1):
        with pytest.raises(PrivatenetError, match="live="):
            live_source(bad)


def test_a_slow_consumer_of_a_live_source_gets_the_newest_frames(clips):
    # the clip played as a camera delivers it; the consumer takes three frame intervals a frame
    with LiveReader(clips["one"], pace=True) as reader:
        taken = []
        for frame in reader.frames():
            taken.append(frame.index)
            time.sleep(3 / FPS)
        stats = reader.stats()
    total = VideoReader(clips["one"]).info.frames
    assert stats["frames_decoded"] == total
    assert len(taken) + stats["frames_dropped"] == total and stats["frames_dropped"] > 0
    assert taken == sorted(taken)  # newest first, never an older frame after a newer one
    # the delay stays one processing time, not the whole backlog (which would reach seconds)
    assert stats["delay_s_max"] < 1.0


def test_video_realtime_run_records_what_it_dropped(clips, train_run, tmp_path, capsys):
    code, out, err = _video(capsys, clips["one"], "--run", train_run, "--out", tmp_path / "o",
                            "--realtime")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    live = summary["live"]
    assert live["frames_decoded"] == summary["frames_read"]
    assert summary["frames_processed"] + live["frames_dropped"] == live["frames_decoded"]
    # each processed frame lasts until the next one processed: the face is on screen throughout
    on_screen = sum(t["seconds_on_screen"] for t in summary["tracks"])
    assert on_screen == pytest.approx(live["frames_decoded"] / FPS, abs=3 / FPS)
    for argv, needle in ((["--seconds", "2"], "--seconds 2.0 is for a --live or --realtime"),
                         (["--realtime", "--every", "2"], "--every 2 is for files"),
                         (["--live", "--realtime"], "--realtime is for a video file")):
        code, _, err = _video(capsys, clips["one"], "--run", train_run, "--out",
                              tmp_path / "x", *argv)
        assert code == 2 and needle in err, err
    code, _, err = _video(capsys, "7", "--live", "--run", train_run, "--out", tmp_path / "x")
    assert code == 2 and "/dev/video7: cannot open the live source" in err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- one face never depends on another

def test_classifiers_are_batch_independent():
    """Registry ARM models in eval mode (running affinity) are batch-independent; a model in the
    public 'batch' affinity mode is not, so TorchClassifier runs its crops one at a time."""
    from privatenet.models import create_model

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 3, 48, 48), dtype=np.uint8)
    for affinity in ("running", "batch"):
        torch.manual_seed(0)
        net = create_model("arm_small", num_classes=7, image_size=48, affinity=affinity)
        if affinity == "batch":  # the network itself mixes the batch ...
            from privatenet.data.transforms import normalize

            x = normalize(torch.from_numpy(crops))
            with torch.no_grad():
                assert (net.eval()(x)[:1] - net(x[:1])).abs().max() > 1e-5
        clf = TorchClassifier(net, classes=EMOTIONS, image_size=48)
        assert clf.batch_independent == (affinity == "running")
        together = clf.predict_proba(crops)
        for i in range(3):  # ... but each face's answer is its own
            assert np.abs(clf.predict_proba(crops[i:i + 1])[0] - together[i]).max() < 1e-6
        assert together.sum(1) == pytest.approx(np.ones(3), abs=1e-5)


def test_a_face_gets_the_same_answer_with_or_without_another_face(clips, train_run):
    from privatenet.app.video_job import open_classifier

    a, b = clips["faces"]["a"], clips["faces"]["b"]
    clf = open_classifier(train_run)
    for pa, pb in zip(PATH_A[::6], PATH_B[::6], strict=True):
        both = FaceAnalyzer(classifier=clf).process(_frame([(a, *pa), (b, *pb)]))
        alone = FaceAnalyzer(classifier=clf).process(_frame([(a, *pa)]))
        assert len(both) == 2 and len(alone) == 1
        assert both[0].box == alone[0].box  # the premise: the same box for face a
        assert np.abs(both[0].raw - alone[0].raw).max() < 1e-6


# ---------------------------------------------------------------- the job through the CLI

def _strings(value) -> set[str]:
    """Every key and string value in a JSON document."""
    if isinstance(value, dict):
        return set(map(str, value)) | set().union(*map(_strings, value.values()))
    if isinstance(value, list):
        return set().union(set(), *map(_strings, value))
    return {value} if isinstance(value, str) else set()


PRIVATE_NAMES = {"gender", "age", "race", *GENDERS, *AGE_GROUPS}


def test_one_moving_face_is_one_track(one_run, train_run):
    records = _records(one_run)
    assert [r["index"] for r in records] == list(range(N_FRAMES))
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(N_FRAMES)],
                                                         abs=2e-3)
    assert all(len(r["faces"]) == 1 for r in records)
    assert {r["faces"][0]["track"] for r in records} == {1}
    lefts = [r["faces"][0]["box"][0] for r in records]
    assert lefts[-1] - lefts[0] == pytest.approx(3 * (N_FRAMES - 1), abs=8)  # it moved right
    for r in records:
        face = r["faces"][0]
        assert list(face["probs"]) == list(EMOTIONS) == list(face["raw"])
        assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-4)
        assert face["label"] == max(face["probs"], key=face["probs"].get)
    summary = json.loads((one_run / "summary.json").read_text())
    assert (summary["frames_read"], summary["frames_processed"]) == (N_FRAMES, N_FRAMES)
    assert summary["fps"] == FPS and summary["model"]["backend"] == "torch"
    (track,) = summary["tracks"]
    assert track["track"] == 1 and track["frames"] == N_FRAMES
    assert track["first"] == 0 and track["last"] == pytest.approx((N_FRAMES - 1) / FPS, abs=2e-3)
    assert track["seconds_on_screen"] == pytest.approx(N_FRAMES / FPS)
    assert sum(track["shares"].values()) == pytest.approx(1)
    assert track["dominant"] == max(track["shares"], key=track["shares"].get)
    assert (one_run / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with VideoReader(one_run / "annotated.mp4") as reader:
        frames = list(reader.frames())
        assert len(frames) == N_FRAMES and reader.info.fps == FPS
    assert json.loads((one_run / "results.json").read_text())["tracks"] == 1
    assert not list(one_run.glob(".*.tmp"))


def test_no_output_names_a_private_attribute(one_run):
    """The model's run folder names gender (its privacy term); the video outputs name only the
    task's classes."""
    docs = [json.loads((one_run / name).read_text()) for name in ("summary.json",
                                                                  "results.json")]
    docs += _records(one_run)
    import yaml

    docs.append(yaml.safe_load((one_run / "config.yaml").read_text()))
    written = set().union(*map(_strings, docs))
    assert not written & PRIVATE_NAMES
    assert set(written) & set(EMOTIONS)
    summary = docs[0]
    assert summary["model"]["classes"] == list(EMOTIONS)
    for t in summary["tracks"]:
        assert list(t["shares"]) == list(EMOTIONS) and t["dominant"] in EMOTIONS
    for r in _records(one_run):
        assert all(f["label"] in EMOTIONS for f in r["faces"])


def test_two_faces_two_tracks_and_every(clips, train_run, tmp_path, capsys):
    out = tmp_path / "two"
    code, stdout, _ = _video(capsys, clips["two"], "--model", train_run, "--out", out,
                             "--every", "3", "--annotate", "--threads", "1")
    assert code == 0 and "2 tracks" in stdout
    records = _records(out)
    assert [r["index"] for r in records] == list(range(0, N_FRAMES, 3))
    for r in records:
        ids = [f["track"] for f in sorted(r["faces"], key=lambda f: f["box"][0])]
        assert ids == [1, 2]  # the left face is always track 1, the right one track 2
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_read"], summary["frames_processed"]) == (N_FRAMES, N_FRAMES // 3)
    assert [t["seconds_on_screen"] for t in summary["tracks"]] == pytest.approx(
        [N_FRAMES / FPS] * 2)
    with VideoReader(out / "annotated.mp4") as reader:
        assert len(list(reader.frames())) == N_FRAMES // 3 and reader.info.fps == FPS / 3


def test_no_face_clip_gives_empty_records(clips, train_run, tmp_path, capsys):
    out = tmp_path / "none"
    code, stdout, _ = _video(capsys, clips["none"], "--model", train_run, "--out", out)
    assert code == 0 and "0 tracks" in stdout
    records = _records(out)
    assert len(records) == 10 and all(r["faces"] == [] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracks"] == [] and summary["faces"] == 0
    assert (out / "timeline.png").stat().st_size > 0 and not (out / "annotated.mp4").exists()


def test_onnx_export_folder_agrees_with_torch(clips, train_run, export_dir, one_run,
                                              tmp_path, capsys):
    out = tmp_path / "onnx"
    code, _, _ = _video(capsys, clips["one"], "--model", export_dir, "--out", out,
                        "--annotate")
    assert code == 0
    torch_records, onnx_records = _records(one_run), _records(out)
    assert len(onnx_records) == len(torch_records) == N_FRAMES
    worst = 0.0
    for t, o in zip(torch_records, onnx_records, strict=True):
        assert [f["box"] for f in t["faces"]] == [f["box"] for f in o["faces"]]
        assert [f["track"] for f in t["faces"]] == [f["track"] for f in o["faces"]]
        assert [f["label"] for f in t["faces"]] == [f["label"] for f in o["faces"]]
        for ft, fo in zip(t["faces"], o["faces"], strict=True):
            for key in ("raw", "probs"):
                worst = max(worst, max(abs(ft[key][c] - fo[key][c]) for c in EMOTIONS))
    assert worst < 1e-4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["backend"] == "onnx" and summary["model"]["tap"] == "pool"
    assert not set().union(_strings(summary)) & PRIVATE_NAMES


def test_export_folder_problems_are_one_line(export_dir, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    doc = json.loads((bad / "export.json").read_text())
    (bad / "export.json").write_text(json.dumps({**doc, "format": 2}))
    with pytest.raises(PrivatenetError, match="format 2 is not supported"):
        OnnxSplitClassifier(bad)
    (bad / "export.json").write_text(json.dumps({**doc, "input": {**doc["input"],
                                                                  "mean": [0.5]}}))
    with pytest.raises(PrivatenetError, match="input.mean"):
        OnnxSplitClassifier(bad)
    (bad / "export.json").write_text(json.dumps(
        {**doc, "parts": {**doc["parts"], "trusted": {**doc["parts"]["trusted"],
                                                      "sha256": "0" * 64}}}))
    with pytest.raises(PrivatenetError, match="SHA-256"):
        OnnxSplitClassifier(bad)
    (bad / "export.json").write_text(json.dumps(doc))
    (bad / "trusted.onnx").unlink()
    with pytest.raises(PrivatenetError, match="trusted.onnx: not found"):
        OnnxSplitClassifier(bad)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PrivatenetError, match=r'pip install -e "\.\[deploy\]"'):
        OnnxSplitClassifier(export_dir)


def test_edited_export_json_fields_are_one_line(export_dir, clips, tmp_path, capsys):
    """export.json has no hash of its own: an edited input size, class list, file name or
    SHA-256 is checked against the ONNX files (the shapes they declare) and the package's
    ranges when the folder is opened, never left to ONNX Runtime."""
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    doc = json.loads((bad / "export.json").read_text())
    size = doc["input"]["size"]
    out = tmp_path / "o"
    cases = [
        ({"input": {**doc["input"], "size": size + 16}},
         f"input.size {size + 16} (3 x {size + 16} x {size + 16}) does not fit the shape "
         f"['N', 3, {size}, {size}] that untrusted.onnx declares"),
        ({"input": {**doc["input"], "size": 2048}}, "input.size 2048 is not an image side"),
        ({"classes": [*doc["classes"], "extra"]},
         f"{len(doc['classes']) + 1} classes does not fit the shape"),
        ({"parts": {**doc["parts"], "trusted": {**doc["parts"]["trusted"], "sha256": 5}}},
         "parts.trusted.sha256 5 is not a SHA-256"),
        ({"parts": {**doc["parts"], "untrusted": {**doc["parts"]["untrusted"],
                                                  "file": "../export/untrusted.onnx"}}},
         "is not a file name in the export folder"),
    ]
    for change, needle in cases:
        (bad / "export.json").write_text(json.dumps({**doc, **change}))
        with pytest.raises(PrivatenetError, match="export") as e:
            OnnxSplitClassifier(bad)
        assert needle in str(e.value) and str(bad / "export.json") in str(e.value)
    # through the command line: one line, exit 2, nothing written
    (bad / "export.json").write_text(json.dumps({**doc, **cases[0][0]}))
    fails(capsys, ["video", str(clips["one"]), "--model", str(bad), "--out", str(out)],
          "export.json", "input.size", "export the model again")
    assert not out.exists()


def test_library_progress_callback(clips, train_run):
    from privatenet.app.video_job import open_classifier

    seen = []
    analyzer = FaceAnalyzer(classifier=open_classifier(train_run))
    results = list(analyze_video(clips["one"], analyzer=analyzer, every=4,
                                 on_frame=lambda read, total: seen.append((read, total))))
    assert [r.index for r in results] == [0, 4, 8, 12, 16, 20]
    assert seen == [(1, N_FRAMES), (5, N_FRAMES), (9, N_FRAMES), (13, N_FRAMES),
                    (17, N_FRAMES), (21, N_FRAMES)]


# ---------------------------------------------------------------- bad inputs

def _faststart(clips, tmp_path) -> bytes:
    """The one-face clip with its index first (movflags faststart): a cut file still opens."""
    with VideoReader(clips["one"]) as reader:
        frames = [f.image for f in reader.frames()]
    return _write(tmp_path / "fs.mp4", frames,
                  container_options={"movflags": "faststart"}).read_bytes()


@pytest.mark.parametrize("case", ["random", "empty", "missing", "text", "png", "cut_index",
                                  "cut_frames", "cut_mkv", "cut_avi", "folder"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, clips, train_run, tmp_path,
                                                          capsys):
    path = tmp_path / {"text": "notes.mp4", "png": "still.png", "cut_mkv": "cut.mkv",
                       "cut_avi": "cut.avi", "folder": "dir.mp4"}.get(case, "clip.mp4")
    data = clips["one"].read_bytes()
    if case == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not a video\n" * 50)
    elif case == "png":
        from PIL import Image

        Image.fromarray(clips["faces"]["one"]).save(path)
    elif case == "cut_index":  # mp4 with its index at the end, cut: the index is gone
        path.write_bytes(data[:len(data) * 6 // 10])
    elif case == "cut_frames":  # index first, cut: frames are missing
        fs = _faststart(clips, tmp_path)
        path.write_bytes(fs[:len(fs) * 7 // 10])
    elif case in ("cut_mkv", "cut_avi"):
        # mkv announces no frame count (its duration tells), avi does (no decode error)
        with VideoReader(clips["one"]) as reader:
            frames = [f.image for f in reader.frames()]
        whole = _write(tmp_path / f"whole.{case[-3:]}", frames,
                       codec="mpeg4" if case == "cut_avi" else "libx264").read_bytes()
        path.write_bytes(whole[:len(whole) * 7 // 10])
        with VideoReader(path) as reader, pytest.raises(PrivatenetError, match="truncated: "):
            assert sum(1 for _ in reader.frames()) > 0  # frames decode, then the check
    elif case == "folder":
        path.mkdir()
    out = tmp_path / "out"
    code, stdout, err = _video(capsys, path, "--model", train_run, "--out", out)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privatenet: error: ")
    assert str(path) in lines[0]
    assert not out.exists()  # nothing half-written, not even the folder


def test_cut_file_found_after_the_folder_was_claimed_leaves_it_as_it_was(clips, train_run,
                                                                        tmp_path, capsys):
    """A file cut half-way decodes its first frames, so the folder is claimed before the cut
    is found: everything written is removed again, the (existing, empty) folder kept."""
    fs = _faststart(clips, tmp_path)
    path = tmp_path / "cut.mp4"
    path.write_bytes(fs[:len(fs) * 7 // 10])
    decoded = 0
    with VideoReader(path) as reader, pytest.raises(PrivatenetError, match="frame"):
        for _ in reader.frames():
            decoded += 1
    assert decoded >= 1  # the premise: the reader opens and frames decode before the cut
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _video(capsys, path, "--model", train_run, "--out", out, "--annotate")
    assert code == 2 and "truncated" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_bad_options_and_folders(clips, train_run, one_run, tmp_path, capsys):
    code, _, err = _video(capsys, clips["one"], "--model", train_run, "--out", tmp_path / "o",
                          "--every", "0")
    assert code == 2 and "--every 0 is invalid" in err and not (tmp_path / "o").exists()
    code, _, err = _video(capsys, clips["one"], "--model", train_run, "--out", tmp_path / "o",
                          "--threads", "0")
    assert code == 2 and "--threads 0 is invalid" in err and not (tmp_path / "o").exists()
    code, _, err = _video(capsys, clips["one"], "--model", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "neither a finished 'privatenet train' run" in err
    code, _, err = _video(capsys, clips["one"], "--model", train_run, "--out", one_run)
    assert code == 2 and "finished video run" in err
    code, _, err = _video(capsys, clips["one"], "--model", train_run, "--out", train_run)
    assert code == 2 and "'train' run, not a 'video' run" in err


def test_missing_video_extra_is_one_line(clips, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(PrivatenetError, match=r"'av'.*pip install -e \"\.\[video\]\""):
        VideoReader(clips["one"])


def test_interrupted_job_leaves_nothing_and_the_same_command_then_works(clips, train_run,
                                                                        tmp_path):
    from privatenet.app.video_job import video_job

    def stop(read, total):
        if read == 5:
            raise KeyboardInterrupt

    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        video_job(input=clips["one"], model=train_run, out=out, annotate=True, on_frame=stop)
    assert not out.exists()
    summary = video_job(input=clips["one"], model=train_run, out=out, every=2)
    assert summary["frames_processed"] == N_FRAMES // 2 and len(_records(out)) == N_FRAMES // 2
