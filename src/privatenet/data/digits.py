"""``digits``: scikit-learn's real handwritten digits, a built-in data set of real images.

The 1,797 grayscale 8x8 digits of :func:`sklearn.datasets.load_digits` (the UCI "optical
recognition of handwritten digits" test set, 43 writers) ship inside the scikit-learn wheel, so
this data set needs no download and no path. It gives the privacy benchmark real pictures next
to the drawn ``synthfaces``: the task is the digit, and the private attributes are aspects of the
writer's hand that a digit classifier does not need.

Pixels. scikit-learn's values 0..16 become ``(v * 255 + 8) // 16`` (0..255, integer arithmetic,
so 16 is 255 and 8 is 128), then each 8x8 image is upsampled to ``size`` x ``size`` with PIL's
bilinear filter, the filter :mod:`privatenet.data.cache` resizes every decoded image with: the
result is exactly what a manifest of the 8x8 images decoded at ``image_size=size`` gives. Bilinear
rather than nearest because nearest turns every pixel into a flat square with hard edges at
block boundaries that no pen made, which convolutions at the upsampled scale would learn as
strokes; bilinear gives smooth strokes, keeps the total ink of an upsampled image in line with
its 8x8 ink (correlation above 0.999, tested), and at ``size=8`` returns the 8x8 pixels
unchanged. The grey image is
repeated on the three channels, uint8 (N, 3, size, size), like every other loader.

Split. Stratified by digit and seeded: for each digit 0..9 in turn, its images (in
scikit-learn's order) are permuted by one ``numpy`` generator seeded with ``seed``, and the first
``round(n_d * test_fraction)`` (at least 1, at most ``n_d - 1``) go to the test split. The split
is computed here rather than by ``sklearn.model_selection.train_test_split`` so that it does not
change with the scikit-learn version and accepts any seed >= 0. Rows of each split are in
scikit-learn's order; ids are ``digits_0042`` with scikit-learn's row index, so every image can
be traced back to ``load_digits()``.

Label columns (no unknown labels):

* ``digit`` (the task): classes ``"0"``..``"9"``, scikit-learn's ``target``.
* ``ink`` (private): ``"light"`` (0) or ``"heavy"`` (1). The ink of an image is the sum of its 64
  pixel values in scikit-learn's 0..16 scale (an integer). An image is ``heavy`` if its ink is
  strictly greater than the median ink of the train-split images of the same digit, else
  ``light`` (ties at the median are ``light``). The median is taken over the train split only
  and applied to both splits, so test labels use no test pixels beyond their own.
* ``width`` (private): ``"narrow"`` (0) or ``"wide"`` (1). With ``c_x`` the sum of the pixel
  values (0..16) of column ``x = 0..7`` and ``S = sum_x c_x`` (the ink), the width of an image
  is the ink-weighted standard deviation of the column index, ``sqrt(sum_x c_x (x - m)^2 / S)``
  with ``m = sum_x c_x x / S``: how far the ink spreads horizontally around its centre, in 8x8
  pixels, whatever the digit's position. ``wide`` if the width is strictly greater than the
  median width of the train-split images of the same digit, else ``narrow``. The width is
  computed as the exact integer ratio ``(S * sum_x c_x x^2 - (sum_x c_x x)^2) / S^2`` (its
  square) divided once in float64, so it is the same on every machine; a horizontal flip, one
  of the training augmentations, leaves it unchanged.

Both private attributes are deterministic functions of an image's own pixels and the train
split's per-digit medians, and split every digit of the train split into halves (up to ties at
the median): they carry no information about the digit (the mutual information of digit and
attribute on the train split is near 0, tested), and a digit classifier does not need them. Ink
and width are correlated only mildly within a digit (Pearson r from -0.13 to 0.37 on the whole
set), so they are two different private attributes.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from PIL import Image

from privatenet.data.base import Dataset, Split
from privatenet.data.spec import (
    DIGITS_DEFAULTS,
    DataSpec,
    builtin_options,
    check_digits_options,
    check_fits_in_memory,
    parse_spec,
)
from privatenet.errors import PrivatenetError

__all__ = [
    "DIGITS",
    "INK",
    "WIDTH",
    "digit_features",
    "digits_from_spec",
    "make_digits",
]

logger = logging.getLogger(__name__)

#: Class names of the label columns, index = label value.
DIGITS = tuple(str(d) for d in range(10))
INK = ("light", "heavy")
WIDTH = ("narrow", "wide")

#: Native side of scikit-learn's digits.
NATIVE_SIZE = 8

# Mixed into the seed so that the split's stream differs from any other use of the same seed.
_SPLIT_TAG = 0xD161


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as int64 pixels (1797, 8, 8) in 0..16 and int64 targets (1797,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is a dependency; a broken install lands here
        raise PrivatenetError(
            f"the digits data set needs scikit-learn, which cannot be imported ({exc}); "
            "install it with pip install scikit-learn"
        ) from None
    bunch = load_digits()
    raw = np.asarray(bunch.images)
    pixels = np.rint(raw).astype(np.int64)
    target = np.asarray(bunch.target).astype(np.int64)
    if (
        pixels.ndim != 3
        or pixels.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE)
        or pixels.shape[0] != target.shape[0]
        or not np.array_equal(pixels, raw)
        or pixels.min() < 0
        or pixels.max() > 16
        or set(np.unique(target).tolist()) != set(range(10))
    ):
        raise PrivatenetError(
            f"sklearn.datasets.load_digits() returned unexpected data (images "
            f"{raw.shape}); reinstall scikit-learn"
        )
    return pixels, target


def digit_features(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ink (int64) and width (float64) of 8x8 images ``pixels`` (N, 8, 8) with values 0..16.

    Ink: the sum of the 64 values. Width: ``sqrt(sum_x c_x (x - m)^2 / S)``, the ink-weighted
    standard deviation of the column index (module docstring), computed from exact integers.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    cols = pixels.sum(axis=1)  # (N, 8): ink per column x
    x = np.arange(pixels.shape[2], dtype=np.int64)
    ink = cols.sum(axis=1)
    if (ink <= 0).any():
        raise PrivatenetError("a digits image has no ink; reinstall scikit-learn")
    first = cols @ x
    second = cols @ (x * x)
    # S^2 * variance, an exact integer (at most 1024 * 50176 for 8x8 images of 0..16).
    num = ink * second - first * first
    return ink, np.sqrt(num / (ink * ink))


def _stratified_split(target: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask (N,) of the test rows: ``round(n_d * test_fraction)`` per digit, clamped
    to 1..n_d - 1, chosen by one generator seeded with ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_TAG]))
    is_test = np.zeros(len(target), dtype=bool)
    for d in range(10):
        rows = np.flatnonzero(target == d)
        n_test = min(max(int(round(len(rows) * test_fraction)), 1), len(rows) - 1)
        is_test[rng.permutation(rows)[:n_test]] = True
    return is_test


def _above_class_median(values: np.ndarray, target: np.ndarray, train: np.ndarray) -> np.ndarray:
    """1 where ``values`` is strictly above the median of the train rows of the same digit."""
    out = np.zeros(len(values), dtype=np.int64)
    for d in range(10):
        rows = target == d
        median = np.median(values[rows & train])
        out[rows] = values[rows] > median
    return out


def _upsample(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, size, size) images from 0..16 pixels (N, 8, 8): scaled to 0..255, resized
    with PIL's bilinear filter, grey repeated on three channels."""
    grey = ((pixels * 255 + 8) // 16).astype(np.uint8)
    if size != NATIVE_SIZE:
        out = np.empty((len(grey), size, size), dtype=np.uint8)
        for i, img in enumerate(grey):
            resized = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(resized)
        grey = out
    return np.ascontiguousarray(np.broadcast_to(grey[:, None], (len(grey), 3, size, size)))


def make_digits(
    *, size: int = DIGITS_DEFAULTS["size"], seed: int = DIGITS_DEFAULTS["seed"],
    test_fraction: float = DIGITS_DEFAULTS["test_fraction"]
) -> Dataset:
    """scikit-learn's 1,797 handwritten digits with a task and two private attributes.

    Args:
        size: image side in pixels (8..1024); the 8x8 digits are upsampled bilinearly and the
            images are uint8 (N, 3, size, size).
        seed: non-negative integer choosing the stratified train/test split; the same seed
            gives identical splits and labels. Pixels do not depend on it.
        test_fraction: share of each digit's images in the test split, in (0, 1).

    Returns:
        A :class:`Dataset` named ``"digits:size=...,seed=...,test_fraction=..."`` (``str`` of its
        ``spec``) with splits ``train`` and ``test`` (ids ``digits_0042``, scikit-learn's row
        index) and label columns ``digit`` ("0".."9", the task), ``ink`` (light, heavy) and
        ``width`` (narrow, wide), the private attributes defined in this module's docstring.

    Raises:
        PrivatenetError: for an invalid argument, naming it and the valid range, or if the
            images would need more than 80 % of the machine's memory.
    """
    options = check_digits_options(size=size, seed=seed, test_fraction=test_fraction)
    size, seed, test_fraction = options["size"], options["seed"], options["test_fraction"]
    spec = parse_spec("digits:" + ",".join(f"{k}={v!r}" for k, v in options.items()))

    start = time.perf_counter()
    pixels, target = _load_sklearn_digits()
    check_fits_in_memory(len(pixels), size, what=str(spec), param="size")
    is_test = _stratified_split(target, seed, test_fraction)
    ink, width = digit_features(pixels)
    train = ~is_test
    labels = {
        "digit": target,
        "ink": _above_class_median(ink.astype(np.float64), target, train),
        "width": _above_class_median(width, target, train),
    }

    splits: dict[str, Split] = {}
    for name, mask in (("train", train), ("test", is_test)):
        rows = np.flatnonzero(mask)
        splits[name] = Split(
            images=torch.from_numpy(_upsample(pixels[rows], size)),
            labels={k: torch.from_numpy(v[rows].astype(np.int64)) for k, v in labels.items()},
            ids=[f"digits_{i:04d}" for i in rows.tolist()],
        )
    logger.info(
        "digits: %d train + %d test images at %dx%d in %.2f s",
        len(splits["train"]), len(splits["test"]), size, size, time.perf_counter() - start,
    )  # fmt: skip
    return Dataset(
        name=str(spec),
        splits=splits,
        classes={"digit": list(DIGITS), "ink": list(INK), "width": list(WIDTH)},
        spec=spec,
    )


def digits_from_spec(spec: str | DataSpec, *, image_size: int | None = None) -> Dataset:
    """Build the data set named by a digits spec: a :class:`DataSpec`, a full string
    (``"digits:size=32,seed=3"``) or the part after ``digits:`` (``"size=32,seed=3"``).

    Keys ``size``, ``seed`` (integers) and ``test_fraction`` (a number in (0, 1)); the empty
    string means all defaults (size=64, seed=0, test_fraction=0.25). ``image_size``, if given,
    upsamples to that size instead of ``size`` (the result's spec then says so).

    Raises:
        PrivatenetError: for an unknown key, a repeated key or a bad value, naming it and the
            valid keys.
    """
    return make_digits(**builtin_options(spec, "digits", image_size))  # type: ignore[arg-type]
