"""ResNet-18 pieces: reading torchvision ResNet-18 weights from a user's file (nothing is
downloaded), and a torchvision ResNet-18 classifier with named taps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.readers import brief

# torchvision ResNet-18 children -> index in ``nn.Sequential(*children[:-2])``
_RESNET_TO_FEATURES = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg[:200]}"


def read_tensor_file(path: str | os.PathLike, what: str) -> Any:
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


def unwrap_state_dict(obj: Any, path: Path, what: str,
                       wrappers: tuple[str, ...] = ("model_state_dict", "state_dict", "model")
                       ) -> dict[str, torch.Tensor]:
    """The state dict of tensors in ``obj`` (read from ``path``), inside one of ``wrappers`` or
    not, ``module.`` prefixes stripped; an entry that is not a tensor, or a floating-point
    tensor holding NaN or Inf, is a one-line :class:`PrivatenetError` naming the file and the
    entry."""
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
        # Every file of external weights passes here (public checkpoints, backbone weights):
        # NaN or Inf weights (a diverged training) would import and then predict garbage.
        if (value.is_floating_point() or value.is_complex()) and not bool(
                torch.isfinite(value).all()):
            raise PrivatenetError(f"{path}: tensor {brief(key)} holds NaN or infinite values; the "
                                  "weights are broken (a diverged or corrupt training), use "
                                  "another checkpoint")
        state[key.removeprefix("module.")] = value
    return state


def check_strict_keys(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
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
    state = unwrap_state_dict(read_tensor_file(p, "backbone weights"), p, what)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in torchvision.models.resnet18().state_dict().items()
                if not k.startswith("fc.")}
    check_strict_keys(expected, state, p, f"a {what} (keys conv1.*, bn1.*, layer1-4.*, fc.*)")
    return state


def load_backbone_into_features(features: nn.Module, path: str | os.PathLike) -> None:
    """Load torchvision ResNet-18 weights into ``nn.Sequential(*resnet18().children())[:-2]``."""
    state = {}
    for key, value in read_resnet18_weights(path).items():
        head, _, rest = key.partition(".")
        state[f"{_RESNET_TO_FEATURES[head]}.{rest}"] = value
    features.load_state_dict(state, strict=True)


class ResNet18Classifier(torchvision.models.ResNet):
    """torchvision ResNet-18 (same state-dict keys) with taps ``backbone`` and ``pool``."""

    taps = ("backbone", "pool")
    #: The layer whose output each tap is (``pool``: flattened to (N, 512)).
    tap_layers = {"backbone": "layer4", "pool": "avgpool"}

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

    def forward_from(self, tap: str, features: torch.Tensor) -> torch.Tensor:
        """The logits computed from ``tap``'s features: the layers after the tap only.

        ``forward_from(tap, forward_taps(x)[1][tap])`` equals ``forward(x)`` exactly.
        ``"backbone"``: average pool, flatten, ``fc``; ``"pool"``: ``fc``. Another tap is a
        :class:`PrivatenetError` naming the taps that can be cut.
        """
        if tap == "backbone":
            features = torch.flatten(self.avgpool(features), 1)
        elif tap != "pool":
            raise PrivatenetError(f"ResNet18Classifier has no tap {tap!r} to cut at; taps that "
                                  f"can be cut: {', '.join(self.taps)}")
        return self.fc(features)
