"""Tests of the built-in real digits (``digits``, scikit-learn's 8x8 handwritten digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import mutual_info_score

import privatenet.data.spec as spec_module
from privatenet.cli import main
from privatenet.data import DataSpec, load_dataset, parse_spec
from privatenet.data.digits import DIGITS, INK, WIDTH, digit_features, digits_from_spec, make_digits
from privatenet.errors import PrivatenetError

DEFAULT = "digits:size=64,seed=0,test_fraction=0.25"


@pytest.fixture(scope="module")
def sk():
    """scikit-learn's digits: pixels (1797, 8, 8) 0..16 as int64 and targets."""
    bunch = load_digits()
    return bunch.images.astype(np.int64), bunch.target.astype(np.int64)


@pytest.fixture(scope="module")
def native():
    """The default split at the native 8x8 size."""
    return load_dataset("digits:size=8")


def _rows(split) -> np.ndarray:
    """scikit-learn row index of every image of a split, from its ids."""
    return np.array([int(i.removeprefix("digits_")) for i in split.ids])


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("digits", DEFAULT),
        ("digits:", DEFAULT),
        ("digits: seed=3 ,size=+32", "digits:size=32,seed=3,test_fraction=0.25"),
        ("digits:test_fraction=.5", "digits:size=64,seed=0,test_fraction=0.5"),
        ("digits:test_fraction=0.25,seed=0,size=64", DEFAULT),
    ],
)
def test_canonical_string(text, canonical):
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec and spec.path is None
    assert spec.kind == "digits"


def test_spec_kwargs_and_dict_round_trip():
    spec = parse_spec("digits:size=16,seed=2,test_fraction=0.123456789123")
    assert spec.kwargs() == {"size": 16, "seed": 2, "test_fraction": 0.123456789123}
    saved = json.loads(json.dumps(spec.to_dict()))
    assert saved == {"kind": "digits", "path": None,
                     "options": {"size": "16", "seed": "2", "test_fraction": "0.123456789123"}}
    assert DataSpec.from_dict(saved) == spec
    assert parse_spec("digits") != parse_spec("synthfaces")


def test_direct_construction_must_be_canonical():
    with pytest.raises(PrivatenetError, match="not canonical"):
        DataSpec("digits", None, (("size", "32"),))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("digits:n=100", "digits spec item 'n=100' is not key=value with a known key; "
                         "valid keys: size, seed, test_fraction"),
        ("digits:/data/digits.csv", "valid keys: size, seed, test_fraction"),
        ("digits:size=abc", "digits spec value size='abc' is not an integer; give size=<an "
                            "integer>"),
        ("digits:size=32.0", "size='32.0' is not an integer"),
        ("digits:size=7", "digits size=7 is out of range; give an integer 8..1024"),
        ("digits:size=1025", "digits size=1025 is out of range; give an integer 8..1024"),
        ("digits:seed=-1", "digits:seed=-1 is invalid; give an integer in [0, 4294967295]"),
        ("digits:seed=x", "seed='x' is not an integer"),
        ("digits:test_fraction=0", "digits:test_fraction=0.0 is out of range; give 0 < x < 1"),
        ("digits:test_fraction=1", "digits:test_fraction=1.0 is out of range; give 0 < x < 1"),
        ("digits:test_fraction=nan", "test_fraction=nan is out of range"),
        ("digits:test_fraction=half", "test_fraction='half' is not a number"),
        ("digits:size=8,size=16", "digits spec repeats key 'size'; give each key once"),
        ("mnist", "digits[:size=64,seed=0,test_fraction=0.25]"),
    ],
)
def test_bad_options_are_one_line_errors(text, needle):
    for call in (parse_spec, load_dataset):
        with pytest.raises(PrivatenetError) as exc:
            call(text)
        assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"size": True}, "digits size=True is not an integer"),
        ({"size": None}, "digits size=None is not an integer"),
        ({"seed": 1.5}, "digits:seed=1.5 is invalid"),
        ({"test_fraction": "0.2"}, "test_fraction='0.2' is not a number"),
    ],
)
def test_bad_arguments_of_make_digits(kwargs, needle):
    with pytest.raises(PrivatenetError, match=needle):
        make_digits(**kwargs)


def test_memory_check(monkeypatch):
    monkeypatch.setattr(spec_module, "physical_memory", lambda: 2**30)
    with pytest.raises(PrivatenetError, match=r"^digits:size=1024,.*pass a smaller size"):
        load_dataset("digits:size=1024")


# ----------------------------------------------------------------------------- content


def test_default_dataset():
    ds = load_dataset("digits")
    assert ds.name == DEFAULT and ds.spec == parse_spec(DEFAULT)
    assert ds.classes == {"digit": list("0123456789"), "ink": ["light", "heavy"],
                          "width": ["narrow", "wide"]}
    assert ds.classes == {"digit": list(DIGITS), "ink": list(INK), "width": list(WIDTH)}
    tr, te = ds.splits["train"], ds.splits["test"]
    assert (len(tr), len(te)) == (1347, 450)
    for s in (tr, te):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 64, 64)
        assert set(s.labels) == {"digit", "ink", "width"}
        assert all(c.dtype == torch.int64 for c in s.labels.values())
    # every class of every column is in train, so Dataset.split accepts all columns
    assert len(ds.split("train", ["digit", "ink", "width"])) == 1347


def test_image_size_overrides_size():
    ds = load_dataset("digits:size=32,seed=1", image_size=16)
    assert ds.name == "digits:size=16,seed=1,test_fraction=0.25"
    assert ds.splits["train"].images.shape[1:] == (3, 16, 16)
    assert digits_from_spec("seed=1", image_size=16).fingerprint() == ds.fingerprint()
    assert load_dataset(ds.name).fingerprint() == ds.fingerprint()


def test_cache_dir_is_accepted_and_unused(tmp_path):
    ds = load_dataset("digits:size=8", cache_dir=tmp_path / "cache")
    assert len(ds.splits["test"]) == 450 and not (tmp_path / "cache").exists()


def test_pixels_and_labels_match_sklearn(native, sk):
    pixels, target = sk
    seen = []
    for split in native.splits.values():
        rows = _rows(split)
        seen.extend(rows.tolist())
        assert split.ids == [f"digits_{i:04d}" for i in rows]
        assert (np.diff(rows) > 0).all()  # scikit-learn's order within a split
        assert np.array_equal(split.labels["digit"].numpy(), target[rows])
        img = split.images.numpy()
        # 0..16 scaled to 0..255 (16 -> 255, 8 -> 128), the same grey on all three channels
        assert np.array_equal(img[:, 0], (pixels[rows] * 255 + 8) // 16)
        assert np.array_equal(img[:, 1], img[:, 0]) and np.array_equal(img[:, 2], img[:, 0])
    assert sorted(seen) == list(range(1797))


def test_upsampled_pixels_keep_the_ink(sk):
    # Bilinear upsampling: smooth, and the private attribute stays visible in the pixels.
    pixels, _ = sk
    small = load_dataset("digits:size=8")
    big = load_dataset("digits:size=40")
    for name, split in big.splits.items():
        assert split.ids == small.splits[name].ids
        img = split.images[:, 0].numpy().astype(np.int64)
        assert img.max() == 255 and img.min() == 0
        # neighbouring pixels differ by far less than at 8x8 block edges of nearest upsampling
        assert np.abs(np.diff(img, axis=2)).max() < 255
        ink_big = img.sum(axis=(1, 2))
        ink_small = pixels[_rows(split)].sum(axis=(1, 2))
        assert np.corrcoef(ink_big, ink_small)[0, 1] > 0.999


def test_deterministic_and_seed_only_moves_the_split():
    a = load_dataset("digits:size=8,seed=5")
    b = load_dataset("digits:seed=5,size=8")
    assert a.fingerprint() == b.fingerprint()
    c = load_dataset("digits:size=8,seed=6")
    assert c.fingerprint() != a.fingerprint()
    assert a.splits["test"].ids != c.splits["test"].ids
    # the pixels of one image do not depend on the seed
    ia, ic = a.splits["train"].ids, c.splits["train"].ids
    common = sorted(set(ia) & set(ic))[:50]
    xa = a.splits["train"].images[[ia.index(i) for i in common]]
    xc = c.splits["train"].images[[ic.index(i) for i in common]]
    assert torch.equal(xa, xc)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.1])
def test_split_is_stratified(fraction, sk):
    _, target = sk
    ds = make_digits(size=8, seed=3, test_fraction=fraction)
    counts = np.bincount(target, minlength=10)
    test = ds.splits["test"].labels["digit"].numpy()
    train = ds.splits["train"].labels["digit"].numpy()
    expected = [int(round(n * fraction)) for n in counts]
    assert np.bincount(test, minlength=10).tolist() == expected
    assert (np.bincount(train, minlength=10) == counts - expected).all()
    assert not set(ds.splits["train"].ids) & set(ds.splits["test"].ids)


def test_tiny_test_fraction_keeps_every_digit_in_both_splits():
    ds = make_digits(size=8, test_fraction=1e-9)
    assert ds.distribution("test", "digit") == {str(d): 1 for d in range(10)}
    assert len(ds.splits["train"]) == 1787


def test_private_attributes_follow_their_definition(native, sk):
    """Recomputed here, independently, from scikit-learn's pixels with plain numpy."""
    pixels, target = sk
    train_rows = _rows(native.splits["train"])
    ink = pixels.sum(axis=(1, 2)).astype(float)
    cols = pixels.sum(axis=1).astype(float)
    x = np.arange(8.0)
    mean = (cols * x).sum(1) / cols.sum(1)
    width = np.sqrt((cols * (x - mean[:, None]) ** 2).sum(1) / cols.sum(1))
    np.testing.assert_allclose(digit_features(pixels)[1], width, rtol=1e-12)
    assert np.array_equal(digit_features(pixels)[0], pixels.sum(axis=(1, 2)))
    for name, values in (("ink", ink), ("width", width)):
        medians = {d: np.median(values[train_rows][target[train_rows] == d]) for d in range(10)}
        for split in native.splits.values():
            rows = _rows(split)
            want = [int(values[i] > medians[target[i]]) for i in rows]
            got = split.labels[name].numpy()
            if name == "width":  # float rounding may only matter exactly at a median
                close = np.isclose(values[rows], [medians[target[i]] for i in rows])
                assert np.array_equal(got[~close], np.array(want)[~close])
            else:
                assert got.tolist() == want


def test_width_ignores_position_and_mirroring(sk):
    pixels, _ = sk
    _, width = digit_features(pixels[:200])
    assert np.array_equal(digit_features(pixels[:200, :, ::-1])[1], width)
    shifted = np.zeros_like(pixels[:200])
    shifted[:, :, 1:] = pixels[:200, :, :-1]
    keep = pixels[:200, :, -1].sum(1) == 0  # no ink pushed out of the frame
    np.testing.assert_allclose(digit_features(shifted)[1][keep], width[keep], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("column", ["ink", "width"])
def test_private_attribute_balanced_within_each_digit(seed, column):
    ds = make_digits(size=8, seed=seed)
    split = ds.splits["train"]
    digit, private = split.labels["digit"].numpy(), split.labels[column].numpy()
    for d in range(10):  # split at the train median: off 50/50 only by ties at the median
        share = private[digit == d].mean()
        assert abs(share - 0.5) <= 0.03, (d, share)
    # nats; the attribute's entropy is ln 2 = 0.69
    assert mutual_info_score(digit, private) < 1e-3
    # The test split (about 45 images per digit) uses the train medians: balanced up to
    # sampling noise, and the digit says next to nothing about it.
    split = ds.splits["test"]
    digit, private = split.labels["digit"].numpy(), split.labels[column].numpy()
    assert abs(private.mean() - 0.5) < 0.08
    assert mutual_info_score(digit, private) < 0.04


def test_private_attribute_is_not_the_digit_but_is_in_the_pixels(native, sk):
    # Without the per-digit median, "heavy" would partly say which digit it is.
    pixels, target = sk
    rows = _rows(native.splits["train"])
    ink = pixels[rows].sum(axis=(1, 2))
    naive = (ink > np.median(ink)).astype(int)
    assert mutual_info_score(target[rows], naive) > 20 * mutual_info_score(
        target[rows], native.splits["train"].labels["ink"].numpy())
    # The two private attributes are different (agree on about half the images).
    tr = native.splits["train"].labels
    assert 0.4 < (tr["ink"] == tr["width"]).float().mean().item() < 0.65


def test_data_info_cli(capsys):
    assert main(["data-info", "digits", "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "dataset digits:size=8,seed=0,test_fraction=0.25" in out
    assert "split train: 1347 images, (3, 8, 8) uint8" in out
    assert "ink (2 classes): light" in out and "width (2 classes): narrow" in out
    assert main(["data-info", "digits:size=3"]) == 2
    assert "digits size=3 is out of range" in capsys.readouterr().err
