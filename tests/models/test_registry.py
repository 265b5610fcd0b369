"""The model registry: every model's taps, configs, errors; the small models."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from privatenet.errors import PrivatenetError
from privatenet.models import (
    create_model,
    list_models,
    model_from_config,
    model_options,
    require_tap,
    tap_shapes,
)

# name, options, input size, expected tap shapes (fast sizes)
CASES = [
    ("arm_resnet18", {"image_size": 96}, 96, {"backbone": (512, 3, 3), "arm": (9,)}),
    ("arm_small", {}, 64, {"backbone": (512, 4, 4), "arm": (25,)}),
    ("arm_small", {"image_size": 48}, 48, {"backbone": (512, 3, 3), "arm": (9,)}),
    ("resnet18", {}, 64, {"backbone": (512, 2, 2), "pool": (512,)}),
    ("small_cnn", {}, 32, {"backbone": (64, 4, 4), "pool": (64,)}),
]


def test_list_models():
    assert list_models() == ["arm_resnet18", "arm_small", "resnet18", "small_cnn"]
    assert list_models("arm") == ["arm_resnet18", "arm_small"]
    assert model_options("arm_small") == {"image_size": 64, "affinity": "running",
                                          "drop_rate": 0.0}


@pytest.mark.parametrize(("name", "options", "size", "expected"), CASES)
def test_taps_and_forward(name, options, size, expected):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **options).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, taps = model.forward_taps(x)
        plain = model(x)
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)
    assert logits.shape == (2, 5)
    assert tuple(taps) == model.taps
    assert {k: tuple(v.shape[1:]) for k, v in taps.items()} == expected
    assert tap_shapes(model, image_size=size) == expected
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(("name", "options", "size", "expected"), CASES)
def test_config_round_trip(name, options, size, expected):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, **options)
    config = json.loads(json.dumps(model.config))  # plain values only
    assert config["name"] == name and config["num_classes"] == 4
    assert set(config) == {"name", "num_classes", *model_options(name)}
    twin = model_from_config(config)
    assert twin.config == model.config
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    model.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)


def test_tap_shapes_restores_training_flags_and_stats():
    model = create_model("arm_small", num_classes=3)
    model.train()
    model.features[0].eval()  # a frozen block must stay frozen
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    tap_shapes(model, image_size=64)
    assert model.training and model.arm.training and not model.features[0].training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, stats[key], rtol=0, atol=0)


def test_require_tap():
    model = create_model("small_cnn", num_classes=3)
    assert require_tap(model, "pool") == "pool"
    with pytest.raises(PrivatenetError, match="no tap 'arm'; valid taps: backbone, pool"):
        require_tap(model, "arm")
    with pytest.raises(PrivatenetError, match="no named taps"):
        tap_shapes(nn.Linear(2, 2), image_size=4)


def test_create_model_errors():
    with pytest.raises(PrivatenetError,
                       match="unknown model 'arm_resnet50'; valid models: arm_resnet18, "
                             "arm_small, resnet18, small_cnn"):
        create_model("arm_resnet50", num_classes=7)
    with pytest.raises(PrivatenetError, match="no option 'image_size'; valid options: "
                                              "backbone_weights"):
        create_model("resnet18", num_classes=7, image_size=224)
    with pytest.raises(PrivatenetError, match=r"valid options: \(none\)"):
        create_model("small_cnn", num_classes=7, drop_rate=0.1)
    for bad in (1, 0, "7", True, 7.0):
        with pytest.raises(PrivatenetError, match="num_classes"):
            create_model("small_cnn", num_classes=bad)
    with pytest.raises(TypeError):  # num_classes is required and keyword-only
        create_model("small_cnn")
    with pytest.raises(PrivatenetError, match="model config"):
        model_from_config({"num_classes": 3})


def test_config_keeps_backbone_weights_path_without_rereading_it(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = create_model("resnet18", num_classes=3, backbone_weights=path)
    assert model.config["backbone_weights"] == str(path)
    path.unlink()  # the weights file moved away since training
    twin = model_from_config(model.config)
    assert twin.config == model.config
    with pytest.raises(PrivatenetError, match="not found"):
        model_from_config(model.config, load_backbone_weights=True)


def test_resnet18_backbone_weights(tmp_path):
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        tv.layer4[1].bn2.weight.uniform_()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": tv.state_dict()}, path)
    model = create_model("resnet18", num_classes=3, backbone_weights=str(path))
    assert model.fc.out_features == 3
    sd = model.state_dict()
    for key, value in tv.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(sd[key], value, rtol=0, atol=0)


def test_backbone_weights_with_nan_or_inf_are_refused(tmp_path):
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        tv.layer2[0].conv1.weight[0, 0, 0, 0] = float("inf")
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PrivatenetError, match=r"r18\.pth: tensor 'layer2\.0\.conv1\.weight' "
                                              "holds NaN or infinite values"):
        create_model("resnet18", num_classes=3, backbone_weights=tmp_path / "r18.pth")


def test_arm_small_is_cheap():
    model = create_model("arm_small", num_classes=7).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert counter.get_total_flops() < 15e6


def test_arm_small_learns():
    """A tiny separable task (the class shifts channel 0) is learned in a few dozen steps."""
    torch.manual_seed(0)
    y = torch.arange(16) % 2
    x = torch.randn(16, 3, 48, 48)
    x[:, 0] += (2.0 * y - 1.0).view(-1, 1, 1) * 0.5
    model = create_model("arm_small", num_classes=2, image_size=48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy >= 0.9
