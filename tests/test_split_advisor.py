"""The split advisor: every tap audited on fresh rows, the gap above the floor, the cost of each
cut, and the advice (the smallest trusted part within the tolerance)."""

import json

import pytest

from privatenet.app.advisor import AdviceConfig, advise, split_advice_job
from privatenet.app.jobs import train_job
from privatenet.cli import main
from privatenet.data import load_dataset
from privatenet.errors import PrivatenetError
from privatenet.train.config import TrainConfig

CFG = TrainConfig(epochs=1, batch_size=16, device="cpu")


def _row(tap, gap, macs):
    return {"tap": tap, "gap": gap, "trusted": {"macs": macs}}


def test_the_advice_is_the_smallest_trusted_part_within_the_tolerance():
    rows = [_row("early", 0.02, 1000), _row("middle", 0.30, 100), _row("late", 0.04, 10)]
    assert advise(rows, tolerance=0.05) == "late"
    assert advise(rows, tolerance=0.03) == "early"  # the small trusted parts leak too much
    assert advise(rows, tolerance=0.01) is None
    assert advise(rows, tolerance=0.30) == "late"
    for bad in (-0.1, 1.5, True, "0.05"):
        with pytest.raises(PrivatenetError, match="tolerance="):
            AdviceConfig(tolerance=bad)


def test_every_tap_is_audited_and_costed(tmp_path, make_manifest, capsys):
    csv = make_manifest(tmp_path / "data", n_train=48, n_test=40,
                        splits=("train", "test"))
    data = load_dataset(f"manifest:{csv}")
    train_job(data=data, out=tmp_path / "net", model="small_cnn", target="emotion", config=CFG)
    advice = split_advice_job(data=data, model_run=tmp_path / "net", attribute="gender",
                              config=CFG, out=tmp_path / "adv", zoo="quick", tolerance=0.05,
                              repeats=1)
    assert [r["tap"] for r in advice["rows"]] == ["backbone", "pool"]
    for r in advice["rows"]:
        audited = json.loads((tmp_path / "adv" / f"audit-{r['tap']}" / "audit.json").read_text())
        assert r["worst"] == audited["worst"]["leakage"]
        assert r["gap"] == pytest.approx(r["worst"] - advice["floor"]["leakage"])
    assert advice["data_limited"]  # no attacker split in this manifest: cross-fitted
    assert advice["advice"] == advise(advice["rows"], tolerance=0.05)
    assert (tmp_path / "adv" / "advice.png").read_bytes()[:4] == b"\x89PNG"
    assert "worst leakage" in (tmp_path / "adv" / "advice.md").read_text()
    # the command line: the same advice again (the audits are reused), bad values one line
    assert main(["split-advisor", "--run", str(tmp_path / "net"), "--private", "gender",
                 "--zoo", "quick", "--repeats", "1", "--device", "cpu",
                 "--out", str(tmp_path / "adv")]) == 0
    assert "Where to cut" in capsys.readouterr().out
    assert main(["split-advisor", "--run", str(tmp_path / "net"), "--private", "gender",
                 "--tolerance", "2", "--out", str(tmp_path / "x")]) == 2
    assert "tolerance" in capsys.readouterr().err and not (tmp_path / "x").exists()
