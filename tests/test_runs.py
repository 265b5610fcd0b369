import pytest
import torch

from privatenet.errors import PrivatenetError
from privatenet.train.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    save_checkpoint,
)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.txt", "one")
    atomic_write_text(tmp_path / "a" / "x.txt", "two")
    assert (tmp_path / "a" / "x.txt").read_text() == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.txt"]


def test_checkpoint_round_trip(tmp_path):
    t = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    save_checkpoint(tmp_path / "ck", tensors=t, meta={"epoch": 4, "names": ["a", "b"]})
    got, meta = load_checkpoint(tmp_path / "ck")
    assert torch.equal(got["w"], t["w"]) and torch.equal(got["n"], t["n"])
    assert meta["epoch"] == 4 and meta["names"] == ["a", "b"]


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
