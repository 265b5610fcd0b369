"""Optimisation settings of a training run, and the device and seeding helpers every run uses."""

from __future__ import annotations

import functools
import math
import numbers
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from privatenet.checks import MAX_SEED, check_seed, is_int
from privatenet.errors import SettingError
from privatenet.settings import setting

#: Training precisions: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere, a choice by device
#: type alone (a choice by measured speed would make a seed's numbers depend on machine load).
PRECISIONS = ("auto", "fp32", "bf16")
#: Memory layouts of images and convolution weights: ``auto`` is channels_last on CUDA (tensor
#: cores want it) and contiguous elsewhere.
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training run.

    Defaults follow the public ARM training scripts: Adam (lr 1e-3, weight decay 1e-4),
    exponential learning-rate decay 0.9 per epoch, the public augmentation recipe.

    Speed settings (docs/design.md §4.4): ``precision`` (``auto``: bf16 autocast on CUDA, fp32
    elsewhere; ``fp32``; ``bf16``), ``memory_format`` (``auto``: channels_last on CUDA,
    contiguous elsewhere) and ``compile`` (``torch.compile`` of the forward pass, opt-in).
    """

    epochs: int = setting(10, "training epochs; the paper trains 200")
    batch_size: int = setting(64, "mini-batch size")
    lr: float = setting(1e-3, "Adam learning rate; the paper's is 1e-3")
    weight_decay: float = setting(1e-4, "Adam weight decay; the public scripts' is 1e-4")
    lr_decay: float = setting(0.9, "exponential learning-rate decay per epoch; the "
                                   "public scripts' is 0.9")
    seed: int = setting(0, "seed: one seed gives the same numbers on CPU")
    augment: bool = setting(True, "the public augmentation recipe (flip or Gaussian noise "
                                  "with p=0.5, random erasing 2-10%)")
    device: str = setting("auto", "auto (CUDA when present, with bf16 autocast), cpu, or "
                                  "cuda[:N]")
    eval_batch_size: int = setting(256, "batch size of evaluation and feature extraction")
    precision: str = setting("auto", "training precision: auto is bf16 autocast on CUDA and "
                                     "fp32 on CPU; bf16 on a CPU pays only with native bf16 "
                                     "('privatenet bench' measures it)", choices=PRECISIONS)
    memory_format: str = setting("auto", "layout of images and convolution weights: auto is "
                                         "channels_last on CUDA, contiguous on CPU",
                                 choices=MEMORY_FORMATS)
    compile: bool = setting(False, "compile the training forward pass with torch.compile "
                                   "(slow to start; pays on long runs)")

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 2), ("eval_batch_size", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise SettingError(name, value, f"is invalid; give an integer >= {low}")
        check_seed(self.seed)
        reals = [
            ("lr", lambda v: v > 0, "a positive number"),
            ("weight_decay", lambda v: v >= 0, "a number >= 0"),
            ("lr_decay", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ]
        for name, ok, need in reals:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or not ok(value):
                raise SettingError(name, value, f"is invalid; give {need}")
        if not isinstance(self.augment, bool):
            raise SettingError("augment", self.augment, "is invalid; give True or False")
        if not isinstance(self.device, str):
            raise SettingError("device", self.device, "is invalid; give auto, cpu or cuda[:N]")
        resolve_device(self.device)
        for name, choices in (("precision", PRECISIONS), ("memory_format", MEMORY_FORMATS)):
            if getattr(self, name) not in choices:
                raise SettingError(name, getattr(self, name),
                                   f"is unknown; use one of {', '.join(choices)}")
        if not isinstance(self.compile, bool):
            raise SettingError("compile", self.compile, "is invalid; give True or False")
        if self.compile:
            check_compiler()

    def key(self) -> dict:
        """The settings that identify a run (fingerprints, resume checks, stage keys): every
        field, except the speed settings while they are at their defaults, so that runs and
        cached stages from before those settings existed keep their identity."""
        values = asdict(self)
        for name in SPEED_SETTINGS:
            if values[name] == getattr(TrainConfig, name):
                del values[name]
        return values


@functools.cache
def check_compiler() -> None:
    """Refuse ``compile=True`` up front, before any data is read or any folder written, when
    torch.compile's inductor backend finds no working C++ compiler (it builds its kernels with
    one; without it the first training step fails deep inside torch)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: the compile step itself will tell
        return
    try:
        get_cpp_compiler()
    except Exception as e:  # torch raises its own InvalidCxxCompiler (a RuntimeError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SettingError("compile", True, f"needs a working C++ compiler for torch.compile "
                           f"({first}); install one (apt-get install g++, or set CXX) or "
                                            "train without compile") from None


#: Settings that change speed and, by rounding only, the numbers (left out of keys at defaults).
SPEED_SETTINGS = ("precision", "memory_format", "compile")

#: The most seeds a repeated measurement (``reproduce --seeds``, ``audit --seeds``) may take:
#: each seed is a whole rerun, so a mistyped count would otherwise run for days (or grow a plan
#: in memory for minutes) before anything is reported.
MAX_SEEDS = 100


def check_seeds(seeds: object, *, first: int = 0) -> int:
    """``seeds``, a number of seeds (``first``, ``first + 1``, ...), as an integer in
    1..:data:`MAX_SEEDS` whose last seed is at most :data:`MAX_SEED`; else a one-line
    :class:`~privatenet.errors.SettingError`."""
    if not is_int(seeds) or not 1 <= seeds <= MAX_SEEDS:
        raise SettingError("seeds", seeds, f"is invalid; give an integer in 1..{MAX_SEEDS}")
    if first + seeds - 1 > MAX_SEED:
        raise SettingError("seeds", seeds, f"from seed {first} reaches seed "
                           f"{first + seeds - 1}, above {MAX_SEED}; give a smaller seed")
    return int(seeds)



def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else must be a valid device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SettingError("device", name, "is invalid; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", name, "requested but CUDA is not available; use cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation draws from torch's global RNG)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def resolve_memory_format(memory_format: str, device: torch.device) -> torch.memory_format:
    """``auto`` is channels_last on CUDA, contiguous elsewhere."""
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cuda" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16 support; a CPU with
    AVX512-BF16 or AMX, as oneDNN reports it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # private API, the only query for AVX512-BF16/AMX; failing means "don't know"
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=resolve_precision(precision, device) == "bf16")


