"""The defences through the jobs and the command line: hsic without an adversary, ensemble,
LEACE at a tap, hsic then LEACE, several private attributes, backbone weights, unknown private
labels (utility on the whole test split), and reproduce over several seeds."""

import json

import pytest
import torch
import torchvision
from data_helpers import check_report

from privatenet.app.jobs import attack_job, load_model, train_job
from privatenet.app.protocol import reproduce, resolve_config
from privatenet.cli import main
from privatenet.data import load_dataset
from privatenet.errors import PrivatenetError
from privatenet.train.config import TrainConfig

CFG = TrainConfig(epochs=1, batch_size=16, device="cpu")


@pytest.fixture
def trained(tmp_path, make_manifest):
    """Data with an unknown gender in some rows, an original network and a known adversary."""
    csv = make_manifest(tmp_path / "data", n_train=48, n_test=24)
    lines = csv.read_text().splitlines()
    for i in (1, 2, 45, 50, 60):  # some train and test rows without a gender
        parts = lines[i].split(",")
        parts[3] = ""
        lines[i] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")
    data = load_dataset(f"manifest:{csv}")
    original = tmp_path / "original"
    train_job(data=data, out=original, model="small_cnn", target="emotion", config=CFG)
    known = tmp_path / "known"
    attack_job(data=data, model_run=original, tap="pool", attribute="gender", config=CFG,
               out=known)
    return data, original, known


def _privacy(loss, known=None, private="gender"):
    return {"loss": loss, "tap": "pool", "private": private, "lam": 0.5, "update": "fixed",
            "adversary": known}


def test_utility_counts_every_test_row_and_hsic_needs_no_adversary(trained, tmp_path):
    data, original, known = trained
    base = train_job(data=data, out=tmp_path / "ft", model="small_cnn", target="emotion",
                     config=CFG, init_from=original)
    res = train_job(data=data, out=tmp_path / "hsic", model="small_cnn", target="emotion",
                    config=CFG, init_from=original, privacy=_privacy("hsic", str(known)))
    n_test = len(data.split("test", ["emotion"]))
    assert res["utility"]["n"] == base["utility"]["n"] == n_test  # unknown gender rows too
    assert res["known"]["n"] < n_test  # K only on the rows whose gender is known
    assert "co_trained" not in res and "priv_loss" in res["history"][0]
    alone = train_job(data=data, out=tmp_path / "hsic2", model="small_cnn", target="emotion",
                      config=CFG, init_from=original, privacy=_privacy("hsic"))
    assert "known" not in alone  # nothing to score without a known adversary


def test_ensemble_reports_its_co_trained_adversary(trained, tmp_path):
    data, original, known = trained
    res = train_job(data=data, out=tmp_path / "ens", model="small_cnn", target="emotion",
                    config=CFG, init_from=original, privacy=_privacy("ensemble", str(known)))
    # the co-trained adversary is scored on the test rows with a known gender
    check_report(res["co_trained"], data.splits["test"].labels["gender"], 2)
    assert res["co_trained"]["n"] == len(data.split("test", ["gender"])) == 22
    with pytest.raises(PrivatenetError, match="needs a known adversary"):
        train_job(data=data, out=tmp_path / "conf", model="small_cnn", target="emotion",
                  config=CFG, init_from=original, privacy=_privacy("confusion"))
    assert not (tmp_path / "conf").exists()


@pytest.mark.parametrize("loss", ["hsic+leace", "vib+leace"])
def test_training_then_erasing_splits_the_controls_budget_between_the_steps(trained, tmp_path,
                                                                           loss):
    import dataclasses
    import json

    data, original, known = trained
    out = tmp_path / "hl"
    res = train_job(data=data, out=out, model="small_cnn", target="emotion",
                    config=dataclasses.replace(CFG, epochs=2), init_from=original,
                    privacy=_privacy(loss, str(known)))
    assert len(res["history"]) == 2  # one epoch with the term, one after the erasure: not 2 + 2
    assert json.loads((out / "run.json").read_text())["fingerprint"]["epochs"] == {
        loss.split("+")[0]: 1, "erased": 1}


@pytest.mark.parametrize("loss", ["leace", "hsic+leace", "vib+leace"])
def test_leace_erases_the_tap_and_the_network_loads_again(trained, tmp_path, loss):
    from privatenet.export import check_split
    from privatenet.train.loop import extract

    data, original, known = trained
    out = tmp_path / loss
    res = train_job(data=data, out=out, model="small_cnn", target="emotion", config=CFG,
                    init_from=original, privacy=_privacy(loss, str(known)))
    net, _ = load_model(out)
    assert net.config["name"] == "erased" and net.config["tap"] == "pool"
    if loss == "vib+leace":  # the eraser sits on the noisy code: a bottleneck inside
        assert net.config["inner"]["name"] == "bottleneck"
        with pytest.raises(PrivatenetError, match="vib bottleneck"):
            check_split(net, tap="pool")
    # no class of the private attribute differs in mean at the erased tap (train rows; a vib
    # network's noise drawn as the job drew it when it fitted the eraser: same seed, same rows)
    train = data.split("train", ["emotion"])
    torch.manual_seed(CFG.seed)
    feats = extract(net, train.images, tap="pool", batch_size=CFG.eval_batch_size)
    means = [feats[train.labels["gender"] == k].mean(0) for k in (0, 1)]
    assert torch.allclose(means[0], means[1], atol=1e-3)
    # every defence trains for the control's budget (hsic+leace splits it between its steps)
    assert len(res["history"]) == CFG.epochs
    with pytest.raises(PrivatenetError, match="single private attribute"):
        train_job(data=data, out=tmp_path / "two", model="small_cnn", target="emotion",
                  config=CFG, init_from=original,
                  privacy=_privacy(loss, None, private=["gender", "age"]))


def test_two_private_attributes_from_the_command_line(trained, tmp_path, capsys):
    data, original, known = trained
    known_age = tmp_path / "known_age"
    attack_job(data=data, model_run=original, tap="pool", attribute="age", config=CFG,
               out=known_age)
    out = tmp_path / "two"
    assert main(["train", "--data", data.name, "--model", "small_cnn", "--init-from",
                 str(original), "--loss", "confusion", "--tap", "pool", "--private",
                 "gender,age", "--adversary", f"{known},{known_age}", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "known adversary (gender from pool)" in printed
    assert "known adversary (age from pool)" in printed
    res = json.loads((out / "results.json").read_text())
    assert set(res["known_by"]) == {"gender", "age"}
    assert {"priv_loss/gender", "priv_loss/age"} <= set(res["history"][0])
    # one adversary for two attributes is refused before anything is written
    assert main(["train", "--data", data.name, "--model", "small_cnn", "--init-from",
                 str(original), "--loss", "confusion", "--tap", "pool", "--private",
                 "gender,age", "--adversary", str(known), "--device", "cpu", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "one known adversary per private attribute" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_backbone_weights_are_loaded_fingerprinted_and_not_kept_in_the_config(
        tmp_path, make_manifest):
    csv = make_manifest(tmp_path / "data", n_train=12, n_test=6)
    data = load_dataset(f"manifest:{csv}")
    torch.manual_seed(1)
    weights = tmp_path / "resnet18.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, weights)
    out = tmp_path / "run"
    train_job(data=data, out=out, model="resnet18", target="emotion",
              config=TrainConfig(epochs=1, batch_size=4, device="cpu", lr=1e-12,
                                 weight_decay=0.0, augment=False),
              model_kwargs={"backbone_weights": str(weights)})
    net, _ = load_model(out)
    assert net.config["backbone_weights"] is None  # loading needs no file
    # with a tiny learning rate the first conv still holds the file's weights
    assert torch.allclose(net.conv1.weight, state["conv1.weight"], atol=1e-6)
    # other weights under the same path: the run's fingerprint differs, resume is refused
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    with pytest.raises(PrivatenetError, match="backbone_weights"):
        train_job(data=data, out=out, model="resnet18", target="emotion",
                  config=TrainConfig(epochs=1, batch_size=4, device="cpu", lr=1e-12,
                                     weight_decay=0.0, augment=False),
                  model_kwargs={"backbone_weights": str(weights)}, resume=True)


def test_paper_preset_without_backbone_weights_warns(caplog, tmp_path):
    resolve_config("paper", {})
    assert "cannot be the paper's" in caplog.text
    with pytest.raises(PrivatenetError, match="missing.pth' is no file"):
        resolve_config("paper", {"backbone_weights": str(tmp_path / "missing.pth")})
    with pytest.raises(PrivatenetError, match="takes no backbone weights"):
        resolve_config("smoke", {"backbone_weights": __file__})


def test_reproduce_over_two_seeds_reports_mean_and_std(tmp_path, make_manifest):
    csv = make_manifest(tmp_path / "data")
    config = resolve_config("smoke", {"data": f"manifest:{csv}", "taps": ["pool"],
                                      "private": ["gender"], "losses": ["hsic"],
                                      "lambdas": [0.5], "device": "cpu", "seeds": 2,
                                      "sweep_loss": "confusion", "audit_zoo": "none"})
    res = reproduce(config=config, out=tmp_path / "run")
    assert res["config"]["seed_list"] == [0, 1]
    names = {s["stage"] for s in res["stages"]}
    assert {"original", "original-seed1", "private-hsic-pool-gender-lam0.5-seed1"} <= names
    row = next(r for r in res["table2"] if r["loss"] == "hsic")
    stats = row["over_seeds"]["utility"]
    assert len(stats["values"]) == 2 and stats["std"] >= 0.0
    assert stats["mean"] == pytest.approx(sum(stats["values"]) / 2)
    assert row["audit"] is None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "±" in report and "seed(s) 0, 1" in report
