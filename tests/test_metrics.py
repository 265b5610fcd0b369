import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from privatenet.metrics import (
    ConfusionMatrix,
    Leakage,
    bootstrap_ci,
    leakage,
    majority_rate,
    normalized_leakage,
    robustness,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=300, p=[0.5, 0.2, 0.15, 0.15, 0.0])  # class 4 absent
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    cm = ConfusionMatrix(5)
    for i in range(0, 300, 64):  # update/compute over several batches
        cm.update(torch.tensor(p[i:i + 64]), torch.tensor(y[i:i + 64]))
    got = cm.compute()
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)


def test_majority_and_normalized_leakage():
    y = torch.tensor([2, 2, 2, 1, 0])
    assert majority_rate(y) == pytest.approx(0.6)
    assert normalized_leakage(0.6, 0.6) == 0.0
    assert normalized_leakage(1.0, 0.6) == pytest.approx(1.0)
    assert normalized_leakage(0.2, 0.6) < 0  # worse than always answering the majority


def test_bootstrap_ci_brackets_accuracy_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.where(rng.random(2000) < 0.7, y, 1 - y)
    acc = float((y == p).mean())
    lo, hi = bootstrap_ci(p, y, seed=3)
    assert lo < acc < hi
    assert 0.02 < hi - lo < 0.06  # about 2 * 1.96 * sqrt(.7 * .3 / 2000) = 0.04
    assert bootstrap_ci(p, y, seed=3) == (lo, hi)
    lo_small, hi_small = bootstrap_ci(p[:200], y[:200], seed=3)
    assert hi_small - lo_small > hi - lo


def test_robustness_is_relative_change_in_percent():
    assert robustness(0.45, 0.9) == pytest.approx(-50.0)
    assert robustness(0.9, 0.9) == 0.0


def test_leakage_keys_and_unknown_targets():
    r = leakage(torch.tensor([0, 0, 0, 1, 2]), torch.tensor([0, 0, 1, 1, -1]), num_classes=3)
    assert r["accuracy"] == 0.75 and r["chance"] == pytest.approx(1 / 3)
    assert r["majority"] == 0.5 and r["normalized_leakage"] == pytest.approx(0.5)
    assert r["n"] == 4 and len(r["ci95"]) == 2  # the -1 row is skipped


@pytest.mark.parametrize("seed", [0, 1])
def test_leakage_object_over_batches_matches_sklearn_and_the_functional_twin(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=400, p=[0.6, 0.3, 0.1])
    scores = rng.normal(size=(400, 3))
    scores[np.arange(400), y] += 1.0
    p = scores.argmax(1)
    metric = Leakage(num_classes=3, seed=5)
    for i in range(0, 400, 128):
        metric.update(torch.tensor(scores[i:i + 128]), torch.tensor(y[i:i + 128]))
    got = metric.compute()
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
    assert got["majority"] == pytest.approx(np.bincount(y).max() / 400)
    assert got == leakage(torch.tensor(p), torch.tensor(y), num_classes=3, seed=5)
    metric.reset()
    metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.compute()["n"] == 1


def test_leakage_refuses_bad_input():
    from privatenet.errors import PrivatenetError

    with pytest.raises(PrivatenetError, match="differ"):
        leakage(torch.tensor([0, 1]), torch.tensor([0]), num_classes=2)
    with pytest.raises(PrivatenetError, match="outside"):
        leakage(torch.tensor([0, 5]), torch.tensor([0, 1]), num_classes=2)
    with pytest.raises(PrivatenetError, match="no known targets"):
        leakage(torch.tensor([0]), torch.tensor([-1]), num_classes=2)
