"""privatenet: classifiers whose features do not reveal private attributes, and honest
measurements of how much they still reveal (Li & Cavallaro, ICASSP 2022).

The method in your own training loop::

    import privatenet as pn

    net = pn.with_taps(torchvision_model, {"backbone": "layer4"})
    logits, taps = net.forward_taps(x)
    adv = pn.create_adversary("linear", tap_shape=tuple(taps["backbone"].shape[1:]),
                              num_classes=2)
    pn.fit_adversary(adv, features, private, epochs=10)          # the known adversary
    reg = pn.PrivacyRegularizer(adv, loss="confusion", lam=0.5)  # Eq. 8 (or "ensemble";
    # pn.PrivacyRegularizer(None, loss="hsic", lam=0.5, num_classes=2) needs no adversary;
    # vib: net = pn.bottleneck_at_tap(net, tap="backbone", channels=16, image_size=224) and
    # pn.PrivacyRegularizer(None, loss="vib", lam=0.5, bottleneck=net.bottleneck))
    loss = reg(task_loss, taps["backbone"], private)              # -1 = unknown label
    print(pn.leakage(pred, private, num_classes=2))
    # attackers on rows no part of the defence saw (attacker=None: cross-fitted on scoring);
    # pn.carve_attacker_split(data, share=0.2, columns=[...]) sets such rows aside up front
    print(pn.audit(scoring=(test_feats, s_test), attacker=(own_feats, s_own),
                   num_classes=2)["worst"])

See docs/design.md for the method and README.md for the command line.
"""

from privatenet.auditing import audit
from privatenet.bottleneck import bottleneck_at_tap
from privatenet.data import load_dataset
from privatenet.data.base import carve_attacker_split
from privatenet.erasure import ErasedModel, TapEraser, erase_at_tap, fit_eraser
from privatenet.errors import PrivatenetError
from privatenet.losses import (
    PRIVACY_LOSSES,
    AdversarialLoss,
    ConfusionLoss,
    adversarial_loss,
    confusion_loss,
    hsic_loss,
)
from privatenet.metrics import Leakage, leakage
from privatenet.models import (
    create_adversary,
    create_model,
    list_models,
    register_model,
    tap_shapes,
)
from privatenet.models.taps import with_taps
from privatenet.regularizer import PrivacyRegularizer, make_private
from privatenet.train.config import TrainConfig
from privatenet.train.loop import extract, fit, fit_adversary
from privatenet.version import __version__  # noqa: F401  (the package's version)

__all__ = [
    "AdversarialLoss",
    "ConfusionLoss",
    "ErasedModel",
    "Leakage",
    "PRIVACY_LOSSES",
    "PrivacyRegularizer",
    "PrivatenetError",
    "TapEraser",
    "TrainConfig",
    "adversarial_loss",
    "audit",
    "bottleneck_at_tap",
    "carve_attacker_split",
    "confusion_loss",
    "create_adversary",
    "create_model",
    "erase_at_tap",
    "extract",
    "fit",
    "fit_adversary",
    "fit_eraser",
    "hsic_loss",
    "leakage",
    "list_models",
    "load_dataset",
    "make_private",
    "register_model",
    "tap_shapes",
    "with_taps",
]
