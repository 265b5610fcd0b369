"""Privacy losses (docs/design.md §2): the paper's confusion loss (Eq. 7) and the adversarial
loss of Edwards & Storkey (ICLR 2016), as functions and as ``nn.Module``s, and Eq. 8, which
weighs one of them against the task loss.

Each takes the adversary's logits (N, K) and, where it needs them, the private labels (N,).
Rows whose private label is unknown (``-1``) are the caller's to drop: see
:class:`privatenet.regularizer.PrivacyRegularizer`, which does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from privatenet.errors import PrivatenetError

__all__ = ["PRIVACY_LOSSES", "AdversarialLoss", "ConfusionLoss", "adversarial_loss",
           "check_lam", "check_loss", "confusion_loss", "privacy_loss", "total_loss"]

#: The privacy terms ``L_priv`` that Eq. 8 can weigh against the task loss.
PRIVACY_LOSSES = ("confusion", "adversarial")


def check_loss(name: str) -> str:
    """``name`` if it is a known privacy loss, else a one-line :class:`PrivatenetError`."""
    if name not in PRIVACY_LOSSES:
        raise PrivatenetError(f"unknown privacy loss {name!r}; use one of "
                              f"{', '.join(PRIVACY_LOSSES)}")
    return name


def check_lam(lam: float) -> float:
    """``lam`` as a float in [0, 1], else a one-line :class:`PrivatenetError`."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise PrivatenetError(f"lam={lam!r} is outside [0, 1]; 0 is the original network, 1 "
                              "ignores the task")
    return float(lam)


def confusion_loss(adversary_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``|| softmax(A(F(x))) - U ||^2`` with U uniform over the K private classes,
    averaged over the batch. 0 when the adversary is maximally unsure, 1 - 1/K at a one-hot.

    ``adversary_logits``: (N, K). Returns a scalar.
    """
    p = adversary_logits.float().softmax(dim=1)
    k = p.shape[1]
    return (p - 1.0 / k).pow(2).sum(dim=1).mean()


def adversarial_loss(adversary_logits: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """The encoder's side of the Edwards & Storkey min-max: minus the adversary's cross-entropy
    (the encoder maximises what the adversary minimises).

    ``adversary_logits``: (N, K); ``private``: (N,) class indices. Returns a scalar.
    """
    return -F.cross_entropy(adversary_logits.float(), private)


def privacy_loss(kind: str, adversary_logits: torch.Tensor, private: torch.Tensor
                 ) -> torch.Tensor:
    """The privacy term ``L_priv`` of the given kind (see :data:`PRIVACY_LOSSES`)."""
    if check_loss(kind) == "confusion":
        return confusion_loss(adversary_logits)
    return adversarial_loss(adversary_logits, private)


def total_loss(task: torch.Tensor, priv: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 8: ``(1 - lam) * L_CE + lam * L_priv``."""
    return (1.0 - lam) * task + lam * priv


class ConfusionLoss(nn.Module):
    """Eq. 7 as a module: ``loss(adversary_logits)`` (N, K) -> scalar; see
    :func:`confusion_loss`. Takes ``private`` too (ignored), so both losses share one call."""

    def forward(self, adversary_logits: torch.Tensor,
                private: torch.Tensor | None = None) -> torch.Tensor:
        return confusion_loss(adversary_logits)


class AdversarialLoss(nn.Module):
    """The Edwards & Storkey encoder loss as a module: ``loss(adversary_logits, private)``
    -> scalar; see :func:`adversarial_loss`."""

    def forward(self, adversary_logits: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        return adversarial_loss(adversary_logits, private)


#: The module of each privacy loss.
LOSS_MODULES: dict[str, type[nn.Module]] = {"confusion": ConfusionLoss,
                                            "adversarial": AdversarialLoss}
