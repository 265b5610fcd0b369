"""Utility and leakage metrics (DESIGN section 5).

The paper's leakage T_s is the adversary's accuracy. Because RAF-DB is imbalanced, every report
also carries balanced accuracy, the majority-class rate and 1/K of the same test split, the
normalised leakage ``(acc - majority) / (1 - majority)`` (0 = no better than always answering the
majority class, 1 = perfect), and a 95 % bootstrap interval of the accuracy.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix (rows: true class) with ``update``/``compute``."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch of integer targets and predictions."""
        target, pred = target.detach().cpu().long().flatten(), pred.detach().cpu().long().flatten()
        if target.shape != pred.shape:
            raise ValueError(f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ")
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


def classification_scores(target, pred, *, num_classes: int) -> dict[str, float]:
    """Accuracy and balanced accuracy of integer predictions."""
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.as_tensor(target), torch.as_tensor(pred))
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


def bootstrap_ci(target, pred, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy, resampling test items with replacement."""
    correct = (torch.as_tensor(target).flatten() == torch.as_tensor(pred).flatten()).numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.size, size=(n_boot, correct.size))
    means = correct[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def robustness(acc_new: float, acc_orig: float) -> float:
    """The paper's robustness: relative change of attacker accuracy, in percent."""
    return (acc_new - acc_orig) / acc_orig * 100.0


def leakage_report(target, pred, *, num_classes: int, seed: int = 0) -> dict[str, float | list]:
    """Every leakage figure of DESIGN section 5 for one attacker on one test split."""
    scores = classification_scores(target, pred, num_classes=num_classes)
    maj = majority_rate(target)
    return {
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "majority": maj,
        "chance": 1.0 / num_classes,
        "normalized_leakage": normalized_leakage(scores["accuracy"], maj),
        "ci95": list(bootstrap_ci(target, pred, seed=seed)),
        "n": int(torch.as_tensor(target).numel()),
    }
