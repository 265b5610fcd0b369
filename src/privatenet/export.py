"""Split a network at a tap into two ONNX files for a trusted-execution deployment.

The deployment of the paper's setting (docs/design.md §1): a camera pipeline whose rich
execution environment may be compromised, and a small Trusted Execution Environment (TEE) that
holds only the last layers. The attacker reads what the layers before the TEE produce: the
features at the tap. :func:`export_split` writes

* ``untrusted.onnx``: normalised image batch (float32, N x 3 x S x S) -> the tap's features
  (what an attacker reads; for a model erased at that tap the eraser is in this part);
* ``trusted.onnx``: the tap's features -> the task logits (the part for the TEE);
* ``export.json``: the input convention, both parts' names, shapes (``"N"`` = the dynamic batch
  dimension), parameter counts, sizes and SHA-256, the versions used, and the largest absolute
  difference between ONNX Runtime and the torch model on the check images, per part and end to
  end.

A model can be split when it has ``forward_from(tap, features) -> logits``, the layers after the
tap, with ``forward_from(tap, forward_taps(x)[1][tap]) == forward(x)``: every registry model
(:data:`SPLITTABLE`) and an :class:`~privatenet.erasure.ErasedModel` around one. Both parts
are exported by ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then ONNX Script,
opset :data:`OPSET`), then run with ONNX Runtime's CPU provider on the check images and compared
with the torch model in eval mode; a difference over :data:`TOLERANCE` is an error and nothing
is written. ``onnx``, ``onnxruntime`` and ``onnxscript`` are imported only here, inside the
functions (the ``deploy`` extra: ``pip install -e ".[deploy]"``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from privatenet.bottleneck import TapBottleneck
from privatenet.data.spec import check_image_size
from privatenet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from privatenet.errors import PrivatenetError, SettingError
from privatenet.models.taps import tap_layer
from privatenet.storage import atomic_write_bytes

__all__ = ["DEPLOY_PACKAGES", "EXPORT_FILES", "OPSET", "SPLITTABLE", "TOLERANCE",
           "check_split", "export_split", "require_deploy"]

#: The ONNX opset both parts are exported at (ONNX Runtime 1.16 and later run it).
OPSET = 18
#: The largest absolute difference between ONNX Runtime and torch that an export accepts, per
#: part and end to end (float32 on the CPU gives about 1e-6).
TOLERANCE = 1e-3
#: Packages an export needs beyond the core install (the ``deploy`` extra).
DEPLOY_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
#: The files an export writes, in the order written (``export.json`` last: it marks a finished
#: export).
EXPORT_FILES = ("untrusted.onnx", "trusted.onnx", "export.json")
#: Registry models that can be split at any of their taps (and a model erased at a tap of one).
SPLITTABLE = ("arm_resnet18", "arm_small", "resnet18", "small_cnn")
#: The input convention of every registry model (privatenet.data.transforms.normalize).
SCALE = "pixel/255 then (x-mean)/std"

#: Names of the graph inputs and outputs.
_NAMES = {"untrusted": ("image", "features"), "trusted": ("features", "logits")}
_HINT = 'pip install -e ".[deploy]"'


def require_deploy() -> dict[str, str]:
    """``{package: version}`` of :data:`DEPLOY_PACKAGES`, or a one-line
    :class:`PrivatenetError` naming the missing ones and the install command."""
    missing = [p for p in DEPLOY_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise PrivatenetError(f"export needs {', '.join(missing)} (not installed); install the "
                              f"deploy extra: {_HINT}")
    versions = {}
    for name in DEPLOY_PACKAGES:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except ImportError as e:  # installed but broken (a missing shared library, ...)
            raise PrivatenetError(f"cannot import {name} ({str(e).splitlines()[0]}); reinstall "
                                  f"the deploy extra: {_HINT}") from None
    return versions


def _model_name(model: nn.Module) -> str:
    """The registry name of ``model`` (``erased(arm_small)`` for a wrapper), else its class."""
    try:
        config = model.config
    except AttributeError:
        config = None
    if not isinstance(config, Mapping) or "name" not in config:
        return type(model).__name__
    name = str(config["name"])
    inner = config.get("inner")
    while isinstance(inner, Mapping) and "name" in inner:
        name = f"{name}({inner['name']})"
        inner = inner.get("inner")
    return name


def _can_cut(model: nn.Module) -> bool:
    """Whether ``model`` and every model it wraps (``inner``) have ``forward_from``."""
    while model is not None:
        if not callable(getattr(model, "forward_from", None)) or not hasattr(
                model, "forward_taps"):
            return False
        model = getattr(model, "inner", None)
    return True


def check_split(model: nn.Module, *, tap: str) -> str:
    """``tap`` if ``model`` can be split there, else a one-line :class:`PrivatenetError` that
    names the model and the taps (or the models) that can be cut."""
    if not isinstance(model, nn.Module):
        raise PrivatenetError(f"export needs an nn.Module, got {type(model).__name__}")
    name = _model_name(model)
    if not _can_cut(model):
        raise PrivatenetError(
            f"model {name!r} cannot be split at a tap: it has no forward_from(tap, features) "
            f"(the layers after a tap); export one of {', '.join(SPLITTABLE)}, or one of them "
            "erased at a tap")
    if any(isinstance(m, TapBottleneck) for m in model.modules()):
        raise PrivatenetError(f"model {name!r} has a vib bottleneck, whose noise is drawn in "
                              "every forward pass; its ONNX export is not implemented yet (the "
                              "graphs could not be checked against the network); deploy it "
                              "with torch")
    taps = tuple(getattr(model, "taps", ()) or ())
    if tap not in taps:
        raise PrivatenetError(f"model {name!r} has no tap {tap!r} to split at; taps that can be "
                              f"cut: {', '.join(taps)}")
    return tap


class _Untrusted(nn.Module):
    """The layers up to the tap: image -> the tap's features (what an attacker reads)."""

    def __init__(self, net: nn.Module, tap: str) -> None:
        super().__init__()
        self.net, self.tap = net, tap

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.forward_taps(image)[1][self.tap]


class _Trusted(nn.Module):
    """The layers after the tap: the tap's features -> logits (the TEE's part)."""

    def __init__(self, net: nn.Module, tap: str) -> None:
        super().__init__()
        self.net, self.tap = net, tap

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_from(self.tap, features)


class _ReachedTap(Exception):
    """Raised by :class:`_UpToTap`'s hook to stop a forward pass at the tap."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features


class _UpToTap(nn.Module):
    """The layers up to the tap and nothing after, for costs: the forward pass stops where the
    tap's layer returns (after any hook a wrapper put there; the tap may be a view of that
    output), so its cost is the untrusted part's alone (``_Untrusted`` runs the whole
    ``forward_taps``, which ONNX export then prunes)."""

    def __init__(self, net: nn.Module, tap: str) -> None:
        super().__init__()
        self.net, self.layer = net, net.get_submodule(tap_layer(net, tap))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        def stop(_module, _inputs, output):
            raise _ReachedTap(output)

        handle = self.layer.register_forward_hook(stop)
        try:
            self.net.forward_taps(image)
        except _ReachedTap as reached:
            return reached.features
        finally:
            handle.remove()
        raise PrivatenetError("the forward pass never reached the tap's layer")


def _time_ms(part: nn.Module, x: torch.Tensor, *, repeats: int, warmup: int = 3) -> float:
    """Mean wall time in ms of ``part(x)`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        part(x)
    start = time.perf_counter()
    for _ in range(repeats):
        part(x)
    return (time.perf_counter() - start) * 1000.0 / repeats


def _macs(part: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one call ``part(x)`` (torch's FLOP counter: 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        part(x)
    return counter.get_total_flops() // 2


@torch.no_grad()
def split_costs(model: nn.Module, *, image_size: int, repeats: int = 20) -> list[dict]:
    """What each cut of ``model`` costs, one row per tap (in the model's tap order): the
    parameters and multiply-accumulates of the untrusted part (image -> tap) and of the
    trusted part (tap -> logits, the TEE's), the bytes per image that cross the boundary (the
    tap's float32 features) and each part's measured time per image on this machine's CPU
    (batch 1, eval mode, mean of ``repeats`` calls; weights of any kind: the costs do not depend
    on training). Parameters are counted by autograd: those each part's output depends on.

    ``model``: a network :func:`check_split` accepts (a vib network included: its noise is
    part of the untrusted side's cost); it is copied to the CPU and not modified.
    """
    name = _model_name(model)
    if not isinstance(model, nn.Module) or not _can_cut(model):
        raise PrivatenetError(f"model {name!r} cannot be split at a tap: it has no "
                              "forward_from(tap, features); use one of "
                              f"{', '.join(SPLITTABLE)}, or one of them wrapped at a tap")
    size = check_image_size(image_size)
    if size is None:
        raise PrivatenetError(f"image_size=None; give the side of the images model {name!r} "
                              "takes")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SettingError("repeats", repeats, "is invalid; give an integer >= 1")
    net = copy.deepcopy(model).cpu().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for tap in net.taps:
        untrusted, trusted = _Untrusted(net, tap), _Trusted(net, tap)
        features = untrusted(x)
        upstream = _UpToTap(net, tap)  # the same layers, without computing the rest
        rows.append({
            "tap": tap, "features_shape": list(features.shape[1:]),
            "bytes_per_image": features[0].numel() * 4,
            "untrusted": {"parameters": _used_parameters(net, lambda u=untrusted: u(x)),
                          "macs": _macs(upstream, x),
                          "ms": _time_ms(upstream, x, repeats=repeats)},
            "trusted": {"parameters": _used_parameters(net, lambda t=trusted, f=features:
                                                       t(f)),
                        "macs": _macs(trusted, features),
                        "ms": _time_ms(trusted, features, repeats=repeats)}})
    return rows


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _to_onnx(part: nn.Module, example: torch.Tensor, *, which: str, name: str,
             tap: str) -> bytes:
    """The ONNX bytes of ``part`` (dynamic batch dimension ``N``), weights inside the file."""
    input_name, output_name = _NAMES[which]
    try:
        with warnings.catch_warnings():
            # torch.export's notes on its own internals are not the user's to act on
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            program = torch.onnx.export(
                part, (example,), dynamo=True, verbose=False, report=False, optimize=True,
                opset_version=OPSET, input_names=[input_name], output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("N")},))
        return program.model_proto.SerializeToString()
    except PrivatenetError:
        raise
    except Exception as e:  # the exporter's many failure types: one line, not a traceback
        raise PrivatenetError(f"cannot export the {which} part of model {name!r} at tap "
                              f"{tap!r} to ONNX ({_first_line(e)}); export another tap or "
                              "report the model") from None


def _session(data: bytes, which: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a handful of check images: keep the CPU light
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PrivatenetError(f"ONNX Runtime cannot load the exported {which} part "
                              f"({_first_line(e)}); upgrade onnxruntime ({_HINT})") from None


def _run(session, which: str, x: torch.Tensor) -> torch.Tensor:
    out = session.run([_NAMES[which][1]], {_NAMES[which][0]: x.numpy()})[0]
    return torch.from_numpy(out)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference (inf for a shape mismatch, NaN for non-finite values)."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _used_parameters(net: nn.Module, compute) -> int:
    """How many parameter values of ``net`` the tensor ``compute()`` depends on (autograd)."""
    params = [p for p in net.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = compute()
            if not out.requires_grad:
                return 0
            grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


def _check_images(check_images: Any, image_size: int) -> torch.Tensor:
    """The check images as normalised float32 (N, 3, S, S); uint8 images are normalised."""
    x = check_images
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or tuple(
            x.shape[2:]) != (image_size, image_size) or x.shape[0] < 1:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else \
            type(x).__name__
        raise PrivatenetError(f"check_images must be a (N, 3, {image_size}, {image_size}) image "
                              f"tensor with N >= 1 (image_size={image_size}), got {got}; pass "
                              "a few images of the model's data")
    if x.dtype == torch.uint8:
        return normalize(x.cpu())
    if not x.is_floating_point():
        raise PrivatenetError(f"check_images must be uint8 or normalised float images, got "
                              f"{x.dtype}")
    return x.detach().to("cpu", torch.float32)


def _write_all(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` atomically in order; on any failure remove those already written."""
    written: list[Path] = []
    try:
        for name, data in files.items():
            atomic_write_bytes(out_dir / name, data)
            written.append(out_dir / name)
    except BaseException:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        raise


def export_split(model: nn.Module, *, tap: str, image_size: int, out_dir: str | os.PathLike,
                 check_images: torch.Tensor, classes: Sequence[str] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> dict:
    """Split ``model`` at ``tap`` into ``untrusted.onnx`` and ``trusted.onnx`` in ``out_dir``.

    ``model``: a network with ``forward_taps`` and ``forward_from`` (see :func:`check_split`);
    it is copied to the CPU in eval mode and not modified. ``image_size``: the side S of the
    square inputs it takes. ``check_images``: (N, 3, S, S) images, uint8 (normalised here) or
    already normalised float; both parts are exported with a batch of two of them (N is
    dynamic in the files), then run with ONNX Runtime on all N and on the first alone and
    compared with the torch model. ``classes``: the task's class names, in logit order.
    ``metadata``: further plain values for ``export.json`` (``target``, ``model_run``,
    ``check_inputs``: where the check images came from).

    Returns the content of ``export.json`` (see the module docstring), written last after both
    ONNX files. Every check comes before the first write: a model that cannot be split, a
    missing ``deploy`` extra, bad check images, an export ONNX Runtime cannot run, or a
    difference over :data:`TOLERANCE` is a one-line :class:`PrivatenetError` and leaves
    ``out_dir`` as it was; an ``out_dir`` that already holds an ``export.json`` is refused.
    """
    check_split(model, tap=tap)
    name = _model_name(model)
    if image_size is None:
        raise PrivatenetError(f"image_size=None; give the side of the images model {name!r} "
                              "takes")
    size = check_image_size(image_size)
    x = _check_images(check_images, size)
    out = Path(out_dir)
    if (out / "export.json").exists():
        raise PrivatenetError(f"{out} holds a finished export (export.json); choose another "
                              "folder")
    if out.exists() and not out.is_dir():
        raise PrivatenetError(f"{out} is a file, not a folder; choose a folder for the export")
    versions = require_deploy()
    reserved = {"format", "input", "classes", "tap", "parts", "opset", "exporter", "torch",
                "onnxruntime", "max_abs_diff", "model_config"}
    clash = sorted(reserved & set(metadata or {}))
    if clash:
        raise ValueError(f"metadata may not set {clash[0]!r}; export_split writes it")

    net = copy.deepcopy(model).cpu().float().eval()
    untrusted, trusted = _Untrusted(net, tap).eval(), _Trusted(net, tap).eval()
    with torch.no_grad():
        logits, taps = net.forward_taps(x)
        features = taps[tap]
        if not isinstance(features, torch.Tensor) or features.dim() < 2 or features.shape[
                0] != x.shape[0]:
            raise PrivatenetError(f"tap {tap!r} of model {name!r} is not a (N, ...) tensor; "
                                  "split at another tap")
        one_logits, one_taps = net.forward_taps(x[:1])
    example = x[:2] if x.shape[0] >= 2 else x.expand(2, *x.shape[1:])
    with torch.no_grad():
        example_features = net.forward_taps(example)[1][tap]
    data = {"untrusted": _to_onnx(untrusted, example, which="untrusted", name=name, tap=tap),
            "trusted": _to_onnx(trusted, example_features, which="trusted", name=name, tap=tap)}
    sessions = {which: _session(blob, which) for which, blob in data.items()}
    for which, session in sessions.items():
        batch = session.get_inputs()[0].shape[0]
        if not isinstance(batch, str):
            raise PrivatenetError(f"the exported {which} part has a fixed batch size {batch}, "
                                  "not a dynamic one; report the model")
    found: dict[str, list[float]] = {"untrusted": [], "trusted": [], "end_to_end": []}
    for inp, ref_features, ref_logits in ((x, features, logits),
                                          (x[:1], one_taps[tap], one_logits)):
        onnx_features = _run(sessions["untrusted"], "untrusted", inp)
        found["untrusted"].append(_diff(onnx_features, ref_features))
        found["trusted"].append(_diff(_run(sessions["trusted"], "trusted", ref_features),
                                      ref_logits))
        found["end_to_end"].append(_diff(_run(sessions["trusted"], "trusted", onnx_features),
                                         ref_logits))
    # the worst over the batches; NaN (non-finite outputs) counts as the worst of all
    diffs = {k: math.nan if any(math.isnan(v) for v in vs) else max(vs)
             for k, vs in found.items()}
    worst = max(diffs, key=lambda k: math.inf if math.isnan(diffs[k]) else diffs[k])
    if not diffs[worst] <= TOLERANCE:
        raise PrivatenetError(f"the ONNX {worst.replace('_', ' ')} output differs from torch by "
                              f"{diffs[worst]:.3g} (over {TOLERANCE:g}) on model {name!r} at tap "
                              f"{tap!r}; nothing was written (report the model)")

    counts = {"untrusted": _used_parameters(net, lambda: net.forward_taps(x[:1])[1][tap]),
              "trusted": _used_parameters(net, lambda: net.forward_from(tap, one_taps[tap]))}
    tap_shape = list(features.shape[1:])
    shapes = {"untrusted": (["N", 3, size, size], ["N", *tap_shape]),
              "trusted": (["N", *tap_shape], ["N", int(logits.shape[1])])}
    parts = {}
    for which, blob in data.items():
        parts[which] = {
            "file": f"{which}.onnx", "input_name": _NAMES[which][0],
            "output_name": _NAMES[which][1], "input_shape": shapes[which][0],
            "output_shape": shapes[which][1], "parameters": counts[which], "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest()}
    try:
        config = model.config
    except AttributeError:
        config = None
    doc = {
        "format": 1,
        "input": {"size": size, "channels": 3, "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD), "dtype": "float32", "layout": "NCHW",
                  "scale": SCALE},
        "classes": list(classes) if classes is not None else None,
        "target": None,
        "tap": tap,
        "parts": parts,
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnxruntime": versions["onnxruntime"],
        "onnx": versions["onnx"],
        "onnxscript": versions["onnxscript"],
        "max_abs_diff": diffs,
        "check_inputs": {"count": int(x.shape[0])},
        "check_batch_sizes": [int(x.shape[0]), 1],
        "model_run": None,
        "model_config": dict(config) if isinstance(config, Mapping) else None,
    }
    doc.update(metadata or {})
    text = json.dumps(doc, indent=2) + "\n"
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_all(out, {"untrusted.onnx": data["untrusted"], "trusted.onnx": data["trusted"],
                         "export.json": text.encode("utf-8")})
    except BaseException as e:
        if created:
            try:
                out.rmdir()  # only when empty: nothing of ours is left in it
            except OSError:
                pass
        if isinstance(e, OSError):
            raise PrivatenetError(f"cannot write the export into {out}: {e.strerror or e}; "
                                  "choose a writable folder with free space") from None
        raise
    return json.loads(text)
