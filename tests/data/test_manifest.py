"""Manifest CSV loader: label encodings, image modes, paths, missing cells and bad input."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from privatenet.data import MISSING, load_dataset
from privatenet.data.manifest import load_manifest
from privatenet.errors import PrivatenetError


def _img(path, value: int, mode: str = "RGB", size: int = 16):
    """A solid PNG whose red (or grey) value is ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "set"
    for i in range(8):
        _img(d / "img" / f"{i}.png", 20 * i)
    return d


def _value(split, k: int) -> int:
    return int(split.images[k, 0, 0, 0])


def test_integer_labels(folder):
    csv = _write(folder / "m.csv", [
        "path,split,emotion",
        "img/0.png,train,0",
        "img/1.png,test,2",
        "img/2.png,train,3",
        "img/3.png,train,2",
        "img/4.png,test,0",
    ])
    ds = load_manifest(csv)
    assert ds.name == f"manifest:{csv.resolve()}" == str(ds.spec)
    assert ds.classes == {"emotion": ["0", "1", "2", "3"]}
    train = ds.splits["train"]
    assert train.ids == ["img/0.png", "img/2.png", "img/3.png"]
    assert train.labels["emotion"].tolist() == [0, 3, 2]
    assert [_value(train, k) for k in range(3)] == [0, 40, 60]
    test = ds.splits["test"]
    assert test.labels["emotion"].tolist() == [2, 0]
    assert [_value(test, k) for k in range(2)] == [20, 80]
    assert train.labels["emotion"].dtype == torch.long


def test_pandas_style_float_integers_with_gaps(folder):
    csv = _write(folder / "m.csv", [
        "path,split,age", "img/0.png,train,1.0", "img/1.png,train,", "img/2.png,test,0.0",
    ])
    ds = load_manifest(csv)
    assert ds.classes["age"] == ["0", "1"]
    assert ds.splits["train"].labels["age"].tolist() == [1, MISSING]


def test_string_labels_share_indices_across_splits(folder):
    csv = _write(folder / "m.csv", [
        "path,split,emotion,gender",
        "img/0.png,train,sad,male",
        "img/1.png,train,happy,female",
        "img/2.png,test,angry,female",  # 'angry' only in test: still one class list
        "img/3.png,val,happy,male",
    ])
    ds = load_manifest(csv)
    assert ds.classes == {"emotion": ["angry", "happy", "sad"], "gender": ["female", "male"]}
    assert ds.splits["train"].labels["emotion"].tolist() == [2, 1]
    assert ds.splits["test"].labels["emotion"].tolist() == [0]
    assert ds.splits["val"].labels["emotion"].tolist() == [1]
    assert ds.splits["val"].labels["gender"].tolist() == [1]
    assert [_value(ds.splits["train"], k) for k in range(2)] == [0, 20]


def test_gray_rgba_palette_become_three_channels(tmp_path):
    d = tmp_path / "modes"
    _img(d / "g.png", 90, "L")
    _img(d / "a.png", 90, "RGBA")
    _img(d / "p.png", 90, "P")
    csv = _write(d / "m.csv", ["path,split,y", "g.png,train,a", "a.png,train,b", "p.png,test,a"])
    ds = load_manifest(csv, image_size=20)
    train = ds.splits["train"]
    assert train.images.shape == (2, 3, 20, 20) and train.images.dtype == torch.uint8
    assert ds.splits["test"].images.shape == (1, 3, 20, 20)
    assert (train.images == 90).all()


def test_relative_and_absolute_paths(folder, tmp_path):
    elsewhere = _img(tmp_path / "other" / "x.png", 200)
    (folder / "sub").mkdir()
    csv = _write(folder / "sub" / "m.csv", [
        "path,split,y",
        "../img/5.png,train,a",
        f"{elsewhere},train,b",
    ])
    ds = load_manifest(csv)
    train = ds.splits["train"]
    assert [_value(train, k) for k in range(2)] == [100, 200]
    assert train.ids == ["../img/5.png", str(elsewhere)]


def test_relative_to_csv_not_cwd(folder, monkeypatch, tmp_path):
    csv = _write(folder / "m.csv", ["path,split,y", "img/1.png,train,a"])
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(f"manifest:{csv}")
    assert _value(ds.splits["train"], 0) == 20


def test_empty_cells_are_missing(folder):
    csv = _write(folder / "m.csv", [
        "path,split,emotion,gender",
        "img/0.png,train,happy,",
        "img/1.png,train,sad,female",
        "img/2.png,train,,male",
        "img/3.png,test, ,female",  # whitespace only counts as empty
    ])
    ds = load_manifest(csv)
    train = ds.splits["train"]
    assert train.labels["gender"].tolist() == [MISSING, 0, 1]
    assert train.labels["emotion"].tolist() == [0, 1, MISSING]
    assert ds.splits["test"].labels["emotion"].tolist() == [MISSING]
    kept = ds.split("train", ["gender"])
    assert kept.ids == ["img/1.png", "img/2.png"]
    assert kept.labels["emotion"].tolist() == [1, MISSING]  # aligned with the kept images
    assert [_value(kept, k) for k in range(2)] == [20, 40]


def test_crlf_bom_quotes_and_blank_lines(folder):
    (folder / "m.csv").write_bytes(
        b'\xef\xbb\xbfpath , split,emotion\r\n\r\n'
        b'"img/0.png",train,"happy, very"\r\nimg/1.png,test,sad\r\n'
    )
    ds = load_manifest(folder / "m.csv")
    assert ds.classes["emotion"] == ["happy, very", "sad"]


def test_cache_dir(folder, tmp_path):
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,a", "img/1.png,test,b"])
    a = load_manifest(csv, image_size=8, cache_dir=tmp_path / "c")
    b = load_manifest(csv, image_size=8, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1
    assert torch.equal(a.splits["test"].images, b.splits["test"].images)


def test_spec_is_absolute_and_reloads_from_elsewhere(folder, monkeypatch, tmp_path):
    _write(folder / "m.csv", ["path,split,y", "img/0.png,train,a", "img/1.png,test,b"])
    monkeypatch.chdir(folder)
    ds = load_dataset("manifest:m.csv")
    assert ds.spec.path == (folder / "m.csv").resolve()
    assert ds.name == f"manifest:{(folder / 'm.csv').resolve()}"
    monkeypatch.chdir(tmp_path)
    again = load_dataset(ds.name)
    assert again.spec == ds.spec and again.fingerprint() == ds.fingerprint()


def test_mixed_sizes_need_image_size(folder):
    _img(folder / "img" / "big.png", 7, size=32)
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,a", "img/big.png,test,b"])
    msg = _error(csv)
    assert "0.png is 16x16" in msg and "big.png is 32x32" in msg and "image_size=N" in msg
    ds = load_manifest(csv, image_size=16)
    assert ds.splits["test"].images.shape == (1, 3, 16, 16)


def test_same_image_in_train_and_test_warns(folder, caplog):
    shutil.copyfile(folder / "img" / "3.png", folder / "img" / "copy.png")
    csv = _write(folder / "m.csv", [
        "path,split,y",
        "img/0.png,train,a", "img/3.png,train,b", "img/5.png,train,a",
        "img/0.png,test,a",      # the same file
        "img/copy.png,test,b",   # a copy under another name: same content
        "img/6.png,test,a",
        "img/5.png,val,a",
    ])
    with caplog.at_level(logging.WARNING, logger="privatenet.data.cache"):
        ds = load_manifest(csv)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 2
    assert msgs[0].startswith("2 of 3 test images also appear in the train split")
    assert msgs[1].startswith("1 of 1 val images also appear in the train split")
    assert "\n" not in msgs[0]
    assert len(ds.splits["test"]) == 3  # a warning, not a refusal


# ----------------------------------------------------------------------------- bad input


def _error(csv, **kw) -> str:
    with pytest.raises(PrivatenetError) as exc:
        load_manifest(csv, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_file_missing(tmp_path):
    msg = _error(tmp_path / "none.csv")
    assert "none.csv" in msg and "path,split" in msg


@pytest.mark.parametrize(
    "header, what",
    [
        ("file,split,y", "no 'path' column"),
        ("path,y", "no 'split' column"),
        ("path,split", "no label column"),
        ("path,split,y,y", "repeats column 'y'"),
        ("path,split,,y", "empty column name"),
    ],
)
def test_bad_header(folder, header, what):
    csv = _write(folder / "m.csv", [header, "img/0.png,train,1,2"])
    msg = _error(csv)
    assert "m.csv line 1" in msg and what in msg


def test_empty_file_and_no_rows(folder):
    assert "is empty" in _error(_write(folder / "e.csv", [""]))
    assert "no rows" in _error(_write(folder / "h.csv", ["path,split,y"]))


@pytest.mark.parametrize(
    "row, what",
    [
        ("img/1.png,train", "2 cells, but the header has 3"),
        ("img/1.png,train,a,b", "4 cells, but the header has 3"),
        (",train,a", "path cell is empty"),
        ("img/1.png,validation,a", "'validation' is not allowed; use one of train, test, val"),
        ("img/1.png,,a", "split '' is not allowed"),
        ("img/missing.png,train,a", "missing.png is missing"),
    ],
)
def test_bad_row_names_file_and_line(folder, row, what):
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,a", "", row])
    msg = _error(csv)
    assert "m.csv line 4" in msg and what in msg


def test_negative_integer_label(folder):
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,1", "img/1.png,train,-2"])
    msg = _error(csv)
    assert "m.csv line 3" in msg and "negative" in msg


def test_huge_integer_label_is_refused(folder, monkeypatch):
    """Label 1000000000 used to build a billion class names ("0".."1000000000")."""
    import privatenet.data.manifest as manifest

    monkeypatch.setattr(manifest, "decode_splits", lambda **kw: pytest.fail("decoded"))
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,1",
                                    "img/1.png,train,1000000000"])
    msg = _error(csv)
    assert "m.csv line 3" in msg and "1000000000" in msg and "at most 1000" in msg
    assert "class indices" in msg  # why: every index up to the largest becomes a class


def test_largest_allowed_integer_label(folder):
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,0", "img/1.png,test,999"])
    assert len(load_manifest(csv).classes["y"]) == 1000
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,0", "img/1.png,test,1000"])
    assert "above 999" in _error(csv)


def test_column_without_values(folder):
    csv = _write(folder / "m.csv", ["path,split,y,z", "img/0.png,train,1,", "img/1.png,test,0,"])
    assert "'z' is empty in every row" in _error(csv)


def test_corrupt_image(folder):
    (folder / "img" / "bad.png").write_bytes(b"nope")
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,1", "img/bad.png,train,0"])
    assert "bad.png" in _error(csv)


def test_keyword_only(folder):
    csv = _write(folder / "m.csv", ["path,split,y", "img/0.png,train,1"])
    with pytest.raises(TypeError):
        load_manifest(csv, 16)
    assert "image_size=0 is out of range" in _error(csv, image_size=0)
