"""Tiny generated data shared by the tests (a plain module: tests import it by name,
never through conftest, so that plain `pytest` collects them)."""

import torch

from privatenet.data.base import Split


def make_split(n: int = 48, size: int = 32, seed: int = 0) -> Split:
    """Random images whose 'emotion' label is visible in the mean brightness, plus a 'gender'
    label correlated with colour, so tiny training runs learn something."""
    g = torch.Generator().manual_seed(seed)
    emotion = torch.randint(0, 3, (n,), generator=g)
    gender = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 80, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images += (emotion * 60).to(torch.uint8).view(n, 1, 1, 1)
    images[:, 0] += (gender * 40).to(torch.uint8).view(n, 1, 1)
    return Split(images, {"emotion": emotion, "gender": gender},
                 [f"img{i}" for i in range(n)])


def write_manifest(folder, *, n_train: int = 40, n_test: int = 24, size: int = 32,
                   grayscale: bool = True, seed: int = 0, splits=("train", "test")):
    """A manifest CSV of tiny PNGs with string labels: emotion (3 names) visible in the
    brightness, gender and age (2 names each) in a corner patch and in the contrast."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    emotions, genders, ages = ["angry", "happy", "sad"], ["f", "m"], ["old", "young"]
    rows = ["path,split,emotion,gender,age"]
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_test):
        e, g, a = i % 3, rng.integers(0, 2), rng.integers(0, 2)
        img = rng.integers(0, 60, (size, size)) + 70 * e
        img[: size // 4, : size // 4] += 60 * g
        img[size // 2:, :] = img[size // 2:, :] * (0.6 + 0.4 * a)
        img = np.clip(img, 0, 255).astype(np.uint8)
        pil = Image.fromarray(img, "L") if grayscale else Image.fromarray(
            np.stack([img] * 3, -1), "RGB")
        name = f"img/{i:03d}.png"
        pil.save(folder / name)
        split = splits[0] if i < n_train else splits[-1]
        rows.append(f"{name},{split},{emotions[e]},{genders[g]},{ages[a]}")
    csv = folder / "faces.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def check_report(report, labels, num_classes):
    """A leakage report's figures follow from the labels it scored: n, the majority rate, 1/K,
    a whole number of correct rows, the normalised leakage's formula and an interval around
    the accuracy (each of them can fail; a range check alone cannot)."""
    import numpy as np
    import pytest

    y = np.asarray(labels)
    y = y[y >= 0]  # rows of unknown label are not scored
    assert report["n"] == len(y)
    assert report["chance"] == pytest.approx(1 / num_classes)
    assert report["majority"] == pytest.approx(np.bincount(y).max() / len(y))
    correct = report["accuracy"] * report["n"]
    assert correct == pytest.approx(round(correct), abs=1e-6)
    assert report["normalized_leakage"] == pytest.approx(
        (report["accuracy"] - report["majority"]) / (1 - report["majority"]))
    assert report["ci95"][0] <= report["accuracy"] <= report["ci95"][1]
