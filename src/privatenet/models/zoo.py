"""The registry entries: every model ``create_model`` builds by name, and the
``torchvision:<name>`` family (any torchvision classifier, with named taps)."""

from __future__ import annotations

import torchvision
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models.arm import (
    ARMNet,
    arm_backbone_side,
    check_affinity,
    check_drop_rate,
    resnet_map_side,
)
from privatenet.models.registry import (
    check_num_classes,
    register_family,
    register_model,
)
from privatenet.models.resnet import (
    ResNet18Classifier,
    load_backbone_into_features,
    read_resnet18_weights,
    read_tensor_file,
    unwrap_state_dict,
)
from privatenet.models.small import SmallCNN, small_arm_backbone, small_map_side
from privatenet.models.taps import TappedModel


@register_model(tags=("arm",))
def arm_resnet18(num_classes: int, image_size: int = 224, affinity: str = "running",
                 drop_rate: float = 0.0, backbone_weights: str | None = None) -> ARMNet:
    """The paper's network (docs/design.md §3): ResNet-18 features + PixelShuffle(16) + ARM + fc.

    At 224x224: backbone 512x7x7, ARM map 11x11 (121 features), 11,178,395 parameters with 7
    classes. ``backbone_weights``: optional path to torchvision ResNet-18 weights (for instance
    ImageNet or MS-Celeb) loaded into ``features``; nothing is downloaded.
    """
    check_num_classes(num_classes, "arm_resnet18")
    side = arm_backbone_side("arm_resnet18", image_size, resnet_map_side)
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
    side = arm_backbone_side("arm_small", image_size, small_map_side)
    check_affinity(affinity)
    drop_rate = check_drop_rate("arm_small", drop_rate)
    return ARMNet(small_arm_backbone(), backbone_side=side, num_classes=num_classes,
                  affinity=affinity, drop_rate=drop_rate)


@register_model
def small_cnn(num_classes: int) -> SmallCNN:
    """A tiny plain CNN for tests (any input size >= 1)."""
    check_num_classes(num_classes, "small_cnn")
    return SmallCNN(num_classes)


# --------------------------------------------------------------------------- torchvision family


def default_torchvision_taps(model: nn.Module) -> dict[str, str]:
    """Taps for a torchvision classifier: ``backbone`` (the last feature map: ``layer4`` of
    ResNets, ``features`` of MobileNets, EfficientNets, ConvNeXts, VGGs, DenseNets) and ``pool``
    (its global average, ``avgpool``, where the model has that layer)."""
    children = dict(model.named_children())
    backbone = "layer4" if "layer4" in children else "features" if "features" in children \
        else None
    if backbone is None:
        raise PrivatenetError(f"{type(model).__name__} has no default taps; pass taps={{name: "
                              f"layer}} with a layer from: {', '.join(children)}")
    taps = {"backbone": backbone}
    if "avgpool" in children:
        taps["pool"] = "avgpool"
    return taps


def _torchvision_factory(arch: str):
    def factory(num_classes: int, taps: dict | None = None, weights: str | None = None
                ) -> TappedModel:
        check_num_classes(num_classes, f"torchvision:{arch}")
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if weights is not None:
            _load_matching(net, weights, arch)
        return TappedModel(net, dict(taps) if taps is not None else
                           default_torchvision_taps(net))

    factory.__doc__ = f"torchvision's {arch} with named taps (weights from a path, if given)."
    return factory


def _load_matching(net: nn.Module, path: str, arch: str) -> None:
    """Load a torchvision state dict from ``path``; entries whose shape differs (the classifier
    of another class count) keep their fresh initialisation, unknown keys are refused."""
    from pathlib import Path

    p = Path(path)
    state = unwrap_state_dict(read_tensor_file(p, f"{arch} weights"), p, f"{arch} state dict")
    own = net.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise PrivatenetError(f"{p}: not a torchvision {arch} state dict (unexpected key "
                              f"{unknown[0]!r}); give weights of that architecture")
    fitting = {k: v for k, v in state.items() if tuple(v.shape) == tuple(own[k].shape)}
    net.load_state_dict(fitting, strict=False)


register_family(
    "torchvision", _torchvision_factory,
    lambda: sorted(torchvision.models.list_models(module=torchvision.models)))
