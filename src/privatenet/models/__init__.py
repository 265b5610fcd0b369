"""Models: a registry of classifiers with named taps, and the adversaries that read the taps.

``create_model(name, num_classes=..., **options)`` builds ``arm_resnet18`` (the paper's network),
``arm_small`` (the same ARM head on a small fast CNN), ``resnet18``, ``small_cnn`` and any
torchvision classifier as ``"torchvision:<name>"``. :func:`with_taps` gives any ``nn.Module``
named taps. ``create_adversary(kind, tap_shape=..., num_classes=...)`` builds an attacker for one
tap.
"""

from privatenet.models import zoo  # noqa: F401  (registers the models)
from privatenet.models.adversaries import (
    ADVERSARY_KINDS,
    adversary_from_config,
    create_adversary,
    default_adversary,
)
from privatenet.models.arm import AFFINITY_MODES, ARMBlock, ARMNet
from privatenet.models.public import load_public_arm_checkpoint, public_state_dict
from privatenet.models.registry import (
    create_model,
    list_models,
    model_from_config,
    model_options,
    register_model,
)
from privatenet.models.small import SmallCNN
from privatenet.models.taps import require_tap, tap_shapes

__all__ = [
    "ADVERSARY_KINDS",
    "AFFINITY_MODES",
    "ARMBlock",
    "ARMNet",
    "SmallCNN",
    "adversary_from_config",
    "create_adversary",
    "create_model",
    "default_adversary",
    "list_models",
    "load_public_arm_checkpoint",
    "model_from_config",
    "model_options",
    "public_state_dict",
    "register_model",
    "require_tap",
    "tap_shapes",
]
