import pytest
import torch

import privatenet


def test_public_api_is_keyword_only_and_stable():
    assert {"arm_resnet18", "arm_small", "resnet18", "small_cnn"} <= set(privatenet.list_models())
    with pytest.raises(TypeError):
        privatenet.create_model("small_cnn", 3)  # num_classes is keyword-only
    model = privatenet.create_model("small_cnn", num_classes=3)
    logits, taps = model.forward_taps(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3) and set(taps) == set(model.taps)
    head = privatenet.create_adversary("linear", tap_shape=tuple(taps["pool"].shape[1:]),
                                       num_classes=2)
    assert head(taps["pool"]).shape == (2, 2)
    with pytest.raises(privatenet.PrivatenetError, match="unknown model"):
        privatenet.create_model("vgg", num_classes=3)


def test_with_taps_on_any_module_leaves_no_hooks_and_checks_layer_paths():
    import torchvision

    net = torchvision.models.resnet18(num_classes=4)
    tapped = privatenet.with_taps(net, {"backbone": "layer4", "mid": "layer2.1.conv2"})
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    logits, taps = tapped.forward_taps(x)
    assert logits.shape == (2, 4) and taps["backbone"].shape == (2, 512, 2, 2)
    assert taps["mid"].shape == (2, 128, 8, 8)
    assert torch.equal(tapped(x), net(x))  # unchanged forward
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed again
    assert privatenet.tap_shapes(tapped, image_size=64)["backbone"] == (512, 2, 2)
    with pytest.raises(privatenet.PrivatenetError, match="no layer 'layer9'.*layer4"):
        privatenet.with_taps(net, {"b": "layer9"})
    net.unused = torch.nn.Linear(2, 2)  # a layer the forward pass never calls
    with pytest.raises(privatenet.PrivatenetError, match="not called"):
        privatenet.with_taps(net, {"b": "unused"}).forward_taps(x)


def test_torchvision_models_by_name_rebuild_from_their_config():
    from privatenet.models import model_from_config

    model = privatenet.create_model("torchvision:mobilenet_v3_small", num_classes=3)
    assert model.taps == ("backbone", "pool")
    assert privatenet.tap_shapes(model, image_size=64) == {"backbone": (576, 2, 2),
                                                          "pool": (576, 1, 1)}
    again = model_from_config(model.config)
    again.load_state_dict(model.state_dict())  # same architecture, same keys
    custom = privatenet.create_model("torchvision:resnet18", num_classes=3,
                                     taps={"mid": "layer3"})
    assert custom.taps == ("mid",)
    with pytest.raises(privatenet.PrivatenetError, match="unknown torchvision model"):
        privatenet.create_model("torchvision:resnet19", num_classes=3)


def test_a_users_own_model_registers_saves_and_loads(tmp_path):
    from privatenet.models import registry
    from privatenet.models.saving import load_module, save_module

    @privatenet.register_model(tags=("user",))
    def tiny_user_net(num_classes: int, width: int = 4) -> torch.nn.Module:
        body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(width, num_classes))
        return privatenet.with_taps(body, {"pool": "2"})

    try:
        assert privatenet.list_models("user") == ["tiny_user_net"]
        net = privatenet.create_model("tiny_user_net", num_classes=3, width=5)
        assert net.forward_taps(torch.zeros(1, 3, 8, 8))[1]["pool"].shape == (1, 5)
        save_module(tmp_path / "m", net, {"role": "model"})
        again, _ = load_module(tmp_path / "m", expect="tiny_user_net")
        x = torch.rand(2, 3, 8, 8)
        assert torch.equal(again(x), net(x))
    finally:
        registry._MODELS.pop("tiny_user_net", None)
