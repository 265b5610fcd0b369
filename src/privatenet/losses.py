"""Privacy losses: the paper's confusion loss (Eq. 7) and the adversarial loss of Edwards &
Storkey (ICLR 2016), combined with the task loss as in Eq. 8."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PRIVACY_LOSSES = ("confusion", "adversarial")


def confusion_loss(adversary_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``|| softmax(A(F(x))) - U ||^2`` with U uniform over the K private classes,
    averaged over the batch. 0 when the adversary is maximally unsure, 1 - 1/K at a one-hot."""
    p = adversary_logits.float().softmax(dim=1)
    k = p.shape[1]
    return (p - 1.0 / k).pow(2).sum(dim=1).mean()


def adversarial_loss(adversary_logits: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """The encoder's side of the Edwards & Storkey min-max: minus the adversary's cross-entropy
    (the encoder maximises what the adversary minimises)."""
    return -F.cross_entropy(adversary_logits.float(), private)


def privacy_loss(kind: str, adversary_logits: torch.Tensor, private: torch.Tensor
                 ) -> torch.Tensor:
    """The privacy term ``L_priv`` of the given kind."""
    if kind == "confusion":
        return confusion_loss(adversary_logits)
    if kind == "adversarial":
        return adversarial_loss(adversary_logits, private)
    raise ValueError(f"unknown privacy loss {kind!r}; use one of {PRIVACY_LOSSES}")


def total_loss(task: torch.Tensor, priv: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 8: ``(1 - lam) * L_CE + lam * L_priv``."""
    return (1.0 - lam) * task + lam * priv
