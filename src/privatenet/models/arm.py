"""The paper's ARM head (docs/design.md §3) and its batch-independent affinity.

Network: a backbone with a 512-channel map (tap ``"backbone"``) -> PixelShuffle(16) -> ARM block
(one shared 1->1 conv, kernel 32, stride 8, applied to both channels; BatchNorm2d(2);
``mean over channels + alpha * global_mean``) -> flatten (tap ``"arm"``) -> dropout -> ``fc``.

The public code computes ``global_mean`` over the batch at inference too, so one face's output
depends on the other faces in its batch (docs/design.md §2). :class:`ARMBlock` keeps a running
estimate of that mean (``affinity="running"``, the default), like BatchNorm's running stats, and
uses it in eval mode; ``affinity="batch"`` reproduces the public behaviour exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from privatenet.data.spec import check_image_size
from privatenet.errors import PrivatenetError, SettingError

__all__ = [
    "AFFINITY_BUFFERS",
    "AFFINITY_MODES",
    "ARMBlock",
    "ARMNet",
    "arm_map_side",
    "resnet_map_side",
]

#: ``running``: batch mean in training (and a running estimate updated), the estimate in eval.
#: ``batch``: the batch mean always, in training and eval (the public code).
AFFINITY_MODES = ("running", "batch")

#: Our own state-dict entries, absent from the public checkpoints.
AFFINITY_BUFFERS = ("arm.affinity_mean", "arm.affinity_batches")

_SHUFFLE = 16  # PixelShuffle(16): 512 channels -> 2 channels, 16x the side
ARM_IN_CHANNELS = 2 * _SHUFFLE * _SHUFFLE
_KERNEL, _STRIDE = 32, 8


def arm_map_side(backbone_side: int) -> int:
    """Side of the ARM output map for a ``backbone_side`` x ``backbone_side`` backbone map."""
    return (_SHUFFLE * backbone_side - _KERNEL) // _STRIDE + 1


def resnet_map_side(image_size: int) -> int:
    """Side of ResNet-18's layer4 map for a square input (conv1, maxpool, layer2-4 halve it)."""
    side = image_size
    for _ in range(5):
        side = (side + 1) // 2  # floor((s + 2p - k) / 2) + 1 == ceil(s / 2) for every stride-2 op
    return side


def arm_backbone_side(model: str, image_size: Any, map_side, min_backbone_side: int = 3) -> int:
    """The backbone map side of an ARM model for ``image_size``, after the one image-size check
    of the package (:func:`privatenet.data.spec.check_image_size`) and the ARM head's own
    minimum: ``map_side(image_size)`` must be at least 3 (a 1x1 ARM map otherwise)."""
    if image_size is None:
        raise PrivatenetError(f"{model}: image_size=None; give the input size in pixels")
    check_image_size(image_size)
    side = map_side(image_size)
    if side < min_backbone_side:
        minimum = next(s for s in range(1, 4096) if map_side(s) >= min_backbone_side)
        raise SettingError(
            "image_size", image_size, f"gives {model} a {side}x{side} backbone map but the ARM "
            f"head needs at least {min_backbone_side}x{min_backbone_side}; use {{image_size}} "
            f">= {minimum}", mentions=("image_size",))
    return side


def check_affinity(affinity: Any) -> str:
    if affinity not in AFFINITY_MODES:
        raise PrivatenetError(
            f"unknown ARM affinity mode {affinity!r}; use one of {', '.join(AFFINITY_MODES)}"
        )
    return affinity


def check_drop_rate(model: str, drop_rate: Any) -> float:
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not (
        0.0 <= drop_rate < 1.0
    ):
        raise PrivatenetError(f"{model}: drop_rate must be a number in [0, 1), got {drop_rate!r}")
    return float(drop_rate)


class ARMBlock(nn.Module):
    """The public ``Amend_raf`` block, vectorised, with a running affinity mean.

    Input (N, 2, H, W) (the PixelShuffle(16) output); output (N, 1, h, w) with
    ``h = (H - 32) // 8 + 1``. State-dict keys ``de_albino.weight``, ``bn.*``, ``alpha`` match the
    public code; ``affinity_mean`` (h x w) and ``affinity_batches`` are ours.

    ``affinity`` (settable at run time): ``"running"`` uses the batch mean in training and the
    running estimate in eval (a face's output is independent of its batch); ``"batch"`` uses the
    batch mean always (the public behaviour). In training the estimate is updated in both modes:
    the first batch sets it, later batches blend in with ``momentum`` (0.1, like BatchNorm;
    ``None`` gives a cumulative average).
    """

    def __init__(self, map_side: int, *, affinity: str = "running", momentum: float | None = 0.1):
        super().__init__()
        self.de_albino = nn.Conv2d(1, 1, kernel_size=_KERNEL, stride=_STRIDE, padding=0,
                                   bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.alpha = nn.Parameter(torch.tensor([1.0]))
        self.map_side = map_side
        self.momentum = momentum
        self.register_buffer("affinity_mean", torch.zeros(map_side, map_side))
        self.register_buffer("affinity_batches", torch.tensor(0, dtype=torch.long))
        self.affinity = affinity

    @property
    def affinity(self) -> str:
        return self._affinity

    @affinity.setter
    def affinity(self, mode: str) -> None:
        self._affinity = check_affinity(mode)

    @property
    def calibrated(self) -> bool:
        """Whether ``affinity_mean`` holds an estimate (from training or calibration)."""
        return bool(self.affinity_batches.item() > 0)

    def extra_repr(self) -> str:
        return f"map_side={self.map_side}, affinity={self._affinity!r}, momentum={self.momentum}"

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The post-BN map (N, 2, h, w): the shared conv on each channel at once, then BN."""
        if x.dim() != 4 or x.shape[1] != 2:
            raise PrivatenetError(
                f"ARM block expects a (N, 2, H, W) map (PixelShuffle(16) of 512 channels), got "
                f"{tuple(x.shape)}"
            )
        n, c, h, w = x.shape
        y = self.de_albino(x.reshape(n * c, 1, h, w))
        y = y.reshape(n, c, y.shape[-2], y.shape[-1])
        return self.bn(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.normalized(x)
        local = y.mean(1, keepdim=True)
        if self.training or self._affinity == "batch":
            global_mean = y.mean(dim=(0, 1))
            if self.training:
                self._update(global_mean.detach())
        else:
            self._check_side(y)
            global_mean = self.affinity_mean.to(y.dtype)
        return local + self.alpha * global_mean

    def _check_side(self, y: torch.Tensor, strict: bool = False) -> bool:
        """Whether ``y``'s map fits the running estimate; raise if not (and running or strict)."""
        if tuple(y.shape[-2:]) == tuple(self.affinity_mean.shape):
            return True
        if self._affinity == "batch" and not strict:
            return False
        raise PrivatenetError(
            f"ARM map is {y.shape[-2]}x{y.shape[-1]} but the running affinity mean is "
            f"{self.map_side}x{self.map_side}: feed images of the size the model was built "
            "for, or set arm.affinity = 'batch'"
        )

    @torch.no_grad()
    def _update(self, batch_mean: torch.Tensor) -> None:
        if not self._check_side(batch_mean.unsqueeze(0)):
            return  # batch mode on another input size: nothing to track
        buf = self.affinity_mean
        seen = self.affinity_batches.to(buf.dtype)
        if self.momentum is None:
            weight = 1.0 / (seen + 1.0)
        else:  # 1 for the first batch, momentum afterwards
            weight = 1.0 - (1.0 - self.momentum) * (seen > 0).to(buf.dtype)
        buf.lerp_(batch_mean.to(buf.dtype), weight)
        self.affinity_batches.add_(1)

    @torch.no_grad()
    def set_affinity_mean(self, mean: torch.Tensor, batches: int = 1) -> None:
        """Set the running estimate (h x w) directly and mark it as calibrated."""
        if tuple(mean.shape) != tuple(self.affinity_mean.shape):
            raise PrivatenetError(
                f"affinity mean of shape {tuple(mean.shape)} does not fit the "
                f"{self.map_side}x{self.map_side} ARM map"
            )
        self.affinity_mean.copy_(mean)
        self.affinity_batches.fill_(max(int(batches), 1))


class ARMNet(nn.Module):
    """Any backbone with a 512-channel map, followed by the paper's ARM head.

    Attributes ``features``, ``arrangement`` (PixelShuffle(16), no parameters), ``arm``
    (:class:`ARMBlock`), ``dropout`` and ``fc`` give the public state-dict layout. Taps:
    ``"backbone"`` (N, 512, m, m) and ``"arm"`` (N, (2m-3)^2). With ``features=nn.Identity()``
    this is the paper's adversary head on backbone features.
    """

    taps = ("backbone", "arm")
    #: The layer whose output each tap is (``arm``: flattened to (N, (2m-3)^2)).
    tap_layers = {"backbone": "features", "arm": "arm"}

    def __init__(self, features: nn.Module, *, backbone_side: int, num_classes: int,
                 affinity: str = "running", drop_rate: float = 0.0):
        super().__init__()
        self._config: dict[str, Any] = {}
        side = arm_map_side(backbone_side)
        self.features = features
        self.arrangement = nn.PixelShuffle(_SHUFFLE)
        self.arm = ARMBlock(side, affinity=affinity)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(side * side, num_classes)

    @property
    def config(self) -> dict[str, Any]:
        """Plain-value config; its ``affinity`` follows ``arm.affinity`` when that is changed."""
        cfg = dict(self._config)
        if "affinity" in cfg:
            cfg["affinity"] = self.arm.affinity
        return cfg

    @config.setter
    def config(self, value: Mapping[str, Any]) -> None:
        self._config = dict(value)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        backbone = self.features(x)
        arm = self.arm(self.arrangement(backbone)).flatten(1)
        return self.fc(self.dropout(arm)), {"backbone": backbone, "arm": arm}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]

    def forward_from(self, tap: str, features: torch.Tensor) -> torch.Tensor:
        """The logits computed from ``tap``'s features: the layers after the tap only.

        ``forward_from(tap, forward_taps(x)[1][tap])`` equals ``forward(x)`` exactly (same
        operations in the same order). ``"backbone"``: PixelShuffle, ARM block, dropout, ``fc``;
        ``"arm"``: dropout and ``fc``. Another tap is a :class:`PrivatenetError` naming the taps
        that can be cut.
        """
        if tap == "backbone":
            features = self.arm(self.arrangement(features)).flatten(1)
        elif tap != "arm":
            raise PrivatenetError(f"ARMNet has no tap {tap!r} to cut at; taps that can be cut: "
                                  f"{', '.join(self.taps)}")
        return self.fc(self.dropout(features))

    @torch.no_grad()
    def calibrate_affinity(self, batches: Iterable[Any]) -> int:
        """Set ``arm.affinity_mean`` from ``batches`` of normalised float images; return the count.

        The estimate is the mean, over all images, of the post-BN map (BN in eval mode) averaged
        over its two channels. A batch may be a tensor or a tuple whose first item is one (as a
        DataLoader yields). Training flags are restored afterwards.
        """
        flags = {m: m.training for m in self.modules()}
        self.eval()
        ref = self.arm.alpha
        total: torch.Tensor | None = None
        count = nbatches = 0
        try:
            for batch in batches:
                if isinstance(batch, (tuple, list)) and batch:
                    batch = batch[0]
                if not isinstance(batch, torch.Tensor) or not batch.is_floating_point() or (
                    batch.dim() != 4
                ):
                    raise PrivatenetError(
                        "calibration batches must be normalised float image tensors (N, C, H, W), "
                        f"got {type(batch).__name__}"
                        + (f" {batch.dtype} {tuple(batch.shape)}"
                           if isinstance(batch, torch.Tensor) else "")
                    )
                x = batch.to(device=ref.device)
                post = self.arm.normalized(self.arrangement(self.features(x)))
                self.arm._check_side(post, strict=True)
                part = post.float().mean(1).sum(0, dtype=torch.float64)
                total = part if total is None else total + part
                count += x.shape[0]
                nbatches += 1
        finally:
            for m, flag in flags.items():
                m.training = flag
        if total is None or count == 0:
            raise PrivatenetError("calibration data gave no images; pass a non-empty iterable")
        self.arm.set_affinity_mean((total / count).to(self.arm.affinity_mean.dtype), nbatches)
        return count
