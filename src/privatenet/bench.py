"""Training throughput, batch-1 latency and peak memory of a model's variants on one device.

:func:`measure` times, on random tensors (no data loading), a few variants of one registry model:

- ``public``: for ``arm_resnet18`` only, :class:`PublicRes18Feature`, an independent
  re-creation of the public ARM ResNet-18's compute (Python loop over channels, ``torch.cat``,
  fp32, contiguous); the reference for the ratios when it runs, ``fp32`` otherwise;
- ``fp32``: ours (:func:`privatenet.models.create_model`), fp32, contiguous;
- ``channels_last``: ours, fp32, model and input in channels_last;
- ``bf16``: ours under bf16 autocast, contiguous;
- ``channels_last+bf16``: both;
- ``fused`` and ``channels_last+fused``: as ``fp32`` and ``channels_last`` with Adam's fused
  update;
- ``compile`` (with ``compile=True``): ``torch.compile`` of ours, fp32.

Batch-1 latency is timed for every variant; on CUDA also replayed from a captured CUDA graph
(:mod:`privatenet.models.graphed`), which removes the launch cost per kernel.

By default (no ``variants``) the bf16 variants are left out where bf16 is emulated (a CPU
without AVX512-BF16/AMX, a GPU without bf16): they cannot pay there, and are slow to time.
The result says which variants were left out and why (``skipped``).

The result carries ``"kind": "privatenet-bench"``; :func:`check_out_file` lets a new run write
over such a file only, never over another file (a user's data, a run folder's files).

Each training step is forward + cross-entropy + backward + Adam (lr 1e-3, weight decay 1e-4, as
in the public recipe). :func:`format_table` renders the result as plain text. The module logs
and never prints; ``privatenet bench`` prints.
"""

from __future__ import annotations

import logging
import numbers
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from privatenet.data.spec import check_image_size
from privatenet.errors import PrivatenetError, SettingError
from privatenet.models import create_model, model_options
from privatenet.models.arm import arm_map_side, resnet_map_side
from privatenet.models.graphed import GraphedInference
from privatenet.models.registry import check_model_name
from privatenet.runfiles import MARKER as RUN_MARKER
from privatenet.settings import same_setting, setting
from privatenet.storage import read_json
from privatenet.train.config import (
    TrainConfig,
    bf16_native,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)

__all__ = ["KIND", "VARIANTS", "PublicAmend", "PublicRes18Feature", "check_out_file",
           "environment", "format_table", "measure"]

log = logging.getLogger(__name__)

#: Variant key -> label, in the order they are run and reported.
VARIANTS = {
    "public": "public re-creation, fp32",
    "fp32": "ours, fp32",
    "fused": "ours, fp32, fused Adam",
    "channels_last": "ours, channels_last fp32",
    "channels_last+fused": "ours, channels_last fp32, fused Adam",
    "bf16": "ours, bf16 autocast",
    "channels_last+bf16": "ours, channels_last bf16 autocast",
    "compile": "ours, torch.compile fp32",
}
#: The ``kind`` field of a result: marks a file that a later run may write over.
KIND = "privatenet-bench"
#: The model that ``public`` re-creates.
PUBLIC_MODEL = "arm_resnet18"
#: A variant "pays" when it trains this much faster than the one it is compared with: smaller
#: differences are within the run-to-run noise of a short benchmark.
PAYS = 1.05
#: Training steps of each variant's memory pass: the first allocates Adam's state, the second
#: runs with it, as every later step does.
MEMORY_STEPS = 2
#: Untimed batch-1 inferences before the timed ones (allocator and kernel choice settle).
LATENCY_WARMUP = 3
_NUM_CLASSES = 7
_SEED = 0
#: Side of the square matrices whose product measures the device's own dense-math rate (on a
#: GPU, larger: a 2048 product does not fill one).
GEMM_SIDE = {"cpu": 2048, "cuda": 8192}
#: Timed products of that measurement (the median is reported), after 3 untimed ones.
GEMM_REPS = 10


class PublicAmend(nn.Module):
    """A re-creation, for timing, of the public ``Amend_raf`` block's compute (not the public
    code): a Python loop over the input channels with ``torch.cat``, the batch-global mean, and
    the unused max and min that the published block also computes."""

    def __init__(self, inplace: int = 2):
        super().__init__()
        self.de_albino = nn.Conv2d(1, 1, kernel_size=(32, 32), stride=8, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(inplace)
        self.alpha = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Parameter]:
        mask = torch.tensor([], device=x.device)
        parts = {}
        for i in range(x.size(1)):
            parts["x" + str(i)] = torch.unsqueeze(x[:, i], 1)
            parts["x" + str(i)] = self.de_albino(parts["x" + str(i)])
            mask = torch.cat((mask, parts["x" + str(i)]), 1)
        x = self.bn(mask)
        xmax, _ = torch.max(x, 1, keepdim=True)  # computed and unused, as published
        global_mean = x.mean(dim=[0, 1])
        xmean = torch.mean(x, 1, keepdim=True)
        xmin, _ = torch.min(x, 1, keepdim=True)  # computed and unused, as published
        x = xmean + self.alpha * global_mean
        return x, self.alpha


class PublicRes18Feature(nn.Module):
    """A re-creation, for timing, of the public ARM ResNet-18 (not the public code): ResNet-18
    features, PixelShuffle(16), :class:`PublicAmend`, fc; returns ``(logits, alpha)``.
    ``fc_in`` is 121 at 224x224; other values only for runs at other sizes."""

    def __init__(self, num_classes: int = 7, drop_rate: float = 0.0, fc_in: int = 121):
        super().__init__()
        self.drop_rate = drop_rate
        resnet = torchvision.models.resnet18()
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.arrangement = nn.PixelShuffle(16)
        self.arm = PublicAmend()
        self.fc = nn.Linear(fc_in, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Parameter]:
        x = self.features(x)
        x = self.arrangement(x)
        x, alpha = self.arm(x)
        x = x.view(x.size(0), -1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        out = self.fc(x)
        return out, alpha


# ------------------------------------------------------------------------------ environment


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict:
    """What the figures depend on: ``torch`` version, ``device_type``, ``device_name`` (the CPU
    model from /proc/cpuinfo, or the GPU's name), ``threads`` (torch's intra-op threads),
    ``cpu_capability`` (the SIMD level torch dispatches to) and ``bf16_native``."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "torch": torch.__version__,
        "device_type": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_native(device),
    }


def gemm_rate(device: torch.device, *, dtype: torch.dtype = torch.float32,
              side: int | None = None, reps: int = GEMM_REPS) -> float:
    """The device's own dense-math rate in GFLOP/s: the median over ``reps`` timed products of
    two ``side`` x ``side`` matrices (2 side^3 FLOPs each; default :data:`GEMM_SIDE`), on
    torch's threads, after 3 untimed ones. The yardstick of a training step's rate: what the
    same machine reaches on the one operation it is fastest at."""
    device = torch.device(device)
    side = side or GEMM_SIDE.get(device.type, 2048)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_SEED)
        a = torch.randn(side, side, device=device, dtype=dtype)
        b = torch.randn(side, side, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * side**3 / statistics.median(times) / 1e9


def training_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one training step per image (forward, cross-entropy and backward; 2 per
    multiply-accumulate, as :class:`torch.utils.flop_counter.FlopCounterMode` counts matrix
    products and convolutions), counted on two images of ``x`` (a step's count grows with the
    batch). The optimizer's element-wise update is not counted."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(_logits(model, x[:2]), y[:2]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------------------------- memory


def _proc_status_mb(key: str) -> float | None:
    """``VmHWM`` / ``VmRSS`` of this process in MB, or None where /proc is not readable."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    # "5" resets the process's VmHWM (peak RSS) to its current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------- variants


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Variant:
    key: str
    model: nn.Module
    x: torch.Tensor
    x1: torch.Tensor
    y: torch.Tensor
    autocast: bool
    device: torch.device
    fused: bool = False
    opt: torch.optim.Optimizer = field(init=False)
    step_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    graph_latency_ms: list[float] = field(default_factory=list)
    graphed: GraphedInference | None = None
    peak_mb: float | None = None
    baseline_mb: float | None = None

    def __post_init__(self) -> None:
        # fused: one kernel for the whole update instead of a few per parameter tensor
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=1e-4,
                                    **({"fused": True} if self.fused else {}))

    def _sync(self) -> None:
        if self.device.type == "cuda":  # GPU work is asynchronous: time what has finished
            torch.cuda.synchronize(self.device)

    def train_step(self) -> float:
        """Forward + cross-entropy + backward + Adam step; returns seconds."""
        self.model.train()
        self._sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = nn.functional.cross_entropy(_logits(self.model, self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._sync()
        return time.perf_counter() - start

    def infer(self, graphed: bool = False) -> float:
        """One batch-1 eval forward (``graphed``: replayed from a captured CUDA graph);
        returns milliseconds."""
        self.model.eval()
        if graphed and self.graphed is None:
            self.graphed = GraphedInference(self.model)
        run = self.graphed if graphed else self.model
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                _logits(run, self.x1)
            self._sync()
            return (time.perf_counter() - start) * 1e3

    def measure_memory(self, steps: int) -> None:
        """Peak memory during ``steps`` training steps of this variant alone (see measure)."""
        if self.device.type == "cuda":
            self._sync()
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
            for _ in range(steps):
                self.train_step()
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self.baseline_mb = _proc_status_mb("VmRSS")
        reset = _reset_peak_rss()
        for _ in range(steps):
            self.train_step()
        self.peak_mb = _proc_status_mb("VmHWM") if reset else None


# -------------------------------------------------------------------------------- arguments


def _left_out(dev: torch.device, compile: bool) -> dict[str, str]:
    """The variants a default run leaves out on ``dev``, each with the reason."""
    skipped = {}
    if not bf16_native(dev):
        what = ("this CPU has no native bf16 (no AVX512-BF16/AMX)" if dev.type == "cpu" else
                f"{dev} has no native bf16")
        for key in ("bf16", "channels_last+bf16"):
            skipped[key] = (f"{what}: bf16 autocast is emulated here, so it cannot pay and is "
                            f"slow to time; name it in variants (--variants {key}) to time it "
                            "anyway")
    if not compile:
        skipped["compile"] = "torch.compile is timed only on request (compile=True, --compile)"
    return skipped


def _check_variants(variants: Any, model: str, compile: bool,
                    dev: torch.device) -> tuple[list[str], dict[str, str]]:
    """The variants to run, in order, and those a default run left out (key -> reason)."""
    applicable = [k for k in VARIANTS
                  if (k != "public" or model == PUBLIC_MODEL) and (k != "compile" or compile)]
    if variants is None:
        skipped = _left_out(dev, compile)
        for key, why in skipped.items():
            log.info("left out %s: %s", key, why)
        return [k for k in applicable if k not in skipped], skipped
    if isinstance(variants, str):  # "fp32,bf16" as on a command line
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if not isinstance(variants, Iterable):
        raise SettingError("variants", variants, f"is invalid; give a list of variant names "
                                                 f"from {', '.join(VARIANTS)}")
    chosen = list(variants)
    for v in chosen:
        if v not in VARIANTS:
            raise PrivatenetError(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
        if v == "public" and model != PUBLIC_MODEL:
            raise PrivatenetError(f"variant 'public' re-creates the public {PUBLIC_MODEL} only, "
                                  f"not model {model!r}; drop it or use model={PUBLIC_MODEL!r}")
        if v == "compile" and not compile:
            raise PrivatenetError("variant 'compile' needs compile=True (--compile); add it or "
                                  "drop the variant")
    if not chosen:
        raise SettingError("variants", variants, f"is empty; give at least one of "
                                                 f"{', '.join(applicable)}")
    return [k for k in VARIANTS if k in chosen], {}  # run and report in the one fixed order


# ---------------------------------------------------------------------------------- measure


@dataclass
class BenchConfig:
    """What :func:`measure` times (the same names), checked on creation."""

    model: str = setting("arm_resnet18", "network (arm_resnet18 is the paper's)",
                         type=check_model_name)
    image_size: int = setting(224, "input side in pixels")
    batch_size: int = setting(32, "training batch")
    device: str = same_setting(TrainConfig, "device", "auto")
    steps: int = setting(10, "timed training steps per variant")
    warmup: int = setting(2, "untimed steps before timing")
    latency_iters: int = setting(20, "timed batch-1 inferences per variant")
    compile: bool = setting(False, "also time torch.compile")

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if self.image_size is None:
            raise SettingError("image_size", None, "is missing; give the input side in pixels")
        self.image_size = check_image_size(self.image_size)
        for name, minimum in (("batch_size", 2),  # parity and BatchNorm need two images
                              ("steps", 1), ("warmup", 0), ("latency_iters", 1)):
            value = getattr(self, name)
            # bool is an Integral, but steps=True is a mistake, not 1 step
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
                    value < minimum):
                raise SettingError(name, value, f"is invalid; give an integer >= {minimum}")
            setattr(self, name, int(value))
        if not isinstance(self.compile, bool):
            raise SettingError("compile", self.compile, "is invalid; give True or False")
        if not isinstance(self.device, str):
            raise SettingError("device", self.device, "is invalid; use auto, cpu or cuda[:N]")
        resolve_device(self.device)


def measure(*, model: str = "arm_resnet18", image_size: int = 224, batch_size: int = 32,
            device: str | torch.device = "auto", steps: int = 10, warmup: int = 2,
            latency_iters: int = 20, compile: bool = False,
            variants: Iterable[str] | str | None = None,
            on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Time training and batch-1 inference of ``model``'s variants; return a JSON-able dict.

    Every argument is checked first (:class:`BenchConfig`, then the variants against the
    device); a bad one raises :class:`PrivatenetError` naming it.
    ``variants`` are keys of :data:`VARIANTS`; ``public`` needs ``model="arm_resnet18"``,
    ``compile`` needs ``compile=True``. The default is all that apply and can pay on the
    device: without native bf16 (:func:`privatenet.train.config.bf16_native`) the bf16 variants
    are left out (bf16 is emulated there); name them to time them anyway. Ratios are over ``public``
    when it runs, else over ``fp32``. Inputs are random tensors from a fixed seed (the caller's
    RNG state is left as it was); labels are over 7 classes.

    The run, in order: a parity check when ``public`` runs (ours with ``affinity="batch"``
    loaded with the re-creation's state dict, eval, the largest absolute logit difference on two
    images); a memory pass, one variant at a time, of :data:`MEMORY_STEPS` training steps each;
    ``warmup`` untimed and ``steps`` timed training steps, the variants taking turns step by
    step (round robin) so that a change of machine load hits them alike; then
    ``latency_iters`` timed batch-1 eval forwards (``inference_mode``), also in turns (on
    CUDA each followed by one replayed from a captured graph).

    ``peak_memory_mb`` is the peak memory of the process during the variant's own memory-pass
    steps, so it includes the model, the optimizer state and the activations. On CUDA it is
    ``torch.cuda.max_memory_allocated`` (``baseline_memory_mb``: what torch held before the
    pass). On a CPU it is the process's peak resident set (VmHWM, reset through
    /proc/self/clear_refs before the pass), which includes everything the process already held
    (every variant's model, the interpreter, the libraries): ``baseline_memory_mb`` is the
    resident set before the pass, to subtract. None (with a note) where /proc does not allow it.

    ``on_progress(stage, done, total)``, if given, is called as the run advances; stages are
    ``parity``, ``memory``, ``warmup``, ``train`` and ``latency``.

    Returns ``kind`` (:data:`KIND`), ``environment`` (:func:`environment`), the settings
    (``model``, ``image_size``, ``batch_size``, ``device``, ``steps``, ``warmup``,
    ``latency_iters``, ``compile``), ``reference`` (the key the ratios divide by, or None),
    ``parity_max_abs_diff`` (None without ``public``), ``variants`` (one dict per variant:
    ``key``, ``label``, ``train_images_per_s`` (images over total time),
    ``train_images_per_s_median``, ``latency_ms_mean``, ``latency_ms_std``,
    ``latency_graph_ms_mean`` and ``latency_graph_ms_std`` (on CUDA: batch 1 replayed from a
    captured CUDA graph, :mod:`privatenet.models.graphed`; None elsewhere and for
    ``compile``), ``peak_memory_mb``,
    ``baseline_memory_mb``, ``ratio``), ``fastest`` (the key with the most training
    images/s), ``recommendation``, ``notes`` (a list of strings) and ``skipped`` (the variants
    a default run left out, key -> reason; empty when ``variants`` was given).
    """
    c = BenchConfig(model=model, image_size=image_size, batch_size=batch_size,
                    device=str(device) if isinstance(device, torch.device) else device,
                    steps=steps, warmup=warmup, latency_iters=latency_iters, compile=compile)
    model, image_size, batch_size, steps, warmup, latency_iters, compile = (
        c.model, c.image_size, c.batch_size, c.steps, c.warmup, c.latency_iters, c.compile)
    dev = resolve_device(c.device)
    keys, skipped = _check_variants(variants, model, compile, dev)
    if on_progress is not None and not callable(on_progress):
        raise SettingError("on_progress", on_progress, "is not callable; give a function "
                                                       "(stage, done, total) or None")
    progress = on_progress or (lambda stage, done, total: None)

    # a fixed seed for the inputs and the weights, without changing the caller's RNG state
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        result = _measure(model, image_size, batch_size, dev, steps, warmup, latency_iters,
                          compile, keys, progress)
    result["skipped"] = skipped
    return result


def _measure(model: str, size: int, bs: int, dev: torch.device, steps: int, warmup: int,
             latency_iters: int, compile: bool, keys: list[str],
             progress: Callable[[str, int, int], None]) -> dict:
    env = environment(dev)
    log.info("bench %s %dx%d, batch %d on %s (%s): %s", model, size, size, bs, dev,
             env["device_name"], ", ".join(keys))
    torch.manual_seed(_SEED)
    x = torch.randn(bs, 3, size, size, device=dev)
    y = torch.randint(0, _NUM_CLASSES, (bs,), device=dev)
    x1 = torch.randn(1, 3, size, size, device=dev)
    xc = x.contiguous(memory_format=torch.channels_last)
    x1c = x1.contiguous(memory_format=torch.channels_last)
    # only the ARM models take image_size (their fc depends on it)
    sized = {"image_size": size} if "image_size" in model_options(model) else {}

    def ours(**kw: Any) -> nn.Module:
        return create_model(model, num_classes=_NUM_CLASSES, **sized, **kw).to(dev)

    def public() -> nn.Module:
        fc_in = arm_map_side(resnet_map_side(size)) ** 2
        return PublicRes18Feature(num_classes=_NUM_CLASSES, fc_in=fc_in).to(dev)

    ours()  # an image size the model refuses fails here, before anything is timed
    parity = None
    if "public" in keys:
        progress("parity", 0, 1)
        ref, twin = public().eval(), ours(affinity="batch").eval()
        # strict=False: ours also holds the running affinity buffers, absent from the public
        twin.load_state_dict(ref.state_dict(), strict=False)
        with torch.no_grad():
            parity = (_logits(ref, x[:2]) - _logits(twin, x[:2])).abs().max().item()
        del ref, twin  # not in the baseline memory of the variants
        log.info("parity (ours, batch affinity, vs public re-creation): %.2e", parity)
        progress("parity", 1, 1)

    def cl() -> nn.Module:
        return ours().to(memory_format=torch.channels_last)

    makers: dict[str, tuple[Callable[[], nn.Module], bool, bool, bool]] = {
        "public": (public, False, False, False),
        "fp32": (ours, False, False, False),
        "fused": (ours, False, False, True),
        "channels_last": (cl, True, False, False),
        "channels_last+fused": (cl, True, False, True),
        "bf16": (ours, False, True, False),
        "channels_last+bf16": (cl, True, True, False),
        "compile": (lambda: torch.compile(ours()), False, False, False),
    }
    torch.manual_seed(_SEED)
    flops = training_flops(ours(), x, y)  # per image; the same network in every variant
    gemm = {"fp32": gemm_rate(dev)}
    if any("bf16" in k for k in keys):
        gemm["bf16"] = gemm_rate(dev, dtype=torch.bfloat16)
    log.info("%.2f GFLOP per training image; GEMM %s", flops / 1e9,
             ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemm.items()))
    runs = []
    for key in keys:
        make, channels_last, autocast, fused = makers[key]
        torch.manual_seed(_SEED)  # every variant starts from the same weights
        runs.append(_Variant(key, make(), xc if channels_last else x,
                             x1c if channels_last else x1, y, autocast, dev, fused))

    # memory first and one variant at a time: the timed passes interleave the variants, so
    # their peaks could not be told apart
    for i, v in enumerate(runs):
        v.measure_memory(MEMORY_STEPS)
        progress("memory", i + 1, len(runs))
    # round robin so that a change of machine load hits every variant alike
    for i in range(warmup):
        for v in runs:
            v.train_step()
        progress("warmup", i + 1, warmup)
    for i in range(steps):
        for v in runs:
            v.step_s.append(v.train_step())
        progress("train", i + 1, steps)
    # on CUDA, batch 1 also through a captured graph (not for torch.compile's own graphs):
    # launching a small network's kernels one by one costs more than running them
    graphs = dev.type == "cuda"
    for i in range(LATENCY_WARMUP + latency_iters):
        for v in runs:
            ms = v.infer()
            graph_ms = v.infer(graphed=True) if graphs and v.key != "compile" else None
            if i >= LATENCY_WARMUP:
                v.latency_ms.append(ms)
                if graph_ms is not None:
                    v.graph_latency_ms.append(graph_ms)
        if i >= LATENCY_WARMUP:
            progress("latency", i + 1 - LATENCY_WARMUP, latency_iters)

    reference = next((k for k in ("public", "fp32") if k in keys), None)
    rows = []
    for v in runs:
        rows.append({
            "key": v.key,
            "label": VARIANTS[v.key],
            "train_images_per_s": bs * len(v.step_s) / sum(v.step_s),
            "train_images_per_s_median": bs / statistics.median(v.step_s),
            "latency_ms_mean": statistics.mean(v.latency_ms),
            "latency_ms_std": _std(v.latency_ms),
            "latency_graph_ms_mean": (statistics.mean(v.graph_latency_ms)
                                      if v.graph_latency_ms else None),
            "latency_graph_ms_std": _std(v.graph_latency_ms) if v.graph_latency_ms else None,
            "peak_memory_mb": v.peak_mb,
            "baseline_memory_mb": v.baseline_mb,
        })
    ips = {r["key"]: r["train_images_per_s"] for r in rows}
    for r in rows:
        r["ratio"] = r["train_images_per_s"] / ips[reference] if reference else None
        r["train_gflop_per_s"] = flops * r["train_images_per_s"] / 1e9
        r["gemm_fraction"] = r["train_gflop_per_s"] / gemm["bf16" if "bf16" in r["key"]
                                                            else "fp32"]
        log.info("%s: %.2f train img/s, batch-1 %.2f ms", r["key"], r["train_images_per_s"],
                 r["latency_ms_mean"])

    notes = []
    if graphs:
        notes.append("graph ms: batch 1 replayed from a captured CUDA graph "
                     "(privatenet.models.graphed), beside the eager launch of each kernel")
    if reference is None:
        notes.append("neither public nor fp32 ran: no reference, no ratios")
    if dev.type == "cuda":
        notes.append(f"peak MB: torch's peak CUDA allocation during each variant's own "
                     f"{MEMORY_STEPS} training steps, run alone before the timing (model, "
                     "optimizer state, activations); base MB: allocated before them")
    elif any(r["peak_memory_mb"] is None for r in rows):
        notes.append("peak MB unavailable: /proc/self/clear_refs or /proc/self/status is not "
                     "usable here")
    else:
        notes.append(f"peak MB: the process's peak resident memory (VmHWM) during each "
                     f"variant's own {MEMORY_STEPS} training steps, run alone before the timing; "
                     "it includes all the process held before (base MB, to subtract)")
    return {
        "kind": KIND,
        "environment": env,
        "model": model,
        "image_size": size,
        "batch_size": bs,
        "device": str(dev),
        "steps": steps,
        "warmup": warmup,
        "latency_iters": latency_iters,
        "compile": compile,
        "reference": reference,
        "train_gflop_per_image": flops / 1e9,
        "gemm_gflop_per_s": gemm,
        "parity_max_abs_diff": parity,
        "variants": rows,
        "fastest": max(rows, key=lambda r: r["train_images_per_s"])["key"],
        "recommendation": _recommend(ips, env, model, size, bs, dev),
        "notes": notes,
    }


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _speedup(ips: dict[str, float], pairs: list[tuple[str, str]]
             ) -> tuple[float, str, str] | None:
    """Training speed of the first measured pair ``(with, without)``: the ratio and the pair."""
    for a, b in pairs:
        if a in ips and b in ips:
            return ips[a] / ips[b], a, b
    return None


def variant_of(*, precision: str, memory_format: str, compile: bool,
               device: torch.device) -> str:
    """The bench variant that training with these settings runs on ``device`` (``auto``
    resolved as :mod:`privatenet.train.config` resolves it)."""
    if compile:
        return "compile"
    layout = resolve_memory_format(memory_format, device) == torch.channels_last
    bf16 = resolve_precision(precision, device) == "bf16"
    return "+".join(["channels_last"] * layout + ["bf16"] * bf16) or "fp32"


def _recommend(ips: dict[str, float], env: dict, model: str, size: int, bs: int,
               dev: torch.device) -> dict:
    # each option against the same variant without it: bf16 against fp32 (or channels_last
    # bf16 against channels_last fp32), channels_last likewise
    bf16_pair = _speedup(ips, [("bf16", "fp32"), ("channels_last+bf16", "channels_last")])
    cl_pair = _speedup(ips, [("channels_last", "fp32"), ("channels_last+bf16", "bf16")])
    fused_pair = _speedup(ips, [("fused", "fp32"), ("channels_last+fused", "channels_last")])
    bf16, cl, fused = (None if p is None else p[0] for p in (bf16_pair, cl_pair, fused_pair))
    fastest = max(ips, key=ips.__getitem__)
    parts = [f"for training {model} at {size}x{size}, batch {bs} on {dev}: fastest is "
             f"{fastest} ({VARIANTS[fastest]})"]
    for name, pair in (("bf16 autocast", bf16_pair), ("channels_last", cl_pair),
                       ("fused Adam", fused_pair)):
        if pair is not None:
            ratio, a, b = pair
            verdict = "pays" if ratio > PAYS else "does not pay"
            parts.append(f"{name} {verdict} ({a} at {ratio:.2f}x the training speed of {b})")
    # what training uses here without options (auto precision and memory format), measured
    default = variant_of(precision="auto", memory_format="auto", compile=False, device=dev)
    if default in ips:
        parts.append(f"training's defaults here (auto) are {default}: "
                     f"{ips[default] / ips[fastest]:.2f}x the fastest"
                     + ("" if "public" not in ips else
                        f", {ips[default] / ips['public']:.2f}x the public recipe"))
    emulated = dev.type == "cpu" and not env["bf16_native"] and any("bf16" in k for k in ips)
    rec = {
        "fastest": fastest,
        "default": default,
        "default_of_fastest": ips[default] / ips[fastest] if default in ips else None,
        "bf16_pays": None if bf16 is None else bf16 > PAYS,
        "bf16_speedup": bf16,
        "channels_last_pays": None if cl is None else cl > PAYS,
        "channels_last_speedup": cl,
        "fused_pays": None if fused is None else fused > PAYS,
        "fused_speedup": fused,
        "bf16_emulated": emulated,
        "summary": "; ".join(parts),
    }
    if emulated:
        rec["note"] = ("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 autocast is "
                       "emulated here, so its figures say nothing of CPUs or GPUs that have it")
    return rec


# ------------------------------------------------------------------------------ output file


def check_out_file(path: str | Path) -> Path:
    """Refuse, before anything is measured, an output ``path`` that a run may not write: one
    inside a run folder (an ancestor holds ``run.json``), a symlink, a folder or other non-file,
    an existing file that is not an earlier result (JSON with ``"kind": "privatenet-bench"``),
    or one whose nearest existing parent is not a writable folder. Returns ``path``; writes
    nothing. Each refusal is a one-line :class:`PrivatenetError` naming the file."""
    if isinstance(path, str) and not path.strip():
        raise PrivatenetError("the output file path is empty; give the JSON file to write")
    path = Path(path)
    fix = "choose another output file (--out) or remove it"
    try:
        for folder in path.absolute().parents:
            if (folder / RUN_MARKER).exists():
                raise PrivatenetError(f"{path} is inside the run folder {folder} (it holds "
                                      f"{RUN_MARKER}) and no command writes into a run's folder; "
                                      "choose another output file (--out) outside it")
        if path.is_symlink():
            raise PrivatenetError(f"{path} is a symlink, not an earlier privatenet bench "
                                  f"output; {fix}")
        if path.is_dir():
            raise PrivatenetError(f"{path} is a folder; give the JSON file to write (--out)")
        if path.exists():
            if not path.is_file():
                raise PrivatenetError(f"{path} is not a regular file; {fix}")
            try:
                old = read_json(path)
            except (PrivatenetError, ValueError, RecursionError):
                old = None  # not JSON (a CSV, a binary file): not ours
            if not isinstance(old, dict) or old.get("kind") != KIND:
                raise PrivatenetError(f"{path} exists and is not a privatenet bench output "
                                      f"(no \"kind\": \"{KIND}\"); {fix}")
            log.info("%s holds an earlier bench output: it will be replaced", path)
        # the nearest existing folder above must take the folders to create and the file
        parent = path.absolute().parent
        while not parent.exists() and not parent.is_symlink():
            parent = parent.parent
        if not parent.is_dir():
            raise PrivatenetError(f"cannot create the folder of {path}: {parent} is not a "
                                  "folder; choose another output file (--out)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PrivatenetError(f"cannot write {path}: {parent} is not writable; choose "
                                  "another output file (--out)")
    except OSError as e:
        raise PrivatenetError(f"cannot read {path}: {e.strerror}; {fix}") from None
    return path


# ------------------------------------------------------------------------------------ table


def format_table(result: dict) -> str:
    """``result`` (from :func:`measure`) as plain text: one line on the environment, a row per
    variant (train img/s, median, ratio, batch-1 ms mean ± std, on CUDA the same through a
    captured graph, peak and baseline MB), then the
    parity, the notes, a line per variant left out (and why) and the recommendation."""
    env = result["environment"]
    size = result["image_size"]
    graphs = any(r.get("latency_graph_ms_mean") is not None for r in result["variants"])
    lines = [
        f"torch {env['torch']}, {env['device_name']} ({result['device']}, "
        f"{env['cpu_capability']}), {env['threads']} threads, native bf16: "
        f"{'yes' if env['bf16_native'] else 'no'}; {result['model']} {size}x{size}, train "
        f"batch {result['batch_size']}, {result['steps']} timed steps after {result['warmup']} "
        f"warm-up, variants interleaved step by step",
        "the machine's own limit: GEMM "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in result["gemm_gflop_per_s"].items())
        + f" (measured now); a training step: {result['train_gflop_per_image']:.2f} GFLOP per "
        "image",
        f"{'variant':38s} {'train img/s':>11s} {'(median)':>9s} {'ratio':>7s} {'GFLOP/s':>8s} "
        f"{'of GEMM':>7s} {'batch-1 ms':>17s}" + (f" {'graph ms':>8s}" if graphs else "")
        + f" {'peak MB (base)':>16s}",
    ]
    for r in result["variants"]:
        ratio = f"{r['ratio']:6.2f}x" if r["ratio"] is not None else f"{'-':>7s}"
        if r["peak_memory_mb"] is None:
            mem = f"{'-':>16s}"
        else:
            base = r["baseline_memory_mb"]
            mem = f"{r['peak_memory_mb']:8.0f} ({base:5.0f})" if base is not None else \
                f"{r['peak_memory_mb']:8.0f}        "
        lines.append(
            f"{r['label']:38s} {r['train_images_per_s']:11.2f} "
            f"{r['train_images_per_s_median']:9.2f} {ratio} {r['train_gflop_per_s']:8.1f} "
            f"{r['gemm_fraction']:7.0%} {r['latency_ms_mean']:9.2f} ± "
            f"{r['latency_ms_std']:5.2f}" + (_graph_cell(r) if graphs else "") + f" {mem}"
        )
    if result["parity_max_abs_diff"] is not None:
        lines.append("parity (ours, batch affinity, vs public re-creation, eval): max |logit "
                     f"diff| = {result['parity_max_abs_diff']:.2e}")
    lines += [f"note: {n}" for n in result["notes"]]
    lines += [f"left out {key} ({VARIANTS.get(key, key)}): {why}"
              for key, why in (result.get("skipped") or {}).items()]
    rec = result["recommendation"]
    lines.append(f"recommendation: {rec['summary']}")
    if rec.get("note"):
        lines.append(f"note: {rec['note']}")
    return "\n".join(lines)


def _graph_cell(row: dict) -> str:
    ms = row.get("latency_graph_ms_mean")
    return f" {'-':>8s}" if ms is None else f" {ms:8.2f}"
