"""The paper's ARM ResNet-18 (DESIGN section 3), its batch-independent variant, and ResNet-18.

Network: ResNet-18 without avgpool and fc (``features``, tap ``"backbone"``) -> PixelShuffle(16)
-> ARM block (one shared 1->1 conv, kernel 32, stride 8, applied to both channels; BatchNorm2d(2);
``mean over channels + alpha * global_mean``) -> flatten (tap ``"arm"``) -> dropout -> ``fc``.

The public code computes ``global_mean`` over the batch at inference too, so one face's output
depends on the other faces in its batch (DESIGN section 2). :class:`ARMBlock` keeps a running
estimate of that mean (``affinity="running"``, the default), like BatchNorm's running stats, and
uses it in eval mode; ``affinity="batch"`` reproduces the public behaviour exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models.registry import check_num_classes, create_model, register_model

__all__ = [
    "AFFINITY_MODES",
    "ARMBlock",
    "ARMNet",
    "ResNet18Classifier",
    "arm_map_side",
    "arm_resnet18",
    "load_public_arm_checkpoint",
    "public_state_dict",
    "resnet18",
    "resnet_map_side",
]

log = logging.getLogger(__name__)

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


def check_image_size(model: str, image_size: Any, map_side, min_backbone_side: int = 3) -> int:
    """Validate ``image_size`` for an ARM model; return the backbone map side.

    ``map_side(image_size)`` gives the backbone map side; the ARM head needs at least a 3x3
    backbone map (a 1x1 ARM map otherwise).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise PrivatenetError(f"{model}: image_size must be a positive integer, got {image_size!r}")
    side = map_side(image_size)
    if side < min_backbone_side:
        minimum = next(s for s in range(1, 4096) if map_side(s) >= min_backbone_side)
        raise PrivatenetError(
            f"{model}: image_size={image_size} gives a {side}x{side} backbone map but the ARM "
            f"head needs at least {min_backbone_side}x{min_backbone_side}; use image_size >= "
            f"{minimum}"
        )
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


# --------------------------------------------------------------------------- ResNet-18 weights

# torchvision ResNet-18 children -> index in ``nn.Sequential(*children[:-2])``
_RESNET_TO_FEATURES = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg[:200]}"


def _read_tensor_file(path: str | os.PathLike, what: str) -> Any:
    """Load a torch pickle (``weights_only=True``) or a safetensors file, on the CPU."""
    p = Path(path)
    if not p.is_file():
        raise PrivatenetError(f"{p}: {what} not found; give the path of an existing file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a tensors-only file
        raise PrivatenetError(
            f"{p}: cannot read {what} ({_first_line(exc)}); it must be a torch state dict saved "
            "with torch.save (tensors only) or a .safetensors file"
        ) from exc


def _unwrap_state_dict(obj: Any, path: Path, what: str,
                       wrappers: tuple[str, ...] = ("model_state_dict", "state_dict", "model")
                       ) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PrivatenetError(f"{path}: not a {what} (no state dict of tensors inside)")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PrivatenetError(f"{path}: not a {what} (entry {key!r} is not a tensor)")
        state[key.removeprefix("module.")] = value
    return state


def _check_strict(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                  path: Path, what: str, optional: tuple[str, ...] = ()) -> None:
    """Raise naming the first missing, unexpected or mis-shaped key of ``state``."""
    for key in expected:
        if key not in state and key not in optional:
            raise PrivatenetError(f"{path}: not {what}: missing key {key!r}")
    for key in state:
        if key not in expected:
            raise PrivatenetError(f"{path}: not {what}: unexpected key {key!r}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise PrivatenetError(
                f"{path}: not {what}: {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}"
            )


def read_resnet18_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict from ``path`` (torch pickle or safetensors), fc dropped.

    ``module.`` prefixes are stripped and a ``{"state_dict": ...}`` wrapper is accepted. Keys
    other than ``conv1.*``, ``bn1.*``, ``layer1-4.*`` and ``fc.*`` raise :class:`PrivatenetError`.
    """
    p = Path(path)
    what = "torchvision ResNet-18 state dict"
    state = _unwrap_state_dict(_read_tensor_file(p, "backbone weights"), p, what)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in torchvision.models.resnet18().state_dict().items()
                if not k.startswith("fc.")}
    _check_strict(expected, state, p, f"a {what} (keys conv1.*, bn1.*, layer1-4.*, fc.*)")
    return state


def load_backbone_into_features(features: nn.Module, path: str | os.PathLike) -> None:
    """Load torchvision ResNet-18 weights into ``nn.Sequential(*resnet18().children())[:-2]``."""
    state = {}
    for key, value in read_resnet18_weights(path).items():
        head, _, rest = key.partition(".")
        state[f"{_RESNET_TO_FEATURES[head]}.{rest}"] = value
    features.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- registry entries


@register_model(tags=("arm",))
def arm_resnet18(num_classes: int, image_size: int = 224, affinity: str = "running",
                 drop_rate: float = 0.0, backbone_weights: str | None = None) -> ARMNet:
    """The paper's network (DESIGN section 3): ResNet-18 features + PixelShuffle(16) + ARM + fc.

    At 224x224: backbone 512x7x7, ARM map 11x11 (121 features), 11,178,395 parameters with 7
    classes. ``backbone_weights``: optional path to torchvision ResNet-18 weights (for instance
    ImageNet or MS-Celeb) loaded into ``features``; nothing is downloaded.
    """
    check_num_classes(num_classes, "arm_resnet18")
    side = check_image_size("arm_resnet18", image_size, resnet_map_side)
    check_affinity(affinity)
    drop_rate = check_drop_rate("arm_resnet18", drop_rate)
    features = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    if backbone_weights is not None:
        load_backbone_into_features(features, backbone_weights)
    return ARMNet(features, backbone_side=side, num_classes=num_classes, affinity=affinity,
                  drop_rate=drop_rate)


class ResNet18Classifier(torchvision.models.ResNet):
    """torchvision ResNet-18 (same state-dict keys) with taps ``backbone`` and ``pool``."""

    taps = ("backbone", "pool")

    def __init__(self, num_classes: int):
        super().__init__(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2],
                         num_classes=num_classes)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        backbone = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pool = torch.flatten(self.avgpool(backbone), 1)
        return self.fc(pool), {"backbone": backbone, "pool": pool}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]


@register_model
def resnet18(num_classes: int, backbone_weights: str | None = None) -> ResNet18Classifier:
    """torchvision ResNet-18 with a new ``fc``; optional backbone weights from a path."""
    check_num_classes(num_classes, "resnet18")
    model = ResNet18Classifier(num_classes)
    if backbone_weights is not None:
        # read_resnet18_weights checked every key but fc.*, which stays newly initialised
        model.load_state_dict(read_resnet18_weights(backbone_weights), strict=False)
    return model


# --------------------------------------------------------------------------- public checkpoints


def public_state_dict(model: ARMNet) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the public layout (without our affinity buffers)."""
    return {k: v for k, v in model.state_dict().items() if k not in AFFINITY_BUFFERS}


def load_public_arm_checkpoint(path: str | os.PathLike, *, num_classes: int = 7,
                               image_size: int = 224,
                               calibration: Iterable[Any] | None = None) -> ARMNet:
    """Load a public ARM ResNet-18 checkpoint (``{"model_state_dict": ...}``), in eval mode.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and
    loaded strictly; ``module.`` prefixes (DataParallel) are stripped. The public checkpoints
    have no running affinity mean: with ``calibration`` (an iterable of normalised float image
    batches, for instance from the training split) it is estimated and the model stays in
    ``running`` mode; without, the model switches to ``batch`` mode (the public, batch-dependent
    behaviour) and a warning is logged. A checkpoint that has our affinity buffers keeps them.
    """
    p = Path(path)
    model = create_model("arm_resnet18", num_classes=num_classes, image_size=image_size)
    what = f"an ARM ResNet-18 checkpoint for num_classes={num_classes}, image_size={image_size}"
    state = _unwrap_state_dict(_read_tensor_file(p, "ARM checkpoint"), p,
                               "ARM ResNet-18 checkpoint")
    _check_strict(model.state_dict(), state, p, what, optional=AFFINITY_BUFFERS)
    has_buffers = all(k in state for k in AFFINITY_BUFFERS)
    model.load_state_dict(state, strict=False)
    model.eval()
    if calibration is not None:
        n = model.calibrate_affinity(calibration)
        log.info("%s: affinity mean calibrated on %d images", p, n)
    elif not (has_buffers and model.arm.calibrated):
        model.arm.affinity = "batch"
        log.warning(
            "%s: public checkpoint has no running affinity mean; using affinity='batch', so "
            "inference depends on the other images in the batch until the model is calibrated "
            "(pass calibration=... or call model.calibrate_affinity(batches))", p,
        )
    return model
