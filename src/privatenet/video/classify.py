"""Classifying face crops: cropping, and two backends behind one interface.

:func:`crop_faces` cuts each face out of a frame with a margin and resizes it to the model's
input side S: the detector's box is widened to a square of side ``max(w, h) * (1 + 2 * margin)``
around its centre (``margin`` = 0.2: 20 % of the box on each side, so that the crop shows about
as much of the head as a training image does), clipped to the frame (a crop clipped at the edge
is stretched to the square), and resized with PIL's bilinear filter, the filter the training data
is resized with (:mod:`privatenet.data.cache`).

A :class:`Classifier` maps ``uint8`` crops (N x 3 x S x S) to class probabilities (N x C):

* :class:`TorchClassifier`: a torch network (a ``train`` run's), in eval mode, on crops
  normalised exactly as in training (:func:`privatenet.data.transforms.normalize`). Crops go
  through in one batch when the network is batch-independent in eval mode (every registry
  network, ARM included with its default ``running`` affinity); a network whose ARM affinity is
  in ``batch`` mode (the public behaviour: a face's output depends on the other faces of its
  batch) is run one crop at a time, so a face's result never depends on other faces. On CUDA
  each batch size's forward is captured once as a CUDA graph and replayed
  (:class:`~privatenet.models.graphed.GraphedInference`).
* :class:`OnnxSplitClassifier`: an export folder (``privatenet export``): ``untrusted.onnx``
  (normalised images -> tap features) then ``trusted.onnx`` (features -> logits), run with ONNX
  Runtime on the CPU, one crop at a time (an ONNX graph cannot tell whether it mixes a batch).
  Its ``export.json`` (format 1) gives the input side, mean and std, the classes and the two
  parts' files and tensor names.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from privatenet.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size
from privatenet.data.transforms import normalize
from privatenet.errors import PrivatenetError, SettingError
from privatenet.models.graphed import GraphedInference
from privatenet.models.saving import load_module
from privatenet.readers import brief
from privatenet.storage import read_json
from privatenet.video._deps import require
from privatenet.video.detect import check_frame

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MARGIN", "Classifier", "OnnxSplitClassifier", "TorchClassifier",
           "check_threads", "crop_box", "crop_faces", "read_export"]

#: Margin added around a detected box on each side, as a share of its side.
DEFAULT_MARGIN = 0.2
#: The export.json format this module reads.
EXPORT_FORMAT = 1


def crop_box(box: Sequence[float], *, width: int, height: int,
             margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The square crop of side ``max(w, h) * (1 + 2 * margin)`` around ``box``'s centre,
    clipped to a ``width`` x ``height`` frame (at least one pixel)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a0 = min(max(int(math.floor(cx - side / 2)), 0), width - 1)
    b0 = min(max(int(math.floor(cy - side / 2)), 0), height - 1)
    a1 = max(min(int(math.ceil(cx + side / 2)), width), a0 + 1)
    b1 = max(min(int(math.ceil(cy + side / 2)), height), b0 + 1)
    return a0, b0, a1, b1


def crop_faces(frame: np.ndarray, boxes: Sequence[Sequence[float]], *, size: int,
               margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The faces at ``boxes`` in ``frame`` (RGB uint8, H x W x 3) as uint8 crops
    (N x 3 x size x size); see the module docstring."""
    frame = check_frame(frame)
    if not margin >= 0:
        raise SettingError("margin", margin, "is invalid; give a share of the box >= 0 "
                                             "(0.2 adds 20 % on each side)")
    height, width = frame.shape[:2]
    out = np.empty((len(boxes), 3, size, size), dtype=np.uint8)
    for i, box in enumerate(boxes):
        a0, b0, a1, b1 = crop_box(box, width=width, height=height, margin=margin)
        crop = Image.fromarray(np.ascontiguousarray(frame[b0:b1, a0:a1]), "RGB")
        if crop.size != (size, size):
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(crop).transpose(2, 0, 1)
    return out


def _check_crops(crops: object, size: int) -> torch.Tensor:
    """``crops`` as a uint8 CPU tensor (N, 3, size, size), else a ``ValueError``."""
    x = torch.from_numpy(np.ascontiguousarray(crops)) if isinstance(crops, np.ndarray) else crops
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or \
            tuple(x.shape[1:]) != (3, size, size):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else \
            type(x).__name__
        raise ValueError(f"crops must be uint8 (N, 3, {size}, {size}), got {got}")
    return x.cpu()


@runtime_checkable
class Classifier(Protocol):
    """What the pipeline needs of a face classifier."""

    #: The class names, in the order of the probabilities.
    classes: tuple[str, ...]
    #: The side S of the square crops it takes.
    image_size: int

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities (N x C float32) of uint8 crops (N x 3 x S x S), each crop's
        independent of the others."""
        ...

    @property
    def config(self) -> dict:
        """Plain values describing the classifier (for a run's summary)."""
        ...


def _check_classes(classes: object, where: str) -> tuple[str, ...]:
    if not isinstance(classes, (list, tuple)) or not classes or not all(
            isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise PrivatenetError(f"{where}: classes must be a non-empty list of distinct names, "
                              f"got {classes!r}")
    return tuple(classes)


def check_threads(threads: object) -> int | None:
    """``threads`` if it is ``None`` or a whole number >= 1, else one line."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise SettingError("threads", threads, "is invalid; give a whole number >= 1 (or "
                                               "None for the library's default)")
    return threads


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


class TorchClassifier:
    """A torch network as a :class:`Classifier` (see the module docstring).

    ``model``: takes normalised float images (N, 3, S, S) and returns logits (N, C); it is put
    in eval mode on ``device``. ``classes``: the C class names; ``image_size``: S.
    ``threads``: torch's intra-op CPU threads while this classifier runs (set with
    ``torch.set_num_threads`` around each call and restored after; ``None``: leave torch's
    setting). A face crop is a small input: one thread is about as fast as several and far
    faster on a busy machine. ``description``: plain values added to :attr:`config`.
    """

    def __init__(self, model: torch.nn.Module, *, classes: Sequence[str], image_size: int,
                 device: str | torch.device = "cpu", threads: int | None = None,
                 description: Mapping | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.classes = _check_classes(list(classes), "TorchClassifier")
        self.image_size = int(image_size)
        self.threads = check_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # on CUDA a face count's forward is captured once and replayed (models/graphed.py)
        self._forward = GraphedInference(self.model)
        #: False when some layer mixes the batch in eval mode: crops then run one at a time.
        self.batch_independent = not any(
            getattr(m, "affinity", None) == "batch" for m in model.modules())
        self._description = dict(description or {})

    @classmethod
    def from_checkpoint(cls, stem: str | os.PathLike, *, device: str | torch.device = "cpu",
                        threads: int | None = None) -> TorchClassifier:
        """The network saved at checkpoint ``stem`` (``<run>/model`` of a ``train`` run), with
        the classes and input size saved beside it."""
        model, meta = load_module(stem)
        where = Path(stem).with_suffix(".json")
        size = meta.get("image_size") or (getattr(model, "config", {}) or {}).get("image_size")
        if not isinstance(size, int) or size < 1:
            raise PrivatenetError(f"{where}: no image_size; pass a checkpoint written by "
                                  "'privatenet train'")
        arch = (getattr(model, "config", {}) or {}).get("name", type(model).__name__)
        return cls(model, classes=_check_classes(meta.get("classes"), str(where)),
                   image_size=size, device=device, threads=threads,
                   description={"target": meta.get("target"), "architecture": arch})

    @property
    def config(self) -> dict:
        return {"backend": "torch", **self._description, "classes": list(self.classes),
                "image_size": self.image_size, "batch_independent": self.batch_independent}

    @torch.no_grad()
    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        x = _check_crops(crops, self.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        x = normalize(x.to(self.device))
        parts = [x] if self.batch_independent else list(x.split(1))
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            logits = torch.cat([self._forward(p) for p in parts]).float()
        finally:
            if self.threads is not None:
                torch.set_num_threads(before)
        if logits.dim() != 2 or logits.shape[1] != len(self.classes):
            raise PrivatenetError(f"the network returns {tuple(logits.shape)} outputs, not N x "
                                  f"{len(self.classes)} (one per class); pass the network its "
                                  "classes belong to")
        return torch.softmax(logits, dim=1).cpu().numpy()


def _number_list(value: object, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)


def read_export(folder: str | os.PathLike) -> dict:
    """The checked ``export.json`` of an export folder (format :data:`EXPORT_FORMAT`); every
    problem is a one-line :class:`PrivatenetError` naming the file and the field."""
    folder = Path(folder)
    path = folder / "export.json"
    if not path.is_file():
        raise PrivatenetError(f"{folder}: no export.json; pass the folder of a finished "
                              "'privatenet export' (or of a 'privatenet train' run)")
    doc = read_json(path)
    fix = "export the model again with this privatenet's 'privatenet export'"
    if not isinstance(doc, dict):
        raise PrivatenetError(f"{path}: not a JSON object; {fix}")
    if doc.get("format") != EXPORT_FORMAT:
        raise PrivatenetError(f"{path}: format {doc.get('format')!r} is not supported (this "
                              f"privatenet reads format {EXPORT_FORMAT}); {fix}")
    inp = doc.get("input")
    if not isinstance(inp, dict):
        raise PrivatenetError(f"{path}: no 'input' object; {fix}")
    size = inp.get("size")
    try:  # the one image-size check of the package: what an export can have been made at
        if size is None:
            raise PrivatenetError("no size")
        check_image_size(size)
    except PrivatenetError:
        raise PrivatenetError(f"{path}: input.size {brief(size)} is not an image side of "
                              f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels; {fix}") from None
    if inp.get("channels", 3) != 3:
        raise PrivatenetError(f"{path}: input.channels {inp.get('channels')!r}; only RGB (3) "
                              f"models can classify video frames; {fix}")
    for key in ("mean", "std"):
        if not _number_list(inp.get(key), 3):
            raise PrivatenetError(f"{path}: input.{key} {inp.get(key)!r} is not 3 numbers; "
                                  f"{fix}")
    if any(s <= 0 for s in inp["std"]):
        raise PrivatenetError(f"{path}: input.std {inp['std']!r} must be positive; {fix}")
    _check_classes(doc.get("classes"), f"{path}")
    for key in ("target", "tap"):  # copied into a video run's summary
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise PrivatenetError(f"{path}: {key} {brief(doc[key])} is not a name; {fix}")
    parts = doc.get("parts")
    for which in ("untrusted", "trusted"):
        part = parts.get(which) if isinstance(parts, dict) else None
        if not isinstance(part, dict) or not all(
                isinstance(part.get(k), str) and part.get(k)
                for k in ("file", "input_name", "output_name")):
            raise PrivatenetError(f"{path}: parts.{which} needs file, input_name and "
                                  f"output_name; {fix}")
        if Path(part["file"]).name != part["file"] or part["file"] in (".", ".."):
            raise PrivatenetError(f"{path}: parts.{which}.file {brief(part['file'])} is not a "
                                  f"file name in the export folder; {fix}")
        digest = part.get("sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                       and all(c in "0123456789abcdef" for c in digest)):
            raise PrivatenetError(f"{path}: parts.{which}.sha256 {brief(digest)} is not a "
                                  f"SHA-256 (64 hex digits); {fix}")
        file = folder / part["file"]
        if not file.is_file():
            raise PrivatenetError(f"{file}: not found (named by {path}); copy the whole "
                                  "export folder")
    return doc


class OnnxSplitClassifier:
    """An export folder's two ONNX parts as a :class:`Classifier` (see the module docstring).

    ``threads``: ONNX Runtime intra-op threads (``None``: its default, one per core). Each
    part's SHA-256 is checked where ``export.json`` records one.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None) -> None:
        self.folder = Path(folder)
        threads = check_threads(threads)
        doc = read_export(self.folder)
        ort = require("onnxruntime", what="running an export folder")
        inp = doc["input"]
        self.classes = tuple(doc["classes"])
        self.image_size = int(inp["size"])
        self._mean = torch.tensor(inp["mean"], dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(inp["std"], dtype=torch.float32).view(3, 1, 1)
        self._doc = doc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self._sessions, self._names = {}, {}
        for which in ("untrusted", "trusted"):
            part = doc["parts"][which]
            file = self.folder / part["file"]
            blob = file.read_bytes()
            digest = part.get("sha256")  # checked by read_export: None or 64 hex digits
            if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
                raise PrivatenetError(f"{file}: its SHA-256 differs from the one export.json "
                                      "records; the file was changed: export the model again")
            try:
                session = ort.InferenceSession(blob, sess_options=options,
                                               providers=["CPUExecutionProvider"])
            except Exception as e:  # ONNX Runtime's own exception types
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise PrivatenetError(f"{file}: ONNX Runtime cannot load it ({first}); export "
                                      "the model again or upgrade onnxruntime") from None
            inputs = {i.name for i in session.get_inputs()}
            outputs = {o.name for o in session.get_outputs()}
            if part["input_name"] not in inputs or part["output_name"] not in outputs:
                raise PrivatenetError(
                    f"{file}: has inputs {sorted(inputs)} and outputs {sorted(outputs)}, not "
                    f"{part['input_name']!r} -> {part['output_name']!r} as export.json says; "
                    "export the model again")
            self._check_shapes(which, file, session, part)
            self._sessions[which] = session
            self._names[which] = (part["input_name"], part["output_name"])

    def _check_shapes(self, which: str, file: Path, session, part: dict) -> None:
        """One line naming export.json where the static dimensions that ``file`` declares
        differ from those export.json gives (the crops' N x 3 x S x S input of the untrusted
        part, one logit per class out of the trusted part); a dynamic dimension (a name, or
        None) is not compared."""
        def shape(args, name):
            for arg in args:
                if arg.name == name:
                    return list(arg.shape) if arg.shape is not None else None
            return None

        if which == "untrusted":
            declared = shape(session.get_inputs(), part["input_name"])
            wanted = [None, 3, self.image_size, self.image_size]
            what = f"input.size {self.image_size} (3 x {self.image_size} x {self.image_size})"
        else:
            declared = shape(session.get_outputs(), part["output_name"])
            wanted = [None, len(self.classes)]
            what = f"{len(self.classes)} classes"
        if declared is None:
            return
        if len(declared) != len(wanted) or any(
                isinstance(d, int) and w is not None and d != w
                for d, w in zip(declared, wanted, strict=False)):
            raise PrivatenetError(
                f"{self.folder / 'export.json'}: {what} does not fit the shape "
                f"{[d if isinstance(d, int) else 'N' for d in declared]} that {file.name} "
                "declares; export.json was edited or is from another export: export the model "
                "again")

    @property
    def config(self) -> dict:
        doc = self._doc
        return {"backend": "onnx", "export": str(self.folder), "target": doc.get("target"),
                "tap": doc.get("tap"), "classes": list(self.classes),
                "image_size": self.image_size,
                "files": [doc["parts"][w]["file"] for w in ("untrusted", "trusted")]}

    def _run(self, which: str, x: np.ndarray) -> np.ndarray:
        name_in, name_out = self._names[which]
        return self._sessions[which].run([name_out], {name_in: x})[0]

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        x = _check_crops(crops, self.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        # the same operations, in the same order, as privatenet.data.transforms.normalize
        x = x.to(torch.float32).div_(255).sub_(self._mean).div_(self._std).numpy()
        logits = []
        for i in range(x.shape[0]):
            feats = self._run("untrusted", x[i:i + 1])
            logits.append(self._run("trusted", feats))
        out = np.concatenate(logits)
        if out.ndim != 2 or out.shape[1] != len(self.classes):
            raise PrivatenetError(f"{self.folder / 'trusted.onnx'} returns {out.shape} "
                                  f"outputs, not N x {len(self.classes)} (one per class of "
                                  "export.json); export the model again")
        return _softmax(out)
