"""Tests of the built-in generated faces (``synthfaces``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from privatenet.data import MISSING, labels, load_dataset, parse_spec, rafdb
from privatenet.data.synthfaces import (
    AGE_GROUPS,
    EMOTIONS,
    GENDERS,
    make_synthfaces,
    synthfaces_from_spec,
)
from privatenet.errors import PrivatenetError

COUNTS = Path(__file__).resolve().parents[2] / "src/privatenet/data/rafdb_label_counts.json"


@pytest.fixture(scope="module")
def small():
    return make_synthfaces(n=300, size=32, seed=0)


@pytest.fixture(scope="module")
def big():
    """5,000 faces at 32x32 (about 3 s), for the label-distribution checks."""
    return make_synthfaces(n=5000, size=32, seed=11)


def test_shapes_dtypes_columns(small):
    assert small.name == "synthfaces:n=300,size=32,seed=0"
    assert set(small.splits) == {"train", "test"}
    assert small.classes == {
        "emotion": ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"],
        "gender": ["male", "female"],
        "age": ["0-3", "4-19", "20-39", "40-69", "70+"],
    }
    assert list(EMOTIONS) == small.classes["emotion"]
    assert list(GENDERS) == small.classes["gender"]
    assert list(AGE_GROUPS) == small.classes["age"]
    tr, te = small.splits["train"], small.splits["test"]
    assert len(tr) + len(te) == 300
    assert len(te) == 60  # RAF-DB's 3068 / 15339 = 20 %
    for name, s in small.splits.items():
        assert s.images.dtype == torch.uint8
        assert s.images.shape == (len(s), 3, 32, 32)
        assert set(s.labels) == {"emotion", "gender", "age"}
        for col in s.labels.values():
            assert col.dtype == torch.int64
        assert s.labels["emotion"].min() >= 0 and s.labels["emotion"].max() <= 6
        assert set(s.labels["gender"].unique().tolist()) <= {MISSING, 0, 1}
        assert s.labels["age"].min() >= 0 and s.labels["age"].max() <= 4
        assert s.ids[0] == f"synth_{name}_00000" and s.ids[42] == f"synth_{name}_00042"
        assert len(set(s.ids)) == len(s)
        # real pictures, not constant tensors
        assert s.images.float().std() > 20


def test_train_split_has_every_class(small):
    # Dataset.split refuses a class missing from train; even a tiny set has them all.
    split = small.split("train", ["emotion", "gender", "age"])
    assert len(split) > 0


def test_test_fraction():
    ds = make_synthfaces(n=100, size=16, seed=1, test_fraction=0.5)
    assert len(ds.splits["train"]) == len(ds.splits["test"]) == 50
    assert ds.name == "synthfaces:n=100,size=16,seed=1,test_fraction=0.5"
    assert load_dataset(ds.name).name == ds.name


def test_deterministic_by_seed():
    a = make_synthfaces(n=60, size=32, seed=5)
    b = make_synthfaces(n=60, size=32, seed=5)
    c = make_synthfaces(n=60, size=32, seed=6)
    for split in ("train", "test"):
        assert torch.equal(a.splits[split].images, b.splits[split].images)
        for k in ("emotion", "gender", "age"):
            assert torch.equal(a.splits[split].labels[k], b.splits[split].labels[k])
        assert not torch.equal(a.splits[split].images, c.splits[split].images)
    assert any(
        not torch.equal(a.splits["train"].labels[k], c.splits["train"].labels[k])
        for k in ("emotion", "gender", "age")
    )


def test_faces_differ_from_each_other(small):
    imgs = small.splits["train"].images.float()
    diff = (imgs[1:] - imgs[:-1]).abs().mean(dim=(1, 2, 3))
    assert diff.min() > 5


def test_label_marginals_follow_rafdb(big):
    ds = big
    raw = json.loads(COUNTS.read_text())
    for split in ("train", "test"):
        table = np.asarray(raw["counts"][split], dtype=float)
        s = ds.splits[split]
        emo = s.labels["emotion"].numpy()
        gen = s.labels["gender"].numpy()
        age = s.labels["age"].numpy()
        tol = 0.03 if split == "train" else 0.05
        want_age = table.sum(axis=(0, 1)) / table.sum()
        got_age = np.bincount(age, minlength=5) / len(age)
        assert np.abs(got_age - want_age).max() < tol, (split, got_age, want_age)
        want_emo = table.sum(axis=(1, 2)) / table.sum()
        got_emo = np.bincount(emo, minlength=7) / len(emo)
        assert np.abs(got_emo - want_emo).max() < tol, (split, got_emo, want_emo)
        want_unsure = table[:, 2].sum() / table.sum()
        got_unsure = (gen == MISSING).mean()
        assert abs(got_unsure - want_unsure) < 0.02
        want_female = table[:, 1].sum() / table[:, :2].sum()
        got_female = (gen[gen != MISSING] == 1).mean()
        assert abs(got_female - want_female) < tol
    # Correlations, not only marginals: most unsure-gender faces are babies (RAF-DB: ~90 %),
    # while only ~10 % of all faces are.
    train = ds.splits["train"]
    unsure_age = train.labels["age"][train.labels["gender"] == MISSING]
    assert (unsure_age == 0).float().mean() > 0.8
    assert (train.labels["age"] == 0).float().mean() < 0.15
    # and the majority emotion is happiness, the majority age 20-39, as in RAF-DB
    assert torch.bincount(train.labels["emotion"]).argmax() == 3
    assert torch.bincount(train.labels["age"]).argmax() == 2


def test_spec_parser():
    ds = load_dataset("synthfaces:n=200,size=32,seed=3")
    assert ds.name == "synthfaces:n=200,size=32,seed=3"
    assert ds.splits["train"].images.shape[1:] == (3, 32, 32)
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 200
    same = synthfaces_from_spec(" seed=3, size=32 ,n=200")
    assert torch.equal(same.splits["test"].images, ds.splits["test"].images)
    resized = load_dataset("synthfaces:n=20,size=32,seed=3", image_size=24)
    assert resized.splits["train"].images.shape[-2:] == (24, 24)
    assert resized.name == "synthfaces:n=20,size=24,seed=3"


def test_spec_defaults(monkeypatch):
    seen = {}

    def fake(**kw):
        seen.clear()
        seen.update(kw)
        return "ok"

    import privatenet.data.synthfaces as mod

    monkeypatch.setattr(mod, "make_synthfaces", fake)
    assert mod.synthfaces_from_spec("") == "ok"
    assert seen == {"n": 5000, "size": 64, "seed": 0}  # the spec is completed with defaults
    assert mod.synthfaces_from_spec("n=10", image_size=40) == "ok"
    assert seen == {"n": 10, "size": 40, "seed": 0}


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("colour=red", "colour=red"),
        ("n=100,bogus=1", "bogus"),
        ("n", "'n'"),
        ("n=abc", "n='abc'"),
        ("size=3.5", "size='3.5'"),
        ("n=100,n=200", "'n'"),
        ("n=5", "n=5"),
        ("n=100000000", "n=100000000"),
        ("size=4", "size=4"),
        ("size=2000", "size=2000"),
        ("seed=-1", "seed=-1"),
        ("test_fraction=1.5", "test_fraction=1.5"),
    ],
)
def test_spec_errors(arg, needle):
    with pytest.raises(PrivatenetError) as err:
        load_dataset(f"synthfaces:{arg}")
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(PrivatenetError, match="valid keys: n, size, seed"):
        synthfaces_from_spec("colour=red")


@pytest.mark.parametrize(
    "kw",
    [{"n": 0}, {"n": 2.5}, {"n": True}, {"n": 200_001}, {"size": 1025}, {"size": "64"},
     {"size": None}, {"seed": -3}, {"test_fraction": 0.0}, {"test_fraction": "half"},
     {"test_fraction": float("nan")}],
)  # fmt: skip
def test_make_validates(kw):
    with pytest.raises(PrivatenetError, match=next(iter(kw))):
        make_synthfaces(**kw)


def test_keyword_only():
    with pytest.raises(TypeError):
        make_synthfaces(100)  # type: ignore[misc]


def test_label_names_shared_with_rafdb():
    # One definition in labels.py: the two modules cannot drift apart again.
    assert EMOTIONS is labels.EMOTIONS is rafdb.EMOTIONS
    assert AGE_GROUPS is labels.AGE_GROUPS is rafdb.AGE_GROUPS
    assert GENDERS is labels.GENDERS is rafdb.GENDERS


def test_huge_n_refused_at_parse_time(monkeypatch):
    """n=100000000 used to draw faces until memory ran out; now the spec itself is refused."""
    import privatenet.data.synthfaces as mod

    def fail(*args, **kwargs):
        raise AssertionError("drew faces for a refused spec")

    monkeypatch.setattr(mod, "_render", fail)
    for spec in ("synthfaces:n=100000000", "synthfaces:n=10,size=100000"):
        with pytest.raises(PrivatenetError, match="out of range") as err:
            parse_spec(spec)
        assert "\n" not in str(err.value)
        with pytest.raises(PrivatenetError, match="out of range"):
            load_dataset(spec)


def test_image_size_override_checked_like_every_image_size():
    with pytest.raises(PrivatenetError, match="image_size=100000 is out of range; give an"):
        load_dataset("synthfaces:n=20,size=32", image_size=100000)


def test_memory_check_before_drawing(monkeypatch):
    import privatenet.data.spec as spec_mod
    import privatenet.data.synthfaces as mod

    monkeypatch.setattr(spec_mod, "physical_memory", lambda: 2**30)  # 1 GiB machine
    monkeypatch.setattr(mod, "_render", lambda *a: pytest.fail("drew faces that cannot fit"))
    with pytest.raises(PrivatenetError) as err:
        make_synthfaces(n=200_000, size=64)  # 2.3 GiB of pixels
    msg = str(err.value)
    assert "2.3 GiB" in msg and "smaller size" in msg and "size=37 fits" in msg
    assert "\n" not in msg


def test_spec_round_trip_and_canonical_name():
    ds = make_synthfaces(n=20, size=16, seed=2)
    assert ds.spec == parse_spec("synthfaces: seed=2,size=16, n=20")
    assert ds.name == str(ds.spec) == "synthfaces:n=20,size=16,seed=2"
    assert parse_spec(ds.name) == ds.spec
    again = load_dataset(ds.spec)
    assert again.fingerprint() == ds.fingerprint()


def _linear_accuracy(ds, column):
    """Accuracy of a linear classifier on raw pixels, and the majority rate, on the test split."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr = ds.split("train", [column])
    te = ds.split("test", [column])

    def pixels(s):
        return (s.images.float() / 255).flatten(1).numpy()

    ya, yb = tr.labels[column].numpy(), te.labels[column].numpy()
    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=300.0)).fit(pixels(tr), ya)
    acc = float((clf.predict(pixels(te)) == yb).mean())
    majority = float((yb == np.bincount(ya).argmax()).mean())
    return acc, majority


@pytest.fixture(scope="module")
def learn_set():
    return make_synthfaces(n=2000, size=32, seed=1, test_fraction=0.25)


@pytest.mark.parametrize("column, margin", [("emotion", 0.08), ("gender", 0.15), ("age", 0.12)])
def test_labels_are_learnable_from_pixels(learn_set, column, margin):
    """A linear model on raw pixels beats the majority rate on every label column.

    Expression is the hardest for a linear pixel model (pose and lighting vary); gender and age
    leak through hair, jaw, wrinkles and proportions. A CNN does much better on all three.
    """
    pytest.importorskip("sklearn")
    acc, majority = _linear_accuracy(learn_set, column)
    assert acc > majority + margin, (column, acc, majority)


def _best_single_pixel(x: np.ndarray, y: np.ndarray) -> float:
    """Training accuracy of the best threshold on one pixel value (a decision stump)."""
    ys = y[np.argsort(x, axis=0, kind="stable")]
    below = np.cumsum(ys, axis=0)
    rank = np.arange(1, len(y) + 1)[:, None]
    acc = ((rank - below) + (y.sum() - below)) / len(y)
    return float(np.maximum(acc, 1 - acc).max())


def test_gender_is_not_given_away_by_one_pixel(learn_set):
    """Gender leaks through many weak cues, not one pixel (e.g. a fixed marker or hair patch)."""
    split = learn_set.split("train", ["gender"])
    x = split.images.flatten(1).numpy()
    y = split.labels["gender"].numpy()
    majority = max(y.mean(), 1 - y.mean())
    best = _best_single_pixel(x, y)
    assert majority + 0.05 < best < 0.8, (best, majority)
