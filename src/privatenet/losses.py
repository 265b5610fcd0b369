"""Privacy losses (docs/design.md §2): the paper's confusion loss (Eq. 7), a bounded form of
the adversarial loss of Edwards & Storkey (ICLR 2016), a normalised HSIC dependence penalty,
as functions and as ``nn.Module``s, and Eq. 8, which weighs one of them against the task loss.

The adversary losses take the adversary's logits (N, K) and, where they need them, the private
labels (N,); :func:`hsic_loss` takes the tap's features and the private labels directly. Rows
whose private label is unknown (``-1``) are the caller's to drop: see
:class:`privatenet.regularizer.PrivacyRegularizer`, which does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from privatenet.errors import PrivatenetError, SettingError

__all__ = ["HSIC_BANDWIDTHS", "LOSS_HELP", "PAPER_LOSSES", "PRIVACY_LOSSES", "AdversarialLoss",
           "ConfusionLoss", "DEFAULT_LAM", "adversarial_loss", "check_bandwidths", "check_lam",
           "check_loss",
           "confusion_loss", "hsic_loss", "privacy_loss", "total_loss"]

#: The privacy terms ``L_priv`` that Eq. 8 can weigh against the task loss (the modes of
#: :class:`privatenet.regularizer.PrivacyRegularizer`).
PRIVACY_LOSSES = ("confusion", "adversarial", "ensemble", "hsic", "vib")

#: The two losses the paper compares (its Table 2).
PAPER_LOSSES = ("confusion", "adversarial")

#: One line per privacy loss, e.g. for command-line help.
LOSS_HELP = {
    "confusion": "Eq. 7 (the paper): push a known adversary's output towards uniform",
    "adversarial": "Edwards & Storkey min-max, bounded: -log(1 - p_true) of the adversary",
    "ensemble": "confusion loss against several adversaries trained alongside and "
                "re-initialised in turn (MaxEnt-ARL; Elazar & Goldberg 2018)",
    "hsic": "no adversary: normalised HSIC between the tap's features and the private label",
    "vib": "no adversary, no private label: a noisy narrow code at the tap (variational "
           "information bottleneck, noise kept at deployment) with a KL penalty",
}

#: Bandwidths of the multi-bandwidth RBF kernel of :func:`hsic_loss`, in units of the median
#: pairwise distance of the batch.
HSIC_BANDWIDTHS = (0.5, 1.0, 2.0)


def check_loss(name: str) -> str:
    """``name`` if it is a known privacy loss, else a one-line :class:`PrivatenetError`."""
    if name not in PRIVACY_LOSSES:
        raise PrivatenetError(f"unknown privacy loss {name!r}; use one of "
                              f"{', '.join(PRIVACY_LOSSES)}")
    return name


#: The privacy weight lambda of Eq. 8 unless one is given (the paper's Table 2 networks).
DEFAULT_LAM = 0.5


def check_lam(lam: float) -> float:
    """``lam`` as a float in [0, 1], else a one-line :class:`PrivatenetError`."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise SettingError("lam", lam, "is outside [0, 1]; 0 is the original network, 1 "
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
    """The encoder's side of the Edwards & Storkey min-max in bounded form:
    ``-log(1 - p_true)``, the cross-entropy of the adversary towards "any class but the true
    one", averaged over the batch.

    Why not minus the adversary's cross-entropy (the textbook form): that is unbounded below,
    so the encoder can lower it without limit by making the adversary confidently wrong
    (measured -2.8 to -34.6 within four epochs against a fixed adversary) and ``lam`` then
    weighs a term of no fixed scale. This form is >= 0, exactly 0 when the adversary gives the
    true class probability 0, ``log(K / (K - 1))`` at a uniform output, and of order 1 for the
    adversaries one meets in training (p_true of 0.6-0.9 gives 0.9-2.3), the same scale as the
    confusion loss's [0, 1 - 1/K]. Computed stably as ``softplus(z_true - logsumexp(z_other))``
    (identical to ``-log(1 - p_true)``), finite for any finite logits.

    Caveat: its minimum still makes the adversary *wrong*, not unsure. For a binary attribute
    p_true -> 0 means the adversary confidently names the other class, and an attacker who
    flips the adversary's answer reads the attribute back perfectly. That is why the confusion
    loss and the ``ensemble`` mode aim at the uniform output instead.

    ``adversary_logits``: (N, K) with K >= 2; ``private``: (N,) class indices. Returns a
    scalar.
    """
    z = adversary_logits.float()
    if z.shape[1] < 2:
        raise PrivatenetError(f"adversarial loss needs K >= 2 private classes, got logits of "
                              f"shape {tuple(z.shape)}")
    true = F.one_hot(private, z.shape[1]).bool()
    z_true = z.gather(1, private.view(-1, 1)).squeeze(1)
    z_other = torch.logsumexp(z.masked_fill(true, float("-inf")), dim=1)
    return F.softplus(z_true - z_other).mean()


def _centered(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T / n``, without forming H."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def hsic_loss(features: torch.Tensor, private: torch.Tensor, *, num_classes: int,
              bandwidths: Sequence[float] = HSIC_BANDWIDTHS,
              normalized: bool = True) -> torch.Tensor:
    """Dependence between the features and the private label: the (normalised) Hilbert-Schmidt
    independence criterion (Gretton et al. 2005), a privacy term with no adversary.

    Kernels: on the features (flattened to N x D) the mean of RBF kernels
    ``exp(-d^2 / (2 (b * m)^2))`` over the ``bandwidths`` b, where m is the median pairwise
    distance of the batch (computed on detached features, so it is a constant of the step and
    the several bandwidths cover scales the median alone would miss); on the labels the linear
    kernel of their one-hot codes (``num_classes`` wide, since a batch may lack some classes).
    The biased estimator ``HSIC = tr(K H L H) / (n - 1)^2``.

    ``normalized=True`` (default, what the regularizer uses) returns
    ``HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))``, which lies in [0, 1] (Cauchy-Schwarz for the
    centred kernel matrices), so ``lam`` in Eq. 8 weighs a term of known scale like the
    confusion loss's, independent of the batch size, the number of classes and their balance;
    the encoder also cannot lower it by merely shrinking or rescaling its features. It is 0
    when the batch's features and labels are uncorrelated in the kernels' feature spaces, or
    when the batch holds one class only.

    Computed in float32 even under autocast. Fewer than 2 rows give 0. ``features``: (N, ...);
    ``private``: (N,) class indices in [0, num_classes) (drop unknown rows first). Returns a
    scalar.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SettingError("num_classes", num_classes, "is invalid; give the number of "
                                                       "private classes, an integer >= 2")
    bandwidths = check_bandwidths(bandwidths)
    if features.shape[0] != private.shape[0]:
        raise PrivatenetError(f"{features.shape[0]} feature rows for {private.shape[0]} "
                              "private labels; pass one label per row")
    n = features.shape[0]
    if n < 2:
        return features.new_zeros((), dtype=torch.float32)
    if bool(((private < 0) | (private >= num_classes)).any()):
        raise PrivatenetError(f"private labels must lie in [0, {num_classes}) for "
                              f"num_classes={num_classes}; drop unknown (-1) rows and pass "
                              "the attribute's number of classes")
    # float32 whatever the autocast: the centred kernels are differences of numbers near 1
    # and lose everything in bf16.
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.float().reshape(n, -1)
        sq = x.pow(2).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
        off = d2.detach()[~torch.eye(n, dtype=torch.bool, device=x.device)]
        med2 = off.median().clamp_min(1e-12)  # all rows equal: any bandwidth gives HSIC 0
        k = torch.stack([torch.exp(-d2 / (2.0 * b * b * med2)) for b in bandwidths]).mean(0)
        y = F.one_hot(private, num_classes).float()
        kc, lc = _centered(k), _centered(y @ y.T)
        hxy = (kc * lc).sum()
        if not normalized:
            return hxy / (n - 1) ** 2
        hxx, hyy = (kc * kc).sum(), (lc * lc).sum()
        # The floor keeps the gradient finite where a batch has constant features or one class
        # (HSIC(X, Y) is then 0 as well, so the value is 0).
        return hxy / (hxx * hyy).clamp_min(1e-24).sqrt()


def check_bandwidths(bandwidths: Sequence[float]) -> tuple[float, ...]:
    """``bandwidths`` as a tuple of positive floats, else a one-line :class:`PrivatenetError`."""
    ok = (isinstance(bandwidths, (tuple, list)) and len(bandwidths) > 0 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
        for b in bandwidths))
    if not ok:
        raise SettingError("bandwidths", bandwidths, "is invalid; give a non-empty list of "
                              "positive numbers (multiples of the median distance)")
    return tuple(float(b) for b in bandwidths)


def privacy_loss(kind: str, adversary_logits: torch.Tensor, private: torch.Tensor
                 ) -> torch.Tensor:
    """The privacy term ``L_priv`` of an adversary's logits: ``"confusion"`` or
    ``"adversarial"``. (``"ensemble"`` and ``"hsic"`` are not a function of one adversary's
    logits; use :class:`privatenet.regularizer.PrivacyRegularizer` or :func:`hsic_loss`.)"""
    if check_loss(kind) == "confusion":
        return confusion_loss(adversary_logits)
    if kind == "adversarial":
        return adversarial_loss(adversary_logits, private)
    raise PrivatenetError(f"privacy loss {kind!r} is not a function of one adversary's logits; "
                          "use PrivacyRegularizer(loss=...)" + (" or hsic_loss" if kind == "hsic"
                                                               else ""))


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
    """The bounded Edwards & Storkey encoder loss as a module: ``loss(adversary_logits,
    private)`` -> scalar; see :func:`adversarial_loss`."""

    def forward(self, adversary_logits: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        return adversarial_loss(adversary_logits, private)


#: The module of each privacy loss on one adversary's logits.
LOSS_MODULES: dict[str, type[nn.Module]] = {"confusion": ConfusionLoss,
                                            "adversarial": AdversarialLoss}
