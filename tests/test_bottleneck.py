"""The vib defence: a noisy bottleneck at a tap (privatenet.bottleneck), its privacy term, its
training job and what it refuses."""

import json

import pytest
import torch

import privatenet as pn
from privatenet.app.jobs import attack_job, audit_job, load_model, train_job
from privatenet.bottleneck import (
    BottleneckModel,
    TapBottleneck,
    bottleneck_at_tap,
    bottleneck_from_config,
)
from privatenet.cli import main
from privatenet.data import load_dataset
from privatenet.errors import PrivatenetError
from privatenet.export import check_split
from privatenet.train.config import TrainConfig

CFG = TrainConfig(epochs=1, batch_size=16, device="cpu")


@pytest.mark.parametrize("shape", [(64, 4, 4), (25,)])
def test_the_code_keeps_the_tap_shape_and_its_kl_is_the_gaussian_one(shape):
    b = TapBottleneck(shape=shape, channels=4)
    h = torch.randn(3, *shape)
    assert b(h).shape == h.shape and b.last_kl.dim() == 0
    with torch.no_grad():  # mu = 1, log var = 0 everywhere: KL(N(1, 1) || N(0, 1)) = 1/2
        b.encode.weight.zero_()
        b.encode.bias.copy_(torch.tensor([1.0] * 4 + [0.0] * 4))
    b(h)
    assert float(b.last_kl.detach()) == pytest.approx(0.5)


def test_the_noise_is_drawn_in_eval_mode_too_and_follows_the_seed():
    b = TapBottleneck(shape=(8, 2, 2), channels=2).eval()
    h = torch.randn(2, 8, 2, 2)
    with torch.no_grad():
        torch.manual_seed(0)
        first, second = b(h), b(h)
        torch.manual_seed(0)
        again = b(h)
    assert not torch.equal(first, second)  # the deployment's defence: fresh noise each pass
    assert torch.equal(first, again)


@pytest.mark.parametrize("channels", [0, 65, True, 2.0])
def test_bad_channels_are_one_line(channels):
    with pytest.raises(PrivatenetError, match="channels="):
        TapBottleneck(shape=(64, 4, 4), channels=channels)


def test_the_model_cuts_at_the_code_and_rebuilds_from_its_config(tmp_path):
    from privatenet.models.saving import load_module, save_module

    net = bottleneck_at_tap(pn.create_model("small_cnn", num_classes=3), tap="backbone",
                            channels=8, image_size=32)
    assert isinstance(net, BottleneckModel) and net.taps == ("backbone", "pool")
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        logits, taps = net.forward_taps(x)
        # the tap is the decoded noisy code, and the layers after it give the logits from it
        assert torch.equal(net.forward_from("backbone", taps["backbone"]), logits)
    save_module(tmp_path / "m", net, {"role": "model"})
    back, _ = load_module(tmp_path / "m")
    assert isinstance(back, BottleneckModel) and back.config == net.config
    with torch.no_grad():
        torch.manual_seed(3)
        a = net(x)
        torch.manual_seed(3)
        assert torch.equal(back.eval()(x), a)
    with pytest.raises(PrivatenetError, match="exactly the keys"):
        bottleneck_from_config({**net.config, "extra": 1})


def test_the_vib_term_is_the_kl_of_the_forward_pass_and_needs_no_label():
    net = bottleneck_at_tap(pn.create_model("small_cnn", num_classes=3), tap="backbone",
                            channels=4, image_size=32)
    reg = pn.PrivacyRegularizer(None, loss="vib", lam=0.5, bottleneck=net.bottleneck)
    logits, taps = net.forward_taps(torch.randn(4, 3, 32, 32))
    unknown = torch.full((4,), -1)
    ce = torch.tensor(1.0)
    loss = reg(ce, taps["backbone"], unknown)  # rows of unknown private label count too
    kl = float(net.bottleneck.last_kl.detach())
    assert float(loss.detach()) == pytest.approx(0.5 + 0.5 * kl)
    assert loss.requires_grad
    assert reg.settings()["channels"] == 4
    with pytest.raises(PrivatenetError, match="needs bottleneck="):
        pn.PrivacyRegularizer(None, loss="vib", lam=0.5)
    with pytest.raises(PrivatenetError, match="uses no adversary"):
        pn.PrivacyRegularizer(torch.nn.Linear(4, 2), loss="vib", lam=0.5,
                              bottleneck=net.bottleneck)
    with pytest.raises(PrivatenetError, match="bottleneck= applies to loss='vib'"):
        pn.PrivacyRegularizer(None, loss="hsic", lam=0.5, num_classes=2,
                              bottleneck=net.bottleneck)


def test_train_then_attack_and_audit_a_vib_network(tmp_path, make_manifest, capsys):
    csv = make_manifest(tmp_path / "data", n_train=48, n_test=24)
    data = load_dataset(f"manifest:{csv}")
    original, known = tmp_path / "original", tmp_path / "known"
    train_job(data=data, out=original, model="small_cnn", target="emotion", config=CFG)
    attack_job(data=data, model_run=original, tap="pool", attribute="gender", config=CFG,
               out=known)
    privacy = {"loss": "vib", "tap": "backbone", "private": "gender", "lam": 0.5,
               "channels": 4}
    res = train_job(data=data, out=tmp_path / "vib", model="small_cnn", target="emotion",
                    config=CFG, init_from=original, privacy=privacy)
    assert res["history"][0]["priv_loss"] > 0  # the KL term was trained against
    net, _ = load_model(tmp_path / "vib")
    assert isinstance(net, BottleneckModel) and net.bottleneck.channels == 4
    # the same run again is the finished one; the same settings elsewhere give the same numbers
    again = train_job(data=data, out=tmp_path / "vib2", model="small_cnn", target="emotion",
                      config=CFG, init_from=original, privacy=privacy)
    assert again["utility"] == res["utility"]
    audits = [audit_job(data=data, model_run=tmp_path / "vib", tap="backbone",
                        attribute="gender", config=CFG, out=tmp_path / f"aud{i}",
                        zoo="quick", controls=False, mdl=False) for i in range(2)]
    assert audits[0]["worst"] == audits[1]["worst"]  # the noise follows the seed
    with pytest.raises(PrivatenetError, match="vib bottleneck.*not implemented"):
        check_split(net, tap="backbone")
    with pytest.raises(PrivatenetError,
                       match="bottleneck_channels=4 applies to defence vib or vib.leace only"):
        train_job(data=data, out=tmp_path / "x", model="small_cnn", target="emotion",
                  config=CFG, init_from=original,
                  privacy={**privacy, "loss": "hsic"})
    assert not (tmp_path / "x").exists()
    # the command line: --bottleneck-channels is for vib only, checked before the data
    assert main(["train", "--data", f"manifest:{csv}", "--model", "small_cnn", "--epochs",
                 "1", "--device", "cpu", "--loss", "hsic", "--tap", "pool", "--private",
                 "gender", "--bottleneck-channels", "4", "--out", str(tmp_path / "y")]) == 2
    assert "applies to --defence vib or vib+leace only" in capsys.readouterr().err
    meta = json.loads((tmp_path / "vib" / "model.json").read_text())
    assert meta["module"]["name"] == "bottleneck"


def test_reproduce_compares_vib_with_the_control(tmp_path, make_manifest):
    from privatenet.app.protocol import reproduce, resolve_config

    csv = make_manifest(tmp_path / "data", n_train=120)
    config = resolve_config("smoke", {"data": f"manifest:{csv}", "taps": ["backbone"],
                                      "private": ["gender"], "losses": ["vib"],
                                      "lambdas": [0.5], "sweep_loss": "confusion",
                                      "device": "cpu", "attacker_share": 0.25})
    res = reproduce(config=config, out=tmp_path / "run")
    vib = next(r for r in res["table2"] if r["loss"] == "vib")
    net, _ = load_model(vib["network"])
    assert isinstance(net, BottleneckModel) and net.bottleneck.channels == 16
    assert vib["audit"]["leakage"] is not None and vib["known"]["n"] == vib["unknown"]["n"]
