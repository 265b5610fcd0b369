"""Optimisation settings of a training run, and the device and seeding helpers every run uses."""

from __future__ import annotations

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
        checks = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= 2, "an integer >= 2"),
            ("lr", self.lr > 0, "a positive number"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("lr_decay", 0 < self.lr_decay <= 1, "a number in (0, 1]"),
            ("eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1"),
        ]
        for name, ok, need in checks:
            if not ok:
                raise PrivatenetError(f"{name.replace('_', ' ')} {getattr(self, name)!r} is "
                                      f"invalid; give {need}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else must be a valid device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PrivatenetError(f"device {name!r} is invalid; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrivatenetError(f"device {name!r} requested but CUDA is not available; use cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation draws from torch's global RNG)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere (this CPU has no native bf16: measured 0.08x)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


