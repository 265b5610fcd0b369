"""The attacker split carved out of the train split before any training (docs/design.md §5)."""

import numpy as np
import pytest
import torch

from privatenet.data.base import (
    ATTACKER_SPLIT,
    Dataset,
    Split,
    carve_attacker_split,
    check_attacker_share,
    check_carve,
)
from privatenet.errors import PrivatenetError


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = {"emotion": torch.randint(0, 3, (n,), generator=g),
              "age": (torch.rand(n, generator=g) < 0.2).long()}  # imbalanced, as RAF-DB's
    labels["age"][:5] = -1  # unknown labels form their own stratum
    images = torch.randint(0, 255, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    train = Split(images, labels, [f"r{i}" for i in range(n)])
    test = train.subset(torch.arange(10))
    return Dataset("d", {"train": train, "test": test},
                   {"emotion": ["a", "b", "c"], "age": ["young", "old"]})


def test_every_stratum_gives_its_share_and_no_row_is_in_both():
    data = _data()
    carved = carve_attacker_split(data, share=0.25, columns=["emotion", "age"])
    train, attacker = carved.splits["train"], carved.splits[ATTACKER_SPLIT]
    assert set(train.ids).isdisjoint(attacker.ids)
    assert sorted(train.ids + attacker.ids) == sorted(data.splits["train"].ids)
    assert carved.splits["test"] is data.splits["test"]  # the scoring rows are untouched
    before = data.splits["train"].labels
    joint = torch.stack([before["emotion"], before["age"]], 1).numpy()
    after = torch.stack([attacker.labels["emotion"], attacker.labels["age"]], 1).numpy()
    for stratum in np.unique(joint, axis=0):
        n = int((joint == stratum).all(1).sum())
        assert int((after == stratum).all(1).sum()) == round(0.25 * n), stratum
    # images and every label column moved together
    index = {r: i for i, r in enumerate(data.splits["train"].ids)}
    rows = torch.tensor([index[r] for r in attacker.ids])
    assert torch.equal(attacker.images, data.splits["train"].images[rows])
    assert torch.equal(attacker.labels["age"], before["age"][rows])


def test_the_carve_depends_on_its_seed_only():
    a = carve_attacker_split(_data(), share=0.2, columns=["emotion"])
    b = carve_attacker_split(_data(), share=0.2, columns=["emotion"])
    c = carve_attacker_split(_data(), share=0.2, columns=["emotion"], seed=1)
    assert a.splits[ATTACKER_SPLIT].ids == b.splits[ATTACKER_SPLIT].ids
    assert a.splits[ATTACKER_SPLIT].ids != c.splits[ATTACKER_SPLIT].ids
    assert a.fingerprint() != _data().fingerprint()  # the carve is part of the data's content


def test_a_single_row_stratum_stays_in_train():
    data = _data(n=30)
    data.splits["train"].labels["emotion"][data.splits["train"].labels["emotion"] == 2] = 0
    data.splits["train"].labels["emotion"][7] = 2  # the only row of class c
    carved = carve_attacker_split(data, share=0.5, columns=["emotion"])
    assert "r7" in carved.splits["train"].ids
    carved.check_train_classes(["emotion"])


def test_no_share_or_an_own_attacker_split_leaves_the_data_as_it_is():
    data = _data()
    assert carve_attacker_split(data, share=0, columns=["emotion"]) is data
    own = Dataset("d", data.splits | {ATTACKER_SPLIT: data.splits["test"]}, data.classes)
    assert carve_attacker_split(own, share=0.3, columns=["emotion"]) is own


@pytest.mark.parametrize("share", [-0.1, 0.51, True, "0.2", float("nan")])
def test_a_bad_share_is_one_line(share):
    with pytest.raises(PrivatenetError, match="attacker_share=.*0..0.5"):
        check_attacker_share(share)


def test_the_carve_is_saved_with_a_network_and_an_edited_record_is_refused(tmp_path):
    from privatenet.models.saving import check_module_meta

    carved = carve_attacker_split(_data(), share=0.2, columns=["emotion", "age"])
    assert check_carve(carved.carve) == {"share": 0.2, "columns": ["emotion", "age"], "seed": 0}
    meta = {"role": "model", "module": {"name": "small_cnn", "num_classes": 3},
            "data": "d", "attacker_carve": carved.carve}
    assert check_module_meta(meta, tmp_path / "model.json") is meta
    for bad in ({"share": 0.9, "columns": ["age"], "seed": 0}, {"share": 0.2}, "0.2",
                {"share": 0.2, "columns": [], "seed": 0},
                {"share": 0.2, "columns": ["age"], "seed": True}):
        with pytest.raises(PrivatenetError, match="model.json.*attacker_carve"):
            check_module_meta(meta | {"attacker_carve": bad}, tmp_path / "model.json")
