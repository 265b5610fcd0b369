"""Adversary heads: shapes of every kind, the paper's defaults, configs and errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models import (
    ADVERSARY_KINDS,
    ARMBlock,
    adversary_from_config,
    create_adversary,
    create_model,
    default_adversary,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("side", "arm_side"), [(7, 11), (4, 5), (3, 3)])
def test_arm_fc_is_the_paper_head(side, arm_side):
    adv = create_adversary("arm_fc", tap_shape=(512, side, side), num_classes=5)
    assert isinstance(adv.arm, ARMBlock) and adv.arm.affinity == "running"
    assert adv.fc.in_features == arm_side**2 and adv.fc.out_features == 5
    assert n_params(adv) == 32 * 32 + 4 + 1 + arm_side**2 * 5 + 5
    assert not list(adv.features.parameters())  # no backbone of its own
    out = adv.train()(torch.randn(3, 512, side, side))
    assert out.shape == (3, 5)


def test_arm_fc_eval_is_batch_independent():
    torch.manual_seed(0)
    adv = create_adversary("arm_fc", tap_shape=(512, 4, 4), num_classes=2)
    feats = torch.randn(8, 512, 4, 4)
    with torch.no_grad():
        adv.train()(feats)
        adv.eval()
        alone = adv(feats[5:6])
        inside = adv(feats)[5:6]
    assert (alone - inside).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("kind", "shape", "options", "in_features"),
    [
        ("fc", (121,), {}, 121),
        ("fc", (512, 3, 3), {}, 4608),
        ("linear", (512, 7, 7), {}, 512),
        ("linear", (512, 7, 7), {"pool": "flatten"}, 512 * 49),
        ("linear", (25,), {}, 25),
        ("mlp", (64, 4, 4), {}, 64),
        ("mlp", (121,), {"hidden": 32}, 121),
        ("mlp", (64, 4, 4), {"pool": "flatten"}, 1024),
    ],
)
def test_probe_shapes(kind, shape, options, in_features):
    adv = create_adversary(kind, tap_shape=shape, num_classes=3, **options)
    first = adv.head if isinstance(adv.head, nn.Linear) else adv.head[0]
    assert first.in_features == in_features
    if kind == "mlp":
        assert [type(m) for m in adv.head] == [nn.Linear, nn.ReLU, nn.Linear]
        assert adv.head[0].out_features == options.get("hidden", 256)
    else:
        assert isinstance(adv.head, nn.Linear)
    assert adv(torch.randn(4, *shape)).shape == (4, 3)


def test_average_pooling_is_spatial_mean():
    adv = create_adversary("linear", tap_shape=(8, 2, 2), num_classes=2)
    x = torch.randn(3, 8, 2, 2)
    torch.testing.assert_close(adv(x), adv.head(x.mean(dim=(2, 3))))


@pytest.mark.parametrize("kind", ADVERSARY_KINDS)
def test_config_round_trip(kind):
    torch.manual_seed(0)
    shape = (512, 4, 4) if kind in ("arm_fc", "linear", "mlp", "conv") else (25,)
    adv = create_adversary(kind, tap_shape=shape, num_classes=4)
    config = json.loads(json.dumps(adv.config))
    assert config["kind"] == kind and config["tap_shape"] == list(shape)
    twin = adversary_from_config(config)
    assert twin.config == adv.config
    twin.load_state_dict(adv.state_dict(), strict=True)
    x = torch.randn(2, *shape)
    adv.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), adv(x), rtol=0, atol=0)


def test_config_resolves_default_pool():
    assert create_adversary("mlp", tap_shape=(8, 2, 2), num_classes=2).config["pool"] == "avg"
    assert create_adversary("mlp", tap_shape=(8,), num_classes=2).config["pool"] == "flatten"
    assert create_adversary("arm_fc", tap_shape=(512, 3, 3), num_classes=2).config == {
        "kind": "arm_fc", "tap_shape": [512, 3, 3], "num_classes": 2, "affinity": "running"}


def test_default_adversary():
    assert default_adversary("arm_resnet18", "backbone") == "arm_fc"
    assert default_adversary("arm_resnet18", "arm") == "fc"
    assert default_adversary("arm_small", "backbone") == "arm_fc"
    assert default_adversary("resnet18", "pool") == "mlp"
    assert default_adversary("small_cnn", "backbone") == "mlp"
    with pytest.raises(PrivatenetError, match="unknown model 'vgg'"):
        default_adversary("vgg", "backbone")
    with pytest.raises(PrivatenetError, match="no tap 'pool'; valid taps: backbone, arm"):
        default_adversary("arm_resnet18", "pool")


def test_default_heads_read_real_taps():
    model = create_model("arm_small", num_classes=7, image_size=48).eval()
    with torch.no_grad():
        _, taps = model.forward_taps(torch.randn(2, 3, 48, 48))
        for tap, feats in taps.items():
            kind = default_adversary("arm_small", tap)
            adv = create_adversary(kind, tap_shape=tuple(feats.shape[1:]), num_classes=2)
            assert adv.eval()(feats).shape == (2, 2)


@pytest.mark.parametrize(
    ("kind", "shape", "options", "message"),
    [
        ("cnn", (512,), {}, "unknown adversary kind 'cnn'; valid kinds: arm_fc, fc, linear, mlp"),
        ("arm_fc", (256, 7, 7), {}, r"\(512, m, m\) with m >= 3"),
        ("arm_fc", (512, 2, 2), {}, r"\(512, m, m\) with m >= 3"),
        ("arm_fc", (512, 7, 6), {}, r"\(512, m, m\)"),
        ("arm_fc", (121,), {}, r"\(512, m, m\)"),
        ("arm_fc", (512, 7, 7), {"affinity": "eval"}, "affinity mode 'eval'"),
        ("arm_fc", (512, 7, 7), {"pool": "avg"}, "no option 'pool'; valid options: affinity"),
        ("fc", (121,), {"hidden": 3}, r"valid options: \(none\)"),
        ("linear", (8, 2, 2), {"pool": "max"}, "unknown pool 'max'"),
        ("linear", (8,), {"pool": "avg"}, "pool='avg' needs a map"),
        ("mlp", (8,), {"hidden": 0}, "hidden must be a positive integer"),
        ("mlp", (), {}, "tap_shape"),
        ("mlp", (8, 0), {}, "tap_shape"),
        ("mlp", "512", {}, "tap_shape"),
        ("mlp", (8.0,), {}, "tap_shape"),
    ],
)
def test_errors(kind, shape, options, message):
    with pytest.raises(PrivatenetError, match=message):
        create_adversary(kind, tap_shape=shape, num_classes=2, **options)


def test_num_classes_and_input_errors():
    with pytest.raises(PrivatenetError, match="num_classes"):
        create_adversary("mlp", tap_shape=(8,), num_classes=1)
    adv = create_adversary("mlp", tap_shape=(8, 2, 2), num_classes=2)
    with pytest.raises(PrivatenetError, match=r"shape \(N, 8, 2, 2\), got \(3, 8, 3, 3\)"):
        adv(torch.randn(3, 8, 3, 3))
    with pytest.raises(PrivatenetError, match="adversary config"):
        adversary_from_config({"kind": "mlp"})


def test_conv_head_reads_maps_only():
    head = create_adversary("conv", tap_shape=(16, 5, 5), num_classes=3, width=8)
    assert head(torch.randn(4, 16, 5, 5)).shape == (4, 3)
    with pytest.raises(PrivatenetError, match="map"):
        create_adversary("conv", tap_shape=(25,), num_classes=3)
