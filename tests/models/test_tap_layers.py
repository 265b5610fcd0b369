"""``tap_layers``: every model says which layer computes each tap (the erasure defence hooks it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models import create_model
from privatenet.models.taps import tap_layer, with_taps

CASES = [
    ("arm_small", {"image_size": 48}, 48),
    ("arm_resnet18", {"image_size": 96}, 96),
    ("resnet18", {}, 32),
    ("small_cnn", {}, 32),
    ("torchvision:resnet18", {}, 32),
    ("torchvision:mobilenet_v3_small", {}, 32),
]


@pytest.mark.parametrize(("name", "options", "size"), CASES)
def test_every_tap_is_its_layers_output(name, options, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **options).eval()
    outputs = {}
    handles = []
    for tap in model.taps:
        layer = model.get_submodule(tap_layer(model, tap))
        handles.append(layer.register_forward_hook(
            lambda _m, _i, out, tap=tap: outputs.__setitem__(tap, out)))
    with torch.no_grad():
        _, taps = model.forward_taps(torch.randn(2, 3, size, size))
    for h in handles:
        h.remove()
    for tap, value in taps.items():
        out = outputs[tap]
        assert value.numel() == out.numel()
        assert value.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        torch.testing.assert_close(value.reshape(2, -1), out.reshape(2, -1), rtol=0, atol=0)


def test_small_cnn_pool_layer_keeps_the_state_dict_and_values():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3).eval()
    assert all(k.startswith(("features.", "fc.")) for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, taps = model.forward_taps(x)
        torch.testing.assert_close(taps["pool"], model.features(x).mean(dim=(2, 3)),
                                   rtol=0, atol=0)


def test_tap_layer_paths_and_errors():
    arm = create_model("arm_small", num_classes=3)
    assert tap_layer(arm, "backbone") == "features" and tap_layer(arm, "arm") == "arm"
    tapped = with_taps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()),
                       {"conv": "0"})
    assert tap_layer(tapped, "conv") == "module.0"
    with pytest.raises(PrivatenetError, match="no tap 'pool'; valid taps: backbone, arm"):
        tap_layer(arm, "pool")

    class NoLayers(nn.Module):
        taps = ("feat",)

        def forward_taps(self, x):
            return x, {"feat": x}

    with pytest.raises(PrivatenetError, match=r"no tap_layers entry\); wrap it with with_taps"):
        tap_layer(NoLayers(), "feat")
    bad = NoLayers()
    bad.tap_layers = {"feat": "nowhere"}
    with pytest.raises(PrivatenetError, match="'nowhere' is not a layer"):
        tap_layer(bad, "feat")
