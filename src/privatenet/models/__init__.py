"""Models: a registry of classifiers with named taps, and the adversaries that read the taps.

``create_model(name, num_classes=..., **options)`` builds ``arm_resnet18`` (the paper's network),
``arm_small`` (the same ARM head on a small fast CNN), ``resnet18`` and ``small_cnn``.
``create_adversary(kind, tap_shape=..., num_classes=...)`` builds an attacker for one tap.
"""

from privatenet.models.registry import (  # noqa: I001  (registry first: models register in it)
    create_model,
    list_models,
    model_from_config,
    model_options,
    register_model,
)
from privatenet.models.arm import (
    AFFINITY_MODES,
    ARMBlock,
    ARMNet,
    load_public_arm_checkpoint,
    public_state_dict,
)
from privatenet.models.small import SmallCNN
from privatenet.models.taps import require_tap, tap_shapes
from privatenet.models.adversaries import (
    ADVERSARY_KINDS,
    adversary_from_config,
    create_adversary,
    default_adversary,
)

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
