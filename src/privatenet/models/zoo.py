"""The registry entries: every model ``create_model`` builds by name."""

from __future__ import annotations

import torchvision
from torch import nn

from privatenet.models.arm import (
    ARMNet,
    check_affinity,
    check_drop_rate,
    check_image_size,
    resnet_map_side,
)
from privatenet.models.registry import check_num_classes, register_model
from privatenet.models.resnet import (
    ResNet18Classifier,
    load_backbone_into_features,
    read_resnet18_weights,
)
from privatenet.models.small import SmallCNN, small_arm_backbone, small_map_side


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


@register_model
def resnet18(num_classes: int, backbone_weights: str | None = None) -> ResNet18Classifier:
    """torchvision ResNet-18 with a new ``fc``; optional backbone weights from a path."""
    check_num_classes(num_classes, "resnet18")
    model = ResNet18Classifier(num_classes)
    if backbone_weights is not None:
        # read_resnet18_weights checked every key but fc.*, which stays newly initialised
        model.load_state_dict(read_resnet18_weights(backbone_weights), strict=False)
    return model


@register_model(tags=("arm",))
def arm_small(num_classes: int, image_size: int = 64, affinity: str = "running",
              drop_rate: float = 0.0) -> ARMNet:
    """The paper's ARM head on a small CNN: 64x64 -> 512x4x4 backbone -> 5x5 ARM map (25)."""
    check_num_classes(num_classes, "arm_small")
    side = check_image_size("arm_small", image_size, small_map_side)
    check_affinity(affinity)
    drop_rate = check_drop_rate("arm_small", drop_rate)
    return ARMNet(small_arm_backbone(), backbone_side=side, num_classes=num_classes,
                  affinity=affinity, drop_rate=drop_rate)


@register_model
def small_cnn(num_classes: int) -> SmallCNN:
    """A tiny plain CNN for tests (any input size >= 1)."""
    check_num_classes(num_classes, "small_cnn")
    return SmallCNN(num_classes)
