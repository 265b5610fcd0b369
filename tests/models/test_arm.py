"""The ARM network against docs/design.md §3, its affinity modes, and public checkpoints."""

from __future__ import annotations

import argparse
import copy
import logging

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models import (
    ARMBlock,
    create_model,
    load_public_arm_checkpoint,
    public_state_dict,
    tap_shapes,
)
from privatenet.models.arm import arm_map_side, resnet_map_side


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine parameters and running stats, and alpha != 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
        if hasattr(model, "arm"):
            model.arm.alpha.fill_(0.7)
    return model


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """docs/design.md §3 written like the public code: a Python loop over the 2 channels,
    torch.cat, BN, channel mean plus alpha times the mean over batch AND channels."""
    feats = model.features(x)
    shuffled = nn.functional.pixel_shuffle(feats, 16)
    mask = torch.tensor([])
    for i in range(shuffled.size(1)):
        xi = torch.unsqueeze(shuffled[:, i], 1)
        xi = model.arm.de_albino(xi)
        mask = torch.cat((mask, xi), 1)
    y = model.arm.bn(mask)
    global_mean = y.mean(dim=[0, 1])
    xmean = torch.mean(y, 1, keepdim=True)
    out = xmean + model.arm.alpha * global_mean
    return model.fc(out.view(out.size(0), -1))


def post_bn_channel_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-image post-BN map averaged over channels (loop implementation), (N, h, w)."""
    shuffled = nn.functional.pixel_shuffle(model.features(x), 16)
    y = torch.cat([model.arm.de_albino(shuffled[:, i : i + 1]) for i in range(2)], 1)
    return model.arm.bn(y).mean(1)


# ------------------------------------------------------------------ faithful to docs/design.md §3


@pytest.mark.parametrize(
    ("image_size", "batch", "training", "affinity"),
    [
        (224, 2, False, "batch"),
        (224, 2, True, "batch"),
        (96, 3, False, "batch"),
        (96, 3, True, "batch"),
        (96, 3, True, "running"),  # training uses the batch mean in both modes
    ],
)
def test_matches_loop_reference(image_size, batch, training, affinity):
    torch.manual_seed(0)
    model = randomize(create_model("arm_resnet18", num_classes=7, image_size=image_size,
                                   affinity=affinity))
    model.train(training)
    ref = copy.deepcopy(model)  # train-mode BN updates its stats: give each path its own copy
    x = images(batch, image_size, seed=1)
    with torch.no_grad():
        ours = model(x)
        expected = reference_forward(ref, x)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # same BN statistics afterwards, too
    torch.testing.assert_close(model.arm.bn.running_mean, ref.arm.bn.running_mean)


def test_arm_small_matches_loop_reference():
    torch.manual_seed(0)
    model = randomize(create_model("arm_small", num_classes=3, affinity="batch"))
    x = images(5, 64, seed=2)
    for training in (True, False):
        model.train(training)
        ref = copy.deepcopy(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference_forward(ref, x), atol=1e-5, rtol=0)


def test_shared_conv_applied_once_to_both_channels():
    """Vectorised: one de_albino call on (N*2, 1, H, W), no loop over channels."""
    model = create_model("arm_small", num_classes=3).eval()
    calls = []
    handle = model.arm.de_albino.register_forward_hook(
        lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            model(images(3, 64, seed=0))
    finally:
        handle.remove()
    assert calls == [(6, 1, 64, 64)]


def test_parameter_count_and_public_keys():
    model = create_model("arm_resnet18", num_classes=7)
    assert sum(p.numel() for p in model.parameters()) == 11_178_395
    public = public_state_dict(model)
    assert len(public) == 129
    tv = torchvision.models.resnet18().state_dict()
    index = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    expected = {f"features.{index[k.split('.')[0]]}.{k.split('.', 1)[1]}"
                for k in tv if not k.startswith("fc.")}
    expected |= {"arm.de_albino.weight", "arm.alpha", "fc.weight", "fc.bias"}
    expected |= {f"arm.bn.{k}" for k in nn.BatchNorm2d(2).state_dict()}
    assert set(public) == expected
    assert set(model.state_dict()) == expected | {"arm.affinity_mean", "arm.affinity_batches"}
    assert model.arm.de_albino.weight.shape == (1, 1, 32, 32)
    assert model.arm.de_albino.bias is None
    assert model.fc.in_features == 121


def test_tap_shapes_at_224_and_forward_taps():
    model = create_model("arm_resnet18", num_classes=7).eval()
    x = images(2, 224, seed=0)
    with torch.no_grad():
        logits, taps = model.forward_taps(x)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    assert logits.shape == (2, 7)
    assert taps["backbone"].shape == (2, 512, 7, 7)
    assert taps["arm"].shape == (2, 121)
    assert tap_shapes(model, image_size=224) == {"backbone": (512, 7, 7), "arm": (121,)}


@pytest.mark.parametrize(("image_size", "backbone", "arm"), [(128, 4, 5), (96, 3, 3), (65, 3, 3),
                                                              (200, 7, 11)])
def test_tap_shapes_at_other_sizes(image_size, backbone, arm):
    assert resnet_map_side(image_size) == backbone
    assert arm_map_side(backbone) == arm
    model = create_model("arm_resnet18", num_classes=7, image_size=image_size)
    assert model.fc.in_features == arm * arm
    assert tap_shapes(model, image_size=image_size) == {
        "backbone": (512, backbone, backbone), "arm": (arm * arm,)}


@pytest.mark.parametrize("image_size", [64, 32])
def test_too_small_image_size(image_size):
    with pytest.raises(PrivatenetError, match=rf"image_size={image_size}\b.*image_size >= 65"):
        create_model("arm_resnet18", num_classes=7, image_size=image_size)


@pytest.mark.parametrize("image_size", [1, 7, 100000])
def test_image_size_outside_the_package_range(image_size):
    with pytest.raises(PrivatenetError, match=rf"image_size={image_size}\b.*8.*1024"):
        create_model("arm_resnet18", num_classes=7, image_size=image_size)


@pytest.mark.parametrize("bad", ["224", 224.0, 0, -5, None])
def test_bad_image_size(bad):
    with pytest.raises(PrivatenetError, match="image_size"):
        create_model("arm_resnet18", num_classes=7, image_size=bad)


def test_drop_rate_applies_before_fc():
    model = create_model("arm_small", num_classes=3, drop_rate=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    with pytest.raises(PrivatenetError, match="drop_rate"):
        create_model("arm_small", num_classes=3, drop_rate=1.0)


# ------------------------------------------------------------------ affinity modes


def _alone_vs_in_batch(model: nn.Module, size: int, n: int = 8) -> float:
    """Max abs logit difference of one face alone and at position 2 of a batch of ``n``."""
    face = images(1, size, seed=10)
    others = images(n - 1, size, seed=11)
    batch = torch.cat([others[:2], face, others[2:]])
    with torch.no_grad():
        alone = model(face)
        inside = model(batch)[2:3]
    return (alone - inside).abs().max().item()


@pytest.mark.parametrize(("name", "size"), [("arm_resnet18", 96), ("arm_small", 64)])
def test_running_mode_is_batch_independent_in_eval(name, size):
    torch.manual_seed(0)
    model = randomize(create_model(name, num_classes=7, image_size=size))
    model.train()
    with torch.no_grad():  # populate the running affinity estimate
        for seed in range(2):
            model(images(3, size, seed=100 + seed))
    assert model.arm.calibrated and model.arm.affinity_mean.abs().sum() > 0
    model.eval()
    assert _alone_vs_in_batch(model, size) < 1e-5
    # the same model in the public mode depends on its batch: the check above can fail
    model.arm.affinity = "batch"
    assert _alone_vs_in_batch(model, size) > 1e-4


def test_running_estimate_follows_batchnorm_momentum():
    torch.manual_seed(0)
    block = ARMBlock(5)
    twin = copy.deepcopy(block)  # computes the post-BN maps with the same BN state
    block.train()
    twin.train()
    x1, x2 = torch.randn(4, 2, 64, 64), torch.randn(3, 2, 64, 64)
    with torch.no_grad():
        block(x1)
        m1 = twin.normalized(x1).mean(dim=(0, 1))
        torch.testing.assert_close(block.affinity_mean, m1)  # the first batch sets it
        assert block.affinity_batches.item() == 1
        block(x2)
        m2 = twin.normalized(x2).mean(dim=(0, 1))
        torch.testing.assert_close(block.affinity_mean, 0.9 * m1 + 0.1 * m2)
        assert block.affinity_batches.item() == 2
        block.eval()
        before = block.affinity_mean.clone()
        out = block(x1)
        twin.eval()
        expected = twin.normalized(x1).mean(1, keepdim=True) + block.alpha * before
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(block.affinity_mean, before)  # eval does not update
    assert block.affinity_batches.item() == 2


def test_running_mean_gets_no_gradient_but_batch_mean_does():
    block = ARMBlock(5).train()
    x = torch.randn(2, 2, 64, 64, requires_grad=True)
    block(x).sum().backward()
    assert not block.affinity_mean.requires_grad
    assert block.alpha.grad is not None and x.grad is not None


def test_affinity_mode_is_switchable_and_validated():
    model = create_model("arm_small", num_classes=3)
    assert model.arm.affinity == "running" and model.config["affinity"] == "running"
    model.arm.affinity = "batch"
    assert model.config["affinity"] == "batch"
    with pytest.raises(PrivatenetError, match="affinity"):
        model.arm.affinity = "global"
    assert model.arm.affinity == "batch"
    with pytest.raises(PrivatenetError, match="running, batch"):
        create_model("arm_small", num_classes=3, affinity="eval")


def test_running_mode_rejects_other_input_size():
    model = create_model("arm_small", num_classes=3).eval()
    with pytest.raises(PrivatenetError, match="5x5"):
        model.arm(torch.randn(1, 2, 48, 48))


# ------------------------------------------------------------------ backbone weights


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_backbone_weights_are_mapped_into_features(tmp_path, fmt):
    tv = randomize(torchvision.models.resnet18(), seed=3)
    state = tv.state_dict()
    if fmt == "pt":
        path = tmp_path / "resnet18.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        path = tmp_path / "resnet18.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_model("arm_resnet18", num_classes=7, image_size=96, backbone_weights=path)
    assert model.config["backbone_weights"] == str(path)
    sd = model.state_dict()
    torch.testing.assert_close(sd["features.0.weight"], state["conv1.weight"])
    torch.testing.assert_close(sd["features.1.running_var"], state["bn1.running_var"])
    torch.testing.assert_close(sd["features.4.0.conv1.weight"], state["layer1.0.conv1.weight"])
    torch.testing.assert_close(sd["features.7.1.bn2.bias"], state["layer4.1.bn2.bias"])
    torch.testing.assert_close(sd["features.6.0.downsample.0.weight"],
                               state["layer3.0.downsample.0.weight"])


def test_backbone_weights_errors(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    bad = dict(state, **{"head.weight": torch.zeros(1)})
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(PrivatenetError, match=r"extra\.pth.*unexpected key 'head\.weight'"):
        create_model("arm_resnet18", num_classes=7, backbone_weights=tmp_path / "extra.pth")
    torch.save({k: v for k, v in state.items() if k != "layer2.0.bn1.weight"},
               tmp_path / "missing.pth")
    with pytest.raises(PrivatenetError, match="missing key 'layer2.0.bn1.weight'"):
        create_model("arm_resnet18", num_classes=7, backbone_weights=tmp_path / "missing.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"garbage")
    with pytest.raises(PrivatenetError, match=r"corrupt\.pth: cannot read"):
        create_model("arm_resnet18", num_classes=7, backbone_weights=tmp_path / "corrupt.pth")
    with pytest.raises(PrivatenetError, match=r"nowhere\.pth.*not found"):
        create_model("arm_resnet18", num_classes=7, backbone_weights=tmp_path / "nowhere.pth")


# ------------------------------------------------------------------ public checkpoints


@pytest.fixture(scope="module")
def public_model() -> nn.Module:
    torch.manual_seed(1)
    return randomize(create_model("arm_resnet18", num_classes=7, image_size=96), seed=5).eval()


def _save_public(model: nn.Module, path, *, prefix: str = "module.", **extra) -> None:
    sd = {prefix + k: v for k, v in public_state_dict(model).items()}
    torch.save({"iter": 100, "model_state_dict": sd, **extra}, path)


def test_public_checkpoint_with_calibration(tmp_path, public_model):
    path = tmp_path / "arm.pth"
    opt = torch.optim.Adam(public_model.parameters())
    _save_public(public_model, path, optimizer_state_dict=opt.state_dict())
    calib = [images(3, 96, seed=20), (images(2, 96, seed=21), torch.tensor([0, 1]))]
    model = load_public_arm_checkpoint(path, image_size=96, calibration=calib)
    for key, value in public_state_dict(public_model).items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert model.arm.affinity == "running" and model.arm.calibrated and not model.training
    with torch.no_grad():
        maps = torch.cat([post_bn_channel_mean(public_model, b if torch.is_tensor(b) else b[0])
                          for b in calib])
    torch.testing.assert_close(model.arm.affinity_mean, maps.mean(0), atol=1e-5, rtol=0)
    assert _alone_vs_in_batch(model, 96, n=4) < 1e-5


def test_public_checkpoint_without_calibration_uses_batch_mode(tmp_path, public_model, caplog):
    path = tmp_path / "arm.pth"
    _save_public(public_model, path, prefix="")
    with caplog.at_level(logging.WARNING, logger="privatenet"):
        model = load_public_arm_checkpoint(path, image_size=96)
    assert model.arm.affinity == "batch" and model.config["affinity"] == "batch"
    assert "batch" in caplog.text and "arm.pth" in caplog.text
    x = images(4, 96, seed=30)
    with torch.no_grad():  # exactly the public behaviour
        torch.testing.assert_close(model(x), reference_forward(public_model, x), atol=1e-5,
                                   rtol=0)
    model.calibrate_affinity([x])
    model.arm.affinity = "running"
    assert _alone_vs_in_batch(model, 96, n=4) < 1e-5


def test_checkpoint_with_our_buffers_stays_running(tmp_path, public_model, caplog):
    trained = copy.deepcopy(public_model)
    trained.arm.set_affinity_mean(torch.randn(3, 3), batches=7)
    path = tmp_path / "ours.pth"
    torch.save({"model_state_dict": trained.state_dict()}, path)
    with caplog.at_level(logging.WARNING):
        model = load_public_arm_checkpoint(path, image_size=96)
    assert model.arm.affinity == "running" and not caplog.records
    torch.testing.assert_close(model.arm.affinity_mean, trained.arm.affinity_mean)


def test_public_checkpoint_errors(tmp_path, public_model):
    sd = public_state_dict(public_model)
    cases = {
        "missing.pth": (
            {k: v for k, v in sd.items() if k != "arm.alpha"}, "missing key 'arm.alpha'"),
        "extra.pth": (dict(sd, **{"arm.beta": torch.zeros(1)}), "unexpected key 'arm.beta'"),
        "resnet.pth": (torchvision.models.resnet18().state_dict(), "missing key 'features"),
    }
    for name, (state, message) in cases.items():
        torch.save({"model_state_dict": state}, tmp_path / name)
        with pytest.raises(PrivatenetError, match="not an ARM ResNet-18 checkpoint") as err:
            load_public_arm_checkpoint(tmp_path / name, image_size=96)
        assert name in str(err.value) and message in str(err.value)
    torch.save({"model_state_dict": sd}, tmp_path / "arm.pth")
    with pytest.raises(PrivatenetError,
                       match=r"'fc\.weight' has shape \(7, 9\), expected \(5, 9\)"):
        load_public_arm_checkpoint(tmp_path / "arm.pth", num_classes=5, image_size=96)
    with pytest.raises(PrivatenetError, match=r"arm\.pth.*shape"):  # built for 96, not 224
        load_public_arm_checkpoint(tmp_path / "arm.pth")


def test_public_checkpoint_unreadable(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(PrivatenetError, match=r"corrupt\.pth: cannot read ARM checkpoint"):
        load_public_arm_checkpoint(tmp_path / "corrupt.pth")
    with pytest.raises(PrivatenetError, match=r"absent\.pth: ARM checkpoint not found"):
        load_public_arm_checkpoint(tmp_path / "absent.pth")
    # arbitrary objects are never unpickled
    torch.save({"model_state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "obj.pth")
    with pytest.raises(PrivatenetError, match=r"obj\.pth: cannot read"):
        load_public_arm_checkpoint(tmp_path / "obj.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(PrivatenetError, match=r"list\.pth: not a"):
        load_public_arm_checkpoint(tmp_path / "list.pth")


def test_calibration_errors(public_model):
    model = copy.deepcopy(public_model)
    with pytest.raises(PrivatenetError, match="no images"):
        model.calibrate_affinity([])
    with pytest.raises(PrivatenetError, match="float image tensors"):
        model.calibrate_affinity([torch.zeros(2, 3, 96, 96, dtype=torch.uint8)])
    assert not model.arm.calibrated
