"""DataSpec parsing and canonical strings, the shared image-size check and Dataset.fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import privatenet.data.base as base
from privatenet.data import Dataset, DataSpec, Split, check_image_size, load_dataset, parse_spec
from privatenet.errors import PrivatenetError


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec("manifest:sub/../faces.csv")
    assert spec == DataSpec("manifest", tmp_path.resolve() / "faces.csv")
    assert str(spec) == f"manifest:{tmp_path.resolve() / 'faces.csv'}"
    assert parse_spec("rafdb:.").path == tmp_path.resolve()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("rafdb:~/basic").path == tmp_path.resolve() / "basic"


def test_path_keeps_colons_and_commas(tmp_path):
    spec = parse_spec(f"manifest:{tmp_path}/a:b,c.csv")
    assert spec.path.name == "a:b,c.csv"
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("synthfaces", "synthfaces:n=5000,size=64,seed=0"),
        ("synthfaces:", "synthfaces:n=5000,size=64,seed=0"),
        ("synthfaces: seed=1 ,n=300", "synthfaces:n=300,size=64,seed=1"),
        ("synthfaces:n=100,test_fraction=.25",
         "synthfaces:n=100,size=64,seed=0,test_fraction=0.25"),
        ("synthfaces:size=+32,n=0100", "synthfaces:n=100,size=32,seed=0"),
    ],
)
def test_synthfaces_canonical_string(text, canonical):
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec  # canonical strings round-trip
    assert spec.path is None


def test_equal_specs_and_hashable():
    a = parse_spec("synthfaces:seed=0")
    b = parse_spec("synthfaces:n=5000,size=64,seed=0")
    assert a == b and len({a, b}) == 1
    assert a.kwargs() == {"n": 5000, "size": 64, "seed": 0}
    assert parse_spec(a) is a


def test_float_option_round_trips_exactly():
    spec = parse_spec("synthfaces:test_fraction=0.123456789123")
    assert spec.kwargs()["test_fraction"] == 0.123456789123
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    ["manifest:/data/faces.csv", "rafdb:/data/basic", "synthfaces:n=30,seed=4,test_fraction=0.5"],
)
def test_to_dict_from_dict_through_json(text):
    spec = parse_spec(text)
    saved = json.loads(json.dumps(spec.to_dict()))
    assert DataSpec.from_dict(saved) == spec


def test_to_dict_format():
    assert parse_spec("rafdb:/data/basic").to_dict() == {
        "kind": "rafdb", "path": "/data/basic", "options": {}}
    assert parse_spec("synthfaces:n=20").to_dict() == {
        "kind": "synthfaces", "path": None, "options": {"n": "20", "size": "64", "seed": "0"}}


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"path": "/x"}, "'kind'"),
        ({"kind": "imagenet", "path": "/x"}, "imagenet"),
        ({"kind": "rafdb", "path": None}, "needs a path"),
        ({"kind": "synthfaces", "options": {"n": "3"}}, "n=3"),
        ({"kind": "synthfaces", "options": ["n"]}, "not a dict"),
    ],
)
def test_from_dict_validates(data, needle):
    with pytest.raises(PrivatenetError, match=needle):
        DataSpec.from_dict(data)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("rafdb", Path("relative")), "absolute path"),
        (("manifest", None), "absolute path"),
        (("synthfaces", None, (("n", "20"),)), "not canonical"),
        (("synthfaces", None, (("n", "5000"), ("size", "64"), ("seed", "0"), ("x", "1"))), "'x'"),
        (("zip", None), "unknown dataset kind 'zip'"),
    ],
)
def test_direct_construction_is_validated(args, needle):
    with pytest.raises(PrivatenetError, match=needle):
        DataSpec(*args)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("faces.csv", "unknown dataset spec 'faces.csv'"),
        ("manifest:", "needs a path"),
        ("rafdb:  ", "needs a path"),
        ("synthfaces:n=5", "n=5 is out of range; give n 10..200000"),
        ("synthfaces:n=200001", "n=200001 is out of range"),
        ("synthfaces:size=1025", "synthfaces size=1025 is out of range; give an integer 8..1024"),
        ("synthfaces:size=7", "size=7 is out of range"),
        ("synthfaces:test_fraction=nan", "test_fraction=nan is out of range"),
        ("synthfaces:colour=red", "valid keys: n, size, seed, test_fraction"),
    ],
)
def test_parse_errors_are_one_line(text, needle):
    with pytest.raises(PrivatenetError) as exc:
        parse_spec(text)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_spec(Path("/data/faces.csv"))  # type: ignore[arg-type]


def test_check_image_size():
    assert check_image_size(None) is None
    assert check_image_size(8) == 8 and check_image_size(1024) == 1024
    for bad in (7, 1025, 100000, 0, -1, True, 2.0, "64"):
        with pytest.raises(PrivatenetError, match=rf"^image_size={bad!r} .*8\.\.1024$"):
            check_image_size(bad)
    with pytest.raises(PrivatenetError, match="^size=1 "):
        check_image_size(1, name="size")


def test_load_dataset_checks_image_size_before_reading(tmp_path):
    # image_size=100000 used to crash with a traceback; the missing file is not even read.
    with pytest.raises(PrivatenetError, match="image_size=100000 is out of range"):
        load_dataset(f"manifest:{tmp_path}/none.csv", image_size=100000)


# ----------------------------------------------------------------------------- fingerprint


def _dataset(name="x", seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    split = Split(torch.randint(0, 255, (4, 3, 8, 8), generator=g, dtype=torch.uint8),
                  {"y": torch.tensor([0, 1, 0, 1])}, ["a", "b", "c", "d"])
    test = Split(torch.randint(0, 255, (2, 3, 8, 8), generator=g, dtype=torch.uint8),
                 {"y": torch.tensor([1, 0])}, ["e", "f"])
    return Dataset(name, {"train": split, "test": test}, {"y": ["no", "yes"]})


def test_fingerprint_same_content_same_value_whatever_the_name():
    a, b = _dataset("one"), _dataset("two")
    fp = a.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert b.fingerprint() == fp
    # Splits in another dict order are the same data.
    c = Dataset("c", {"test": b.splits["test"], "train": b.splits["train"]}, b.classes)
    assert c.fingerprint() == fp


@pytest.mark.parametrize("change", ["pixel", "label", "id", "class", "split name", "shape"])
def test_fingerprint_changes_with_content(change):
    a = _dataset()
    b = _dataset()
    train = b.splits["train"]
    if change == "pixel":
        train.images[2, 1, 3, 4] ^= 1
    elif change == "label":
        train.labels["y"][0] = 1
    elif change == "id":
        train.ids[3] = "z"
    elif change == "class":
        b.classes["y"] = ["no", "Yes"]
    elif change == "split name":
        b.splits["val"] = b.splits.pop("test")
    else:
        b.splits["train"] = Split(train.images.reshape(4, 3, 4, 16), train.labels, train.ids)
    assert a.fingerprint() != b.fingerprint()


def test_fingerprint_is_computed_once(monkeypatch):
    ds = _dataset()
    calls = []
    real = base._fingerprint
    monkeypatch.setattr(base, "_fingerprint", lambda d: calls.append(1) or real(d))
    first = ds.fingerprint()
    assert ds.fingerprint() == first and len(calls) == 1


def test_fingerprint_of_empty_split():
    ds = Dataset("e", {"train": Split(torch.empty((0, 3, 8, 8), dtype=torch.uint8),
                                      {"y": torch.empty(0, dtype=torch.long)})}, {"y": ["a"]})
    assert len(ds.fingerprint()) == 64


def test_loaded_dataset_spec_name_and_fingerprint():
    ds = load_dataset("synthfaces:n=12,size=8,seed=1")
    assert ds.spec == parse_spec("synthfaces:seed=1,size=8,n=12")
    assert ds.name == str(ds.spec)
    assert load_dataset(ds.spec).fingerprint() == ds.fingerprint()
    assert load_dataset("synthfaces:n=12,size=8,seed=2").fingerprint() != ds.fingerprint()
