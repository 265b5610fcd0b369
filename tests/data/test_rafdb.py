"""RAF-DB loader on tiny generated trees in both annotation layouts.

Every image's grey level encodes its row in ``ROWS``, so each test can check that an image, its
id and all its labels still belong together after any filtering.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from PIL import Image

from privatenet.data import MISSING, load_dataset
from privatenet.data.rafdb import AGE_GROUPS, EMOTIONS, GENDERS, RACES, load_rafdb
from privatenet.errors import PrivatenetError

# name, emotion (1..7), gender (0 male, 1 female, 2 unsure), race (0..2), age (0..4)
ROWS = [
    ("train_00001.jpg", 1, 0, 0, 0),
    ("train_00002.jpg", 2, 1, 1, 1),
    ("train_00003.jpg", 3, 2, 2, 2),
    ("train_00004.jpg", 4, 0, 0, 3),
    ("train_00005.jpg", 5, 1, 1, 4),
    ("train_00006.jpg", 6, 2, 2, 2),
    ("train_00007.jpg", 7, 1, 0, 2),
    ("train_00008.jpg", 4, 0, 1, 3),
    ("test_0001.jpg", 5, 1, 2, 2),
    ("test_0002.jpg", 1, 2, 0, 1),
    ("test_0003.jpg", 7, 0, 1, 2),
    ("test_0004.jpg", 3, 1, 2, 0),
]
INDEX = {name: i for i, (name, *_) in enumerate(ROWS)}
# EmoLabel order: test rows interleaved and train rows out of order, so that nothing can rely
# on the position of a line.
EMO_ORDER = [8, 0, 3, 9, 1, 2, 10, 5, 4, 11, 7, 6]
SIZE = 24


def _grey(i: int) -> int:
    return 12 + 20 * i


def _image_row(img: torch.Tensor) -> int:
    """Row of ``ROWS`` encoded in a decoded image (solid grey survives JPEG within +-2)."""
    return round((img.float().mean().item() - 12) / 20)


def _emo_lines() -> list[str]:
    lines = [f"{ROWS[i][0]} {ROWS[i][1]}" for i in EMO_ORDER]
    lines.insert(5, "")  # blank lines are ignored
    return lines


def _write_emotions(root, lines: list[str]) -> None:
    # CRLF line endings, as in files edited on Windows
    (root / "EmoLabel" / "list_patition_label.txt").write_bytes(
        ("\r\n".join(lines) + "\r\n").encode()
    )


def _write_manual(root) -> None:
    manual = root / "Annotation" / "manual"
    manual.mkdir(parents=True)
    for k, (name, _emo, gender, race, age) in enumerate(ROWS):
        marks = [f"{30.5 + j}\t{40.25 + j}" if k % 2 else f"{30.5 + j} {40.25 + j}"
                 for j in range(5)]
        text = "\n".join([*marks, str(gender), str(race), str(age)]) + "\n"
        (manual / f"{name[:-4]}_manu_attri.txt").write_text(text)


def _write_lists(root, *, gender_of=lambda row: row[2]) -> None:
    for folder, sep, eol, pick in [
        ("GenderLabel", "\t", "\n", gender_of),
        ("AgeLabel", " ", "\r\n", lambda row: row[4]),  # spaces and CRLF tolerated
        ("RaceLabel", "\t", "\n", lambda row: row[3]),
    ]:
        (root / folder).mkdir(exist_ok=True)
        # reversed order, plus a name that is not in EmoLabel: rows must match by name
        lines = [f"{row[0]}{sep}{pick(row)}" for row in reversed(ROWS)]
        lines.append(f"train_09999.jpg{sep}0")
        (root / folder / "list_patition_label.txt").write_bytes((eol.join(lines) + eol).encode())


def make_rafdb(root, layout: str):
    """A RAF-DB "basic" tree with ``layout`` in {"manual", "lists", "both", "none"}."""
    (root / "EmoLabel").mkdir(parents=True)
    aligned = root / "Image" / "aligned"
    aligned.mkdir(parents=True)
    for i, (name, *_) in enumerate(ROWS):
        Image.new("RGB", (SIZE, SIZE), (_grey(i),) * 3).save(
            aligned / f"{name[:-4]}_aligned.jpg", quality=95)
    _write_emotions(root, _emo_lines())
    if layout in ("manual", "both"):
        _write_manual(root)
    if layout == "lists":
        _write_lists(root)
    if layout == "both":
        # deliberately different genders in the lists: the manual annotations must win
        _write_lists(root, gender_of=lambda row: 1 - row[2] if row[2] < 2 else 0)
    return root


def _expected(name: str) -> dict[str, int]:
    _, emo, gender, race, age = ROWS[INDEX[name]]
    return {"emotion": emo - 1, "gender": MISSING if gender == 2 else gender,
            "race": race, "age": age}


def _check_aligned(split, columns) -> None:
    for k, name in enumerate(split.ids):
        assert _image_row(split.images[k]) == INDEX[name], f"image of {name} misaligned"
        want = _expected(name)
        for c in columns:
            assert int(split.labels[c][k]) == want[c], f"{c} of {name}"


@pytest.fixture(params=["manual", "lists"])
def tree(request, tmp_path):
    return make_rafdb(tmp_path / "basic", request.param)


def test_every_label_matches_what_was_written(tree):
    ds = load_rafdb(tree)
    assert ds.name == f"rafdb:{tree}"
    assert set(ds.splits) == {"train", "test"}
    train, test = ds.splits["train"], ds.splits["test"]
    # file order within each split
    assert train.ids == [ROWS[i][0] for i in EMO_ORDER if i < 8]
    assert test.ids == [ROWS[i][0] for i in EMO_ORDER if i >= 8]
    assert train.images.shape == (8, 3, SIZE, SIZE) and train.images.dtype == torch.uint8
    assert len(test) == 4
    for split in (train, test):
        assert set(split.labels) == {"emotion", "gender", "age", "race"}
        _check_aligned(split, ["emotion", "gender", "age", "race"])


def test_classes(tree):
    ds = load_rafdb(tree)
    assert ds.classes == {"emotion": list(EMOTIONS), "gender": list(GENDERS),
                          "age": list(AGE_GROUPS), "race": list(RACES)}
    assert EMOTIONS == ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    assert AGE_GROUPS[3] == "40-69"
    assert ds.distribution("train", "gender") == {"male": 3, "female": 3, "?": 2}


def test_gender_split_drops_unsure_rows_from_every_column(tree):
    ds = load_rafdb(tree)
    kept = ds.split("train", ["gender"])
    assert sorted(kept.ids) == [r[0] for r in ROWS[:8] if r[2] != 2]
    assert (kept.labels["gender"] != MISSING).all()
    # the public scripts' defect: emotion labels shifted against the filtered images
    _check_aligned(kept, ["emotion", "gender", "age", "race"])
    test = ds.split("test", ["gender"])
    assert sorted(test.ids) == ["test_0001.jpg", "test_0003.jpg", "test_0004.jpg"]
    _check_aligned(test, ["emotion", "gender", "age", "race"])


def test_emotion_split_keeps_unsure_gender_rows(tree):
    ds = load_rafdb(tree)
    train = ds.split("train", ["emotion"])
    assert len(train) == 8
    assert int((train.labels["gender"] == MISSING).sum()) == 2
    _check_aligned(train, ["emotion", "gender", "age"])
    age = ds.split("train", ["emotion", "age"])
    assert len(age) == 8


def test_manual_preferred_when_both_layouts_exist(tmp_path):
    ds = load_rafdb(make_rafdb(tmp_path / "basic", "both"))
    for split in ds.splits.values():
        _check_aligned(split, ["emotion", "gender", "age", "race"])


def test_emotion_only_without_attributes(tmp_path):
    ds = load_rafdb(make_rafdb(tmp_path / "basic", "none"))
    assert list(ds.classes) == ["emotion"]
    assert set(ds.splits["train"].labels) == {"emotion"}
    _check_aligned(ds.splits["train"], ["emotion"])
    with pytest.raises(PrivatenetError, match="no label column 'gender'"):
        ds.split("train", ["gender"])


def test_only_some_attribute_lists(tmp_path):
    root = make_rafdb(tmp_path / "basic", "lists")
    (root / "RaceLabel" / "list_patition_label.txt").unlink()
    ds = load_rafdb(root)
    assert set(ds.classes) == {"emotion", "gender", "age"}
    _check_aligned(ds.splits["test"], ["emotion", "gender", "age"])


def test_image_size_spec_and_cache(tmp_path):
    root = make_rafdb(tmp_path / "basic", "manual")
    ds = load_dataset(f"rafdb:{root}", image_size=16, cache_dir=tmp_path / "cache")
    assert ds.name == f"rafdb:{root}"
    assert ds.splits["train"].images.shape == (8, 3, 16, 16)
    again = load_rafdb(root, image_size=16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    for name in ("train", "test"):
        assert torch.equal(again.splits[name].images, ds.splits[name].images)
        _check_aligned(again.splits[name], ["emotion", "gender", "age", "race"])


def test_spec_is_absolute_from_a_relative_root(tmp_path, monkeypatch):
    root = make_rafdb(tmp_path / "basic", "none")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("rafdb:basic")
    assert ds.spec.path == root.resolve() and ds.spec.path.is_absolute()
    assert ds.name == str(ds.spec) == f"rafdb:{root.resolve()}"
    monkeypatch.chdir(root / "Image")  # the saved name still loads the same data elsewhere
    assert load_dataset(ds.name).fingerprint() == ds.fingerprint()


def test_image_in_train_and_test_warns_with_count(tmp_path, caplog):
    root = make_rafdb(tmp_path / "basic", "none")
    aligned = root / "Image" / "aligned"
    # a test image that is a byte copy of a train image (another name, same content)
    shutil.copyfile(aligned / "train_00002_aligned.jpg", aligned / "test_0003_aligned.jpg")
    with caplog.at_level(logging.WARNING, logger="privatenet.data.cache"):
        load_rafdb(root)
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert msg.startswith("1 of 4 test images also appear in the train split")
    assert "train_00002_aligned.jpg" in msg and "test_0003_aligned.jpg" in msg


def test_no_warning_without_shared_images(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="privatenet.data.cache"):
        load_rafdb(make_rafdb(tmp_path / "basic", "none"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_keyword_only(tmp_path):
    root = make_rafdb(tmp_path / "basic", "none")
    with pytest.raises(TypeError):
        load_rafdb(root, 16)


# ----------------------------------------------------------------------------- bad input


def _error(root) -> str:
    with pytest.raises(PrivatenetError) as exc:
        load_rafdb(root)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_root_missing(tmp_path):
    msg = _error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in msg and '"basic"' in msg and "EmoLabel/" in msg


def test_label_file_missing(tmp_path):
    root = make_rafdb(tmp_path / "basic", "none")
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    msg = _error(root)
    assert "EmoLabel/list_patition_label.txt" in msg and "missing" in msg


def test_wrong_root_level(tmp_path):
    root = make_rafdb(tmp_path / "basic", "none")
    msg = _error(root / "Image")
    assert "EmoLabel" in msg and '"basic"' in msg


def test_image_folder_missing(tmp_path):
    root = make_rafdb(tmp_path / "basic", "none")
    for p in (root / "Image" / "aligned").iterdir():
        p.unlink()
    (root / "Image" / "aligned").rmdir()
    assert "Image/aligned" in _error(root)


@pytest.mark.parametrize(
    "bad, what",
    [
        ("train_00009.jpg", "malformed"),
        ("train_00009.jpg 3 extra", "malformed"),
        ("train_00009.jpg five", "malformed"),
        ("train_00009.jpg 8", "out of range"),
        ("train_00009.jpg 0", "out of range"),
        ("val_00001.jpg 3", "neither 'train_' nor 'test_'"),
        ("train_00004.jpg 2", "listed again"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, bad, what):
    root = make_rafdb(tmp_path / "basic", "none")
    lines = _emo_lines()
    lines.insert(7, bad)
    _write_emotions(root, lines)
    msg = _error(root)
    assert "EmoLabel/list_patition_label.txt line 8" in msg
    assert what in msg
    if what == "malformed":
        assert repr(bad) in msg  # the line itself is shown


def test_missing_image_names_path(tmp_path):
    root = make_rafdb(tmp_path / "basic", "manual")
    (root / "Image" / "aligned" / "train_00005_aligned.jpg").unlink()
    msg = _error(root)
    assert "train_00005_aligned.jpg" in msg and "missing" in msg
    assert "list_patition_label.txt line" in msg


def test_corrupt_image_names_path(tmp_path):
    root = make_rafdb(tmp_path / "basic", "none")
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").write_bytes(b"garbage")
    assert "test_0002_aligned.jpg" in _error(root)


@pytest.mark.parametrize(
    "content, where",
    [
        ("1 2\n3 4\n0\n0\n2\n", "malformed: 5 non-blank lines"),
        ("1 2\n3 4\n5 6\n7 x\n9 10\n0\n0\n2\n", "line 4: malformed landmark"),
        ("1 2\n3 4\n5 6\n7 8\n9 10\n5\n0\n2\n", "line 6: gender code"),
        ("1 2\n3 4\n5 6\n7 8\n9 10\n0\n0\n\n9\n", "line 9: age code"),
        ("1 2\n3 4\n5 6\n7 8\n9 10\n0\n3\n2\n", "line 7: race code"),
    ],
)
def test_malformed_manual_attribute_file(tmp_path, content, where):
    root = make_rafdb(tmp_path / "basic", "manual")
    (root / "Annotation" / "manual" / "train_00006_manu_attri.txt").write_text(content)
    msg = _error(root)
    assert "train_00006_manu_attri.txt" in msg and where in msg


def test_missing_manual_attribute_file(tmp_path):
    root = make_rafdb(tmp_path / "basic", "manual")
    (root / "Annotation" / "manual" / "test_0003_manu_attri.txt").unlink()
    msg = _error(root)
    assert "test_0003_manu_attri.txt" in msg and "missing" in msg


def test_name_missing_from_attribute_list(tmp_path):
    root = make_rafdb(tmp_path / "basic", "lists")
    path = root / "AgeLabel" / "list_patition_label.txt"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("train_00007")]
    path.write_text("\n".join(lines) + "\n")
    msg = _error(root)
    assert "AgeLabel/list_patition_label.txt" in msg and "'train_00007.jpg'" in msg


@pytest.mark.parametrize(
    "bad, what",
    [
        ("train_00001.jpg\t1\t2", "malformed gender line"),
        ("train_00001.jpg\t3", "gender code"),
        ("train_00001.jpg\tx", "gender code"),
        ("test_0004.jpg\t0", "second, different gender code"),
    ],
)
def test_malformed_attribute_list(tmp_path, bad, what):
    root = make_rafdb(tmp_path / "basic", "lists")
    path = root / "GenderLabel" / "list_patition_label.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, bad)
    path.write_text("\n".join(lines) + "\n")
    msg = _error(root)
    assert "GenderLabel/list_patition_label.txt line 3" in msg and what in msg
