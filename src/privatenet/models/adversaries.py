"""Adversaries: heads that read a tap of a classifier and predict a private attribute.

Kinds (:func:`create_adversary`):

- ``arm_fc``: the paper's head on backbone maps (512, m, m): PixelShuffle(16) + ARM block
  (running affinity) + Linear((2m-3)^2, K). It is :class:`~privatenet.models.arm.ARMNet` with
  an identity backbone, so the head code is shared with the classifier.
- ``fc``: the paper's head on the ARM vector: Linear(D, K) on the flattened tap.
- ``linear``: Linear on the tap, global-average-pooled (maps, default) or flattened.
- ``mlp``: Linear(D, hidden) - ReLU - Linear(hidden, K), same input handling as ``linear``.
- ``conv``: a deeper head on spatial maps (C, H, W): two 3x3 conv-BN-ReLU layers of ``width``
  channels, global average pool, Linear(width, K); it sees spatial patterns the pooled heads
  cannot.

Every adversary has ``config`` (plain values) and is re-created by :func:`adversary_from_config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models.arm import ARM_IN_CHANNELS, ARMNet, check_affinity
from privatenet.models.registry import check_model_name, check_num_classes, list_models

__all__ = [
    "ADVERSARY_KINDS",
    "ProbeAdversary",
    "adversary_from_config",
    "create_adversary",
    "default_adversary",
]

ADVERSARY_KINDS = ("arm_fc", "fc", "linear", "mlp", "conv")
POOLS = ("avg", "flatten")

# options of each kind and their defaults (None: decided from the tap shape)
_OPTIONS: dict[str, dict[str, Any]] = {
    "arm_fc": {"affinity": "running"},
    "fc": {},
    "linear": {"pool": None},
    "mlp": {"pool": None, "hidden": 256},
    "conv": {"width": 128},
}


class ProbeAdversary(nn.Module):
    """A linear or MLP head on a tap: pool (``avg`` over spatial dims, or ``flatten``), then
    ``head``. The input must have shape (N, *tap_shape)."""

    def __init__(self, tap_shape: tuple[int, ...], num_classes: int, *, pool: str,
                 hidden: int | None = None):
        super().__init__()
        self.tap_shape = tuple(tap_shape)
        self.pool = pool
        dim = math.prod(self.tap_shape) if pool == "flatten" else self.tap_shape[0]
        if hidden is None:
            self.head: nn.Module = nn.Linear(dim, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, num_classes))
        self.config: dict[str, Any] = {}

    def extra_repr(self) -> str:
        return f"tap_shape={self.tap_shape}, pool={self.pool!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.tap_shape:
            raise PrivatenetError(
                f"adversary expects features of shape (N, {', '.join(map(str, self.tap_shape))})"
                f", got {tuple(x.shape)}"
            )
        x = x.flatten(1) if self.pool == "flatten" else x.mean(dim=tuple(range(2, x.dim())))
        return self.head(x)


def _check_tap_shape(tap_shape: Any) -> tuple[int, ...]:
    if (not isinstance(tap_shape, (tuple, list)) or not tap_shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                       for s in tap_shape)):
        raise PrivatenetError(
            f"tap_shape must be a non-empty tuple of positive ints (the tap's shape without the "
            f"batch dimension), got {tap_shape!r}"
        )
    return tuple(tap_shape)


def create_adversary(kind: str, *, tap_shape: tuple[int, ...], num_classes: int,
                     **options: Any) -> nn.Module:
    """Create an adversary of ``kind`` reading features of ``tap_shape`` (no batch dimension)
    and predicting ``num_classes`` private classes.

    Options: ``arm_fc``: ``affinity`` ("running"); ``linear``: ``pool`` ("avg" for maps,
    "flatten"); ``mlp``: ``pool`` and ``hidden`` (256); ``conv``: ``width`` (128, maps only).
    Bad kinds, shapes or options raise
    :class:`PrivatenetError`.
    """
    if kind not in _OPTIONS:
        raise PrivatenetError(
            f"unknown adversary kind {kind!r}; valid kinds: {', '.join(ADVERSARY_KINDS)}"
        )
    valid = _OPTIONS[kind]
    for key in options:
        if key not in valid:
            raise PrivatenetError(
                f"adversary {kind!r} has no option {key!r}; valid options: "
                f"{', '.join(valid) if valid else '(none)'}"
            )
    shape = _check_tap_shape(tap_shape)
    check_num_classes(num_classes, f"adversary {kind!r}")
    opts = {**valid, **options}

    if kind == "conv":
        width = opts["width"]
        if len(shape) != 3 or isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise PrivatenetError(
                f"adversary 'conv' reads a map (C, H, W) with an integer width >= 1, got tap "
                f"shape {shape} and width={width!r}; use 'mlp' for vector taps"
            )
        model: nn.Module = nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    elif kind == "arm_fc":
        if len(shape) != 3 or shape[0] != ARM_IN_CHANNELS or shape[1] != shape[2] or shape[1] < 3:
            raise PrivatenetError(
                f"adversary 'arm_fc' reads a backbone map of shape ({ARM_IN_CHANNELS}, m, m) "
                f"with m >= 3, got {shape}; use 'mlp' or 'linear' for other taps"
            )
        model: nn.Module = ARMNet(nn.Identity(), backbone_side=shape[1], num_classes=num_classes,
                                  affinity=check_affinity(opts["affinity"]))
    else:
        if kind == "fc":
            pool = "flatten"
        else:
            pool = opts["pool"]
            if pool is None:
                pool = "avg" if len(shape) >= 2 else "flatten"
            if pool not in POOLS:
                raise PrivatenetError(
                    f"adversary {kind!r}: unknown pool {pool!r}; use 'avg' or 'flatten'"
                )
            if pool == "avg" and len(shape) < 2:
                raise PrivatenetError(
                    f"adversary {kind!r}: pool='avg' needs a map (C, H, W), the tap is a vector "
                    f"{shape}; use pool='flatten'"
                )
            opts["pool"] = pool
        hidden = None
        if kind == "mlp":
            hidden = opts["hidden"]
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise PrivatenetError(
                    f"adversary 'mlp': hidden must be a positive integer, got {hidden!r}"
                )
        model = ProbeAdversary(shape, num_classes, pool=pool, hidden=hidden)
    model.config = {"kind": kind, "tap_shape": list(shape), "num_classes": num_classes, **opts}
    return model


def adversary_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Re-create an adversary from its ``config`` (as stored in a checkpoint)."""
    if not isinstance(config, Mapping) or not {"kind", "tap_shape", "num_classes"} <= set(config):
        raise PrivatenetError(
            "adversary config must be a mapping with 'kind', 'tap_shape' and 'num_classes', "
            f"got {config!r}"
        )
    options = dict(config)
    kind = options.pop("kind")
    tap_shape = options.pop("tap_shape")
    num_classes = options.pop("num_classes")
    if isinstance(tap_shape, list):
        tap_shape = tuple(tap_shape)
    return create_adversary(kind, tap_shape=tap_shape, num_classes=num_classes, **options)


#: The paper's adversary heads on the taps of the ARM models.
_PAPER_HEADS = {"backbone": "arm_fc", "arm": "fc"}


def default_adversary(model_name: str, tap: str) -> str:
    """The adversary kind to use on ``tap`` of model ``model_name``.

    ARM models (``list_models("arm")``): the paper's heads (``backbone`` -> ``arm_fc``,
    ``arm`` -> ``fc``); any other model: ``mlp``.
    """
    check_model_name(model_name)  # unknown model -> PrivatenetError listing the valid ones
    if model_name in list_models("arm"):
        if tap not in _PAPER_HEADS:
            raise PrivatenetError(
                f"model {model_name!r} has no tap {tap!r}; valid taps: "
                f"{', '.join(_PAPER_HEADS)}"
            )
        return _PAPER_HEADS[tap]
    return "mlp"
