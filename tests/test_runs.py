import json
import logging

import pytest
import torch

from privatenet import create_model
from privatenet.errors import PrivatenetError
from privatenet.models.saving import load_module, save_module
from privatenet.storage import (
    atomic_write_text,
    load_checkpoint,
    load_checkpoint_meta,
    load_optimizer_state,
    load_training_checkpoint,
    optimizer_state,
    save_checkpoint,
    save_training_checkpoint,
    training_checkpoint_exists,
)


def _edit_json(path, **changes):
    """Change plain values of a checkpoint JSON the way a user with an editor would."""
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta, indent=2))


def _train_meta(epoch):
    return {"epoch": epoch, "history": [{"epoch": e + 1, "loss": 1.0 / (e + 1)}
                                        for e in range(epoch + 1)]}


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.txt", "one")
    atomic_write_text(tmp_path / "a" / "x.txt", "two")
    assert (tmp_path / "a" / "x.txt").read_text() == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.txt"]


def test_checkpoint_round_trip(tmp_path):
    t = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    meta_in = {"epoch": 4, "names": ["a", "b"], "betas": (0.9, 0.99), "by_id": {1: "x"}}
    save_checkpoint(tmp_path / "ck", tensors=t, meta=meta_in)
    got, meta = load_checkpoint(tmp_path / "ck")
    assert torch.equal(got["w"], t["w"]) and torch.equal(got["n"], t["n"])
    # The JSON carries both hashes; the caller gets back only its own values.
    on_disk = json.loads((tmp_path / "ck.json").read_text())
    assert len(on_disk["meta_sha256"]) == 64 and len(on_disk["tensors_sha256"]) == 64
    assert meta == {"epoch": 4, "names": ["a", "b"], "betas": [0.9, 0.99], "by_id": {"1": "x"}}
    assert load_checkpoint_meta(tmp_path / "ck") == meta


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    save_checkpoint(tmp_path / "ck", tensors={"w": torch.ones(3)}, meta={})
    blob = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "ck.safetensors").write_bytes(blob[:-4] + b"\x00\x01\x02\x03")
    with pytest.raises(PrivatenetError, match="corrupt") as e:
        load_checkpoint(tmp_path / "ck")
    assert "\n" not in str(e.value) and "ck.safetensors" in str(e.value)
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(PrivatenetError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(PrivatenetError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_edited_checkpoint_json_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", tensors={"w": torch.ones(3)}, meta={"epoch": 1})
    _edit_json(tmp_path / "ck.json", epoch=7)
    with pytest.raises(PrivatenetError, match="meta_sha256") as e:
        load_checkpoint(tmp_path / "ck")
    assert "ck.json" in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_without_meta_hash_or_with_wrong_types_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", tensors={"w": torch.ones(3)}, meta={"epoch": 1})
    meta = json.loads((tmp_path / "ck.json").read_text())
    del meta["meta_sha256"]  # the format written before the JSON was hashed
    (tmp_path / "ck.json").write_text(json.dumps(meta))
    with pytest.raises(PrivatenetError, match="no meta_sha256.*rerun"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck.json").write_text(json.dumps(dict(meta, meta_sha256=5)))
    with pytest.raises(PrivatenetError, match="no meta_sha256"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck.json").write_text("[1, 2]")
    with pytest.raises(PrivatenetError, match="not a JSON object"):
        load_checkpoint(tmp_path / "ck")


def test_torn_single_pair_is_refused(tmp_path):
    # New tensors, old JSON: a kill between the two renames of the final model files.
    save_checkpoint(tmp_path / "a", tensors={"w": torch.ones(3)}, meta={})
    save_checkpoint(tmp_path / "b", tensors={"w": torch.zeros(3)}, meta={})
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(PrivatenetError, match="torn"):
        load_checkpoint(tmp_path / "a")


def test_save_checkpoint_refuses_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="meta_sha256"):
        save_checkpoint(tmp_path / "ck", tensors={}, meta={"meta_sha256": "x"})


def test_module_round_trip_and_edited_module_json(tmp_path):
    torch.manual_seed(0)
    net = create_model("small_cnn", num_classes=3)
    save_module(tmp_path / "model", net, {"role": "model", "classes": ["a", "b", "c"]})
    back, meta = load_module(tmp_path / "model", expect="small_cnn")
    assert meta["classes"] == ["a", "b", "c"]
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    _edit_json(tmp_path / "model.json", classes=["c", "b", "a"])
    with pytest.raises(PrivatenetError, match="model.json.*meta_sha256"):
        load_module(tmp_path / "model")


def _forge_json(path, **changes):
    """Edit a checkpoint JSON and recompute its meta_sha256 with the module's own digest (the
    hash detects corruption; it is not a signature)."""
    from privatenet.storage import _meta_digest

    meta = json.loads(path.read_text())
    meta.update(changes)
    meta["meta_sha256"] = _meta_digest(meta)
    path.write_text(json.dumps(meta, indent=2))


_SMALL = {"name": "small_cnn", "num_classes": 3}


@pytest.mark.parametrize("changes, needle", [
    # sizes that would allocate terabytes if the network were built from them
    ({"module": {**_SMALL, "num_classes": 10**12}}, "3 'classes' for a network of"),
    ({"module": {**_SMALL, "num_classes": 10**12}, "classes": None},
     r"model\.safetensors: tensor 'fc\.weight' has shape \(3, 64\).*needs \(1000000000000, 64\)"),
    ({"module": {**_SMALL, "num_classes": 5}, "classes": list("abcde")},
     r"model\.safetensors: tensor 'fc\.weight' has shape \(3, 64\)"),
    ({"image_size": 10**6}, "'image_size' is 1000000, not an integer 8..1024"),
    ({"module": {**_SMALL, "num_classes": "3"}}, "'module.num_classes' is '3'"),
    ({"classes": ["a", "a", "b"]}, "not a list of distinct names"),
    ({"data": 5}, "'data' is 5"),
])
def test_edited_and_rehashed_module_json_is_one_line(tmp_path, changes, needle):
    from privatenet.app.jobs import model_meta

    save_module(tmp_path / "model", create_model("small_cnn", num_classes=3), {
        "role": "model", "data": "synthfaces:n=60", "target": "emotion",
        "classes": ["a", "b", "c"], "image_size": 32})
    _forge_json(tmp_path / "model.json", **changes)
    with pytest.raises(PrivatenetError, match=needle) as e:
        load_module(tmp_path / "model")
    assert "edited or is from another privatenet version" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    if "safetensors" not in needle:  # the plain values, as the CLI reads them first
        with pytest.raises(PrivatenetError, match=r"model\.json: .*edited"):
            model_meta(tmp_path)


def test_edited_and_rehashed_adversary_json_is_one_line(tmp_path):
    from privatenet.models import create_adversary

    head = create_adversary("mlp", tap_shape=(64,), num_classes=2)
    save_module(tmp_path / "adversary", head, {"role": "adversary", "tap": "pool",
                                               "attribute": "gender", "classes": ["f", "m"]})
    config = json.loads((tmp_path / "adversary.json").read_text())["module"]
    _forge_json(tmp_path / "adversary.json", module={**config, "hidden": 10**9})
    with pytest.raises(PrivatenetError, match=r"adversary\.safetensors: tensor 'head\.0\.weight' "
                                              r"has shape \(256, 64\).*edited"):
        load_module(tmp_path / "adversary")


# Training checkpoints ------------------------------------------------------------------------

def test_training_checkpoints_keep_the_last_two(tmp_path):
    run = tmp_path / "train"
    assert not training_checkpoint_exists(run) and load_training_checkpoint(run) is None
    for epoch in range(4):
        save_training_checkpoint(run, tensors={"w": torch.full((2,), float(epoch))},
                                 meta=_train_meta(epoch))
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-000002.json", "checkpoint-000002.safetensors",
        "checkpoint-000003.json", "checkpoint-000003.safetensors"]
    assert training_checkpoint_exists(run)
    tensors, meta = load_training_checkpoint(run)
    assert meta == _train_meta(3) and torch.equal(tensors["w"], torch.full((2,), 3.0))
    save_training_checkpoint(run, tensors={}, meta=_train_meta(4), keep=1)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-000004.json", "checkpoint-000004.safetensors"]


def test_orphan_tensor_file_is_not_a_checkpoint(tmp_path):
    # Killed between the two renames of the very first save: tensors, no JSON.
    save_training_checkpoint(tmp_path, tensors={"w": torch.ones(1)}, meta=_train_meta(0))
    (tmp_path / "checkpoint-000000.json").unlink()
    (tmp_path / ".checkpoint-000000.safetensors.abc.tmp").write_bytes(b"half")
    assert not training_checkpoint_exists(tmp_path)
    assert load_training_checkpoint(tmp_path) is None
    save_training_checkpoint(tmp_path, tensors={"w": torch.ones(1)}, meta=_train_meta(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000.json", "checkpoint-000000.safetensors"]


@pytest.mark.parametrize("damage", ["torn", "edited", "truncated", "renamed", "no_tensors"])
def test_bad_newest_training_checkpoint_falls_back(tmp_path, caplog, damage):
    for epoch in range(3):
        save_training_checkpoint(tmp_path, tensors={"w": torch.full((2,), float(epoch))},
                                 meta=_train_meta(epoch))
    new, old = tmp_path / "checkpoint-000002", tmp_path / "checkpoint-000001"
    if damage == "torn":  # new tensors written over a pair whose JSON is still the old one
        new.with_suffix(".safetensors").write_bytes(
            (tmp_path / "checkpoint-000001.safetensors").read_bytes())
    elif damage == "edited":
        _edit_json(new.with_suffix(".json"), epoch=9)
    elif damage == "truncated":
        new.with_suffix(".json").write_text('{"epoch": 2, "hist')
    elif damage == "renamed":  # an older pair under a newer name verifies but is not epoch 2
        for suffix in (".json", ".safetensors"):
            new.with_suffix(suffix).write_bytes(old.with_suffix(suffix).read_bytes())
    else:
        new.with_suffix(".safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="privatenet.storage"):
        tensors, meta = load_training_checkpoint(tmp_path)
    assert meta["epoch"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-000002" in warning and "fell back" in warning
    assert "checkpoint-000001" in warning
    # Training on from there rewrites epoch 2 and the pair is good again.
    save_training_checkpoint(tmp_path, tensors={"w": torch.zeros(2)}, meta=_train_meta(2))
    assert load_training_checkpoint(tmp_path)[1]["epoch"] == 2


def test_no_verifying_training_checkpoint_is_a_one_line_error(tmp_path):
    for epoch in range(2):
        save_training_checkpoint(tmp_path, tensors={"w": torch.ones(1)}, meta=_train_meta(epoch))
    for p in tmp_path.glob("*.safetensors"):
        p.write_bytes(b"garbage")
    with pytest.raises(PrivatenetError, match="no training checkpoint verifies") as e:
        load_training_checkpoint(tmp_path)
    assert "\n" not in str(e.value) and "checkpoint-000001.safetensors" in str(e.value)


@pytest.mark.parametrize("meta,field", [
    ({"epoch": "x", "history": []}, "epoch"),
    ({"epoch": -1, "history": []}, "epoch"),
    ({"epoch": True, "history": []}, "epoch"),
    ({"history": []}, "epoch"),
    ({"epoch": 0, "history": {"epoch": 1}}, "history"),
    ({"epoch": 0, "history": [1, 2]}, "history"),
])
def test_training_checkpoint_values_of_wrong_types(tmp_path, meta, field):
    # Hashes that match but values of the wrong types (a hand-made or buggy checkpoint).
    save_checkpoint(tmp_path / "checkpoint-000000", tensors={}, meta=meta)
    with pytest.raises(PrivatenetError, match=f"'{field}'") as e:
        load_training_checkpoint(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=field):
        save_training_checkpoint(tmp_path, tensors={}, meta=meta)


def test_saving_an_earlier_epoch_drops_abandoned_later_ones(tmp_path):
    for epoch in range(3):
        save_training_checkpoint(tmp_path, tensors={}, meta=_train_meta(epoch), keep=3)
    # Resumed from epoch 0 (say 1 and 2 were bad): epoch 1 again, and 2 belongs to the past.
    save_training_checkpoint(tmp_path, tensors={}, meta=_train_meta(1), keep=3)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "checkpoint-000000.json", "checkpoint-000001.json"]
    assert load_training_checkpoint(tmp_path)[1]["epoch"] == 1


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    tensors, plain = optimizer_state("o", opt)
    opt2 = torch.optim.Adam(model.parameters(), lr=0.5)
    load_optimizer_state("o", opt2, tensors, plain)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k in a["state"][pid]:
            assert torch.equal(a["state"][pid][k], b["state"][pid][k])


def test_optimizer_state_survives_a_training_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, plain = optimizer_state("o", opt)
    save_training_checkpoint(tmp_path, tensors=tensors, meta=dict(_train_meta(0), opt=plain))
    tensors2, meta = load_training_checkpoint(tmp_path)
    opt2 = torch.optim.Adam(model.parameters(), lr=0.5)
    load_optimizer_state("o", opt2, tensors2, meta["opt"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
