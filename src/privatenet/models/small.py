"""Small fast CNNs for CPU demos and tests: ``arm_small`` (the ARM head on a tiny backbone) and
``small_cnn`` (a plain CNN); their registry entries are in :mod:`privatenet.models.zoo`."""

from __future__ import annotations

import torch
from torch import nn

from privatenet.errors import PrivatenetError

__all__ = ["GlobalMean", "SmallCNN", "small_arm_backbone", "small_map_side"]


def conv_bn_relu(cin: int, cout: int, *, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def small_map_side(image_size: int) -> int:
    """Side of the small backbone's map: four stride-2 3x3 convs (padding 1) halve it, rounding
    up, so the output stride is 16 (64 -> 4, 48 -> 3)."""
    side = image_size
    for _ in range(4):
        side = (side + 1) // 2
    return side


def small_arm_backbone() -> nn.Sequential:
    """3 -> 24 -> 48 -> 96 (stride 2 each), a depthwise stride-2 step, then 1x1 -> 512.

    Output stride 16 and 512 channels, as PixelShuffle(16) needs; about 13.6 MFLOPs
    (6.8 M multiply-adds) for a 64x64 image, ARM head included.
    """
    return nn.Sequential(
        conv_bn_relu(3, 24, stride=2),
        conv_bn_relu(24, 48, stride=2),
        conv_bn_relu(48, 96, stride=2),
        conv_bn_relu(96, 96, stride=2, groups=96),
        conv_bn_relu(96, 512, kernel=1),
    )


class GlobalMean(nn.Module):
    """``x.mean(dim=(2, 3))``: (N, C, H, W) -> (N, C), as a layer (so a tap can be hooked)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class SmallCNN(nn.Module):
    """Three stride-2 conv-BN-ReLU blocks (16, 32, 64 channels), global average pool, fc.

    Taps: ``backbone`` (N, 64, h, w), the last conv map, and ``pool`` (N, 64).
    """

    taps = ("backbone", "pool")
    #: The layer whose output each tap is.
    tap_layers = {"backbone": "features", "pool": "pool"}

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16, stride=2),
            conv_bn_relu(16, 32, stride=2),
            conv_bn_relu(32, 64, stride=2),
        )
        self.pool = GlobalMean()  # no parameters: the state dict is unchanged
        self.fc = nn.Linear(64, num_classes)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        backbone = self.features(x)
        pool = self.pool(backbone)
        return self.fc(pool), {"backbone": backbone, "pool": pool}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]

    def forward_from(self, tap: str, features: torch.Tensor) -> torch.Tensor:
        """The logits computed from ``tap``'s features: the layers after the tap only.

        ``forward_from(tap, forward_taps(x)[1][tap])`` equals ``forward(x)`` exactly.
        ``"backbone"``: global mean, ``fc``; ``"pool"``: ``fc``. Another tap is a
        :class:`PrivatenetError` naming the taps that can be cut.
        """
        if tap == "backbone":
            features = self.pool(features)
        elif tap != "pool":
            raise PrivatenetError(f"SmallCNN has no tap {tap!r} to cut at; taps that can be "
                                  f"cut: {', '.join(self.taps)}")
        return self.fc(features)
