"""The video analytics pipeline (library part): read a video, detect faces, track them,
classify each face on its own, smooth per track, draw and write frames.

``av`` (PyAV) and ``opencv-python-headless`` come with the ``video`` extra
(``pip install -e ".[video]"``), ``onnxruntime`` for export folders with the ``deploy`` extra;
they are imported only when needed. The ``privatenet video`` job (run folder, output files) is
:mod:`privatenet.app.video_job`.
"""

from privatenet.video.annotate import draw_faces
from privatenet.video.classify import (
    Classifier,
    OnnxSplitClassifier,
    TorchClassifier,
    crop_box,
    crop_faces,
    read_export,
)
from privatenet.video.detect import (
    DETECTORS,
    Detection,
    DlibHogDetector,
    Downscaled,
    FaceDetector,
    HaarFaceDetector,
    make_detector,
)
from privatenet.video.pipeline import FaceAnalyzer, FaceResult, FrameResult, analyze_video
from privatenet.video.reader import Frame, VideoInfo, VideoReader
from privatenet.video.track import EmaSmoother, IoUTracker, iou
from privatenet.video.writer import VideoWriter, pick_codec

__all__ = [
    "DETECTORS",
    "DlibHogDetector",
    "Downscaled",
    "make_detector",
    "Classifier",
    "Detection",
    "EmaSmoother",
    "FaceAnalyzer",
    "FaceDetector",
    "FaceResult",
    "Frame",
    "FrameResult",
    "HaarFaceDetector",
    "IoUTracker",
    "OnnxSplitClassifier",
    "TorchClassifier",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "analyze_video",
    "crop_box",
    "crop_faces",
    "draw_faces",
    "iou",
    "pick_codec",
    "read_export",
]
