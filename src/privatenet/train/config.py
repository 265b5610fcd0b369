"""Optimisation settings of a training run, and the device and seeding helpers every run uses."""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

import numpy as np
import torch

from privatenet.errors import PrivatenetError


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training run.

    Defaults follow the public ARM training scripts: Adam (lr 1e-3, weight decay 1e-4),
    exponential learning-rate decay 0.9 per epoch, the public augmentation recipe.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay: float = 0.9
    seed: int = 0
    augment: bool = True
    device: str = "auto"
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 2), ("eval_batch_size", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise PrivatenetError(f"{name}={value!r} is invalid; give an integer >= {low}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise PrivatenetError(f"seed={self.seed!r} is invalid; give an integer in "
                                  f"[0, {MAX_SEED}]")
        reals = [
            ("lr", lambda v: v > 0, "a positive number"),
            ("weight_decay", lambda v: v >= 0, "a number >= 0"),
            ("lr_decay", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ]
        for name, ok, need in reals:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or not ok(value):
                raise PrivatenetError(f"{name}={value!r} is invalid; give {need}")
        if not isinstance(self.augment, bool):
            raise PrivatenetError(f"augment={self.augment!r} is invalid; give True or False")
        if not isinstance(self.device, str):
            raise PrivatenetError(f"device={self.device!r} is invalid; give auto, cpu or "
                                  "cuda[:N]")
        resolve_device(self.device)


#: The largest seed every generator accepts (NumPy's legacy seeding takes [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else must be a valid device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PrivatenetError(f"device={name!r} is invalid; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrivatenetError(f"device={name!r} requested but CUDA is not available; use cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation draws from torch's global RNG)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere (this CPU has no native bf16: measured 0.08x)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


