"""Utility and leakage metrics (docs/design.md §5).

The paper's leakage T_s is the adversary's accuracy. Because RAF-DB is imbalanced, every report
also carries balanced accuracy, the majority-class rate and 1/K of the same test split, the
normalised leakage ``(acc - majority) / (1 - majority)`` (0 = no better than always answering the
majority class, 1 = perfect), and a 95 % bootstrap interval of the accuracy.

Every function takes predictions first and targets second (as torchmetrics does). Predictions
are class indices (N,) or scores (N, K), of which the argmax is taken. :class:`Leakage` is the
metric object (``update`` / ``compute`` / ``reset``) and :func:`leakage` its functional twin.
"""

from __future__ import annotations

import numpy as np
import torch

from privatenet.data.base import MISSING
from privatenet.errors import PrivatenetError, SettingError
from privatenet.models.registry import check_num_classes

__all__ = ["ConfusionMatrix", "Leakage", "bootstrap_ci", "classification_scores", "leakage",
           "majority_rate", "normalized_leakage", "robustness"]


def _labels(pred, target, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` as flat int64 CPU tensors of one length, scores argmax-ed, rows with
    an unknown target (-1) dropped; out-of-range values raise."""
    pred, target = torch.as_tensor(pred).detach().cpu(), torch.as_tensor(target).detach().cpu()
    if pred.dim() == 2 and target.dim() == 1:
        if pred.shape[1] != num_classes:
            raise PrivatenetError(f"scores have {pred.shape[1]} columns for num_classes="
                                  f"{num_classes}; pass (N, num_classes) scores or indices")
        pred = pred.argmax(1)
    pred, target = pred.long().flatten(), target.long().flatten()
    if pred.shape != target.shape:
        raise PrivatenetError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                              "in length; pass one prediction per target")
    keep = target != MISSING  # an unknown label is skipped
    pred, target = pred[keep], target[keep]
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise PrivatenetError(f"{name} holds class {int(t.max())} or {int(t.min())}, outside "
                                  f"0..{num_classes - 1} (num_classes={num_classes}); -1 marks "
                                  "an unknown target")
    return pred, target


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix (rows: true class) with ``update``/``compute``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes, "ConfusionMatrix")
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred, target) -> None:
        """Add a batch of predictions and targets (unknown targets, -1, are skipped)."""
        pred, target = _labels(pred, target, self.num_classes)
        k = self.num_classes
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, float]:
        """Accuracy and balanced accuracy (mean recall over the classes present)."""
        m = self.matrix.double()
        support = m.sum(1)
        present = support > 0
        acc = float(m.diag().sum() / m.sum()) if m.sum() > 0 else float("nan")
        bal = float((m.diag()[present] / support[present]).mean()) if present.any() else acc
        return {"accuracy": acc, "balanced_accuracy": bal}


def classification_scores(pred, target, *, num_classes: int) -> dict[str, float]:
    """Accuracy and balanced accuracy of predictions."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    return cm.compute()


def majority_rate(target) -> float:
    """Share of the most frequent class: the accuracy of always answering it."""
    t = torch.as_tensor(target).long().flatten()
    return float(torch.bincount(t).max() / t.numel())


def normalized_leakage(accuracy: float, majority: float) -> float:
    """``(acc - majority) / (1 - majority)``: 0 at the majority rate, 1 at perfect accuracy."""
    if majority >= 1.0:
        return 0.0
    return (accuracy - majority) / (1.0 - majority)


def bootstrap_ci(pred, target, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy, resampling test items with replacement."""
    correct = (torch.as_tensor(pred).flatten() == torch.as_tensor(target).flatten()).numpy()
    return _bootstrap(correct, n_boot=n_boot, seed=seed, level=level)


def _bootstrap(correct: np.ndarray, *, n_boot: int, seed: int, level: float
               ) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.size, size=(n_boot, correct.size))
    means = correct[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def robustness(acc_new: float, acc_orig: float) -> float:
    """The paper's robustness: relative change of attacker accuracy, in percent."""
    return (acc_new - acc_orig) / acc_orig * 100.0


class Leakage:
    """Every leakage figure of docs/design.md §5 for one attacker's predictions of a private
    attribute, accumulated over batches (torchmetrics style).

    ``update(pred, target)``: pred (N,) class indices or (N, K) scores, target (N,) with -1 for
    an unknown label (skipped). ``compute()`` returns ``accuracy``, ``balanced_accuracy``,
    ``majority`` (the majority-class rate of the targets seen), ``chance`` (1/K),
    ``normalized_leakage``, ``ci95`` (percentile bootstrap of the accuracy, ``n_boot``
    resamples seeded by ``seed``) and ``n``. ``reset()`` forgets every update.
    """

    def __init__(self, *, num_classes: int, n_boot: int = 1000, seed: int = 0) -> None:
        self.num_classes = check_num_classes(num_classes, "Leakage")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
            raise SettingError("n_boot", n_boot, "is invalid; give an integer >= 1")
        self.n_boot, self.seed = n_boot, seed
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._cm = ConfusionMatrix(self.num_classes)
        self._correct: list[torch.Tensor] = []

    def update(self, pred, target) -> None:
        """Add a batch of predictions and targets."""
        pred, target = _labels(pred, target, self.num_classes)
        self._cm.update(pred, target)
        self._correct.append(pred == target)

    def compute(self) -> dict[str, float | list | int]:
        """The leakage report of everything seen since the last reset."""
        n = int(self._cm.matrix.sum())
        if n == 0:
            raise PrivatenetError("no known targets to score; update() with at least one "
                                  "target that is not -1")
        scores = self._cm.compute()
        majority = float(self._cm.matrix.sum(1).max()) / n
        correct = torch.cat(self._correct).numpy()
        return {
            "accuracy": scores["accuracy"],
            "balanced_accuracy": scores["balanced_accuracy"],
            "majority": majority,
            "chance": 1.0 / self.num_classes,
            "normalized_leakage": normalized_leakage(scores["accuracy"], majority),
            "ci95": list(_bootstrap(correct, n_boot=self.n_boot, seed=self.seed, level=0.95)),
            "n": n,
        }


def leakage(pred, target, *, num_classes: int, n_boot: int = 1000, seed: int = 0
            ) -> dict[str, float | list | int]:
    """:class:`Leakage` of one set of predictions (see there for the keys)."""
    metric = Leakage(num_classes=num_classes, n_boot=n_boot, seed=seed)
    metric.update(pred, target)
    return metric.compute()
