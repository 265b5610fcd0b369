"""``privatenet export``: a network split at a tap into an untrusted and a trusted ONNX part.

The cut (``forward_from``) is exact for every tap of every registry model and of an erased
model; the exported parts give what torch gives, on any batch size; ``export.json`` describes
the files truthfully; every refusal is one line with exit code 2 and leaves nothing behind.
One export (through the CLI) is shared by the tests of this module; the failure tests reuse its
ONNX bytes instead of exporting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import pytest
import torch
from cli_helpers import fails as _fails
from torch import nn

from privatenet import export as export_lib
from privatenet.cli import main
from privatenet.erasure import erase_at_tap, fit_eraser
from privatenet.errors import PrivatenetError
from privatenet.export import SPLITTABLE, check_split, export_split
from privatenet.models import create_model, list_models
from privatenet.models.taps import with_taps

CUT_CASES = [
    ("arm_resnet18", {"image_size": 65}, 65),
    ("arm_small", {"image_size": 48}, 48),
    ("resnet18", {}, 32),
    ("small_cnn", {}, 32),
]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _settle(net: nn.Module, size: int) -> nn.Module:
    """Non-default batch-norm statistics and ARM affinity estimate (a few training-mode passes
    without gradients), so that the cut is tested on realistic buffers; returns ``net`` in
    eval mode."""
    gen = torch.Generator().manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, size, size, generator=gen))
    return net.eval()


# ---------------------------------------------------------------- the cut, in torch


@pytest.mark.parametrize(("name", "options", "size"), CUT_CASES)
def test_forward_from_every_tap_gives_forward_exactly(name, options, size):
    torch.manual_seed(0)
    net = _settle(create_model(name, num_classes=3, **options), size)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        logits, taps = net.forward_taps(x)
        for tap in net.taps:
            assert torch.equal(net.forward_from(tap, taps[tap]), net(x)), tap
            assert torch.equal(net.forward_from(tap, taps[tap]), logits), tap
    with pytest.raises(PrivatenetError, match="taps that can be cut: " + ", ".join(net.taps)):
        net.forward_from("nope", taps[net.taps[0]])


def test_every_registry_model_can_be_split():
    assert set(SPLITTABLE) == set(list_models())


def _erased(tap: str) -> nn.Module:
    torch.manual_seed(0)
    net = _settle(create_model("arm_small", num_classes=3, image_size=48), 48)
    x = torch.randn(32, 3, 48, 48)
    with torch.no_grad():
        feats = net.forward_taps(x)[1][tap]
    eraser = fit_eraser(feats, torch.arange(32) % 2, num_classes=2)
    return erase_at_tap(net, tap=tap, eraser=eraser, image_size=48).eval()


@pytest.mark.parametrize("erased_tap", ["backbone", "arm"])
def test_forward_from_of_an_erased_model(erased_tap):
    model = _erased(erased_tap)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        logits, taps = model.forward_taps(x)
        for tap in model.taps:
            assert torch.equal(model.forward_from(tap, taps[tap]), model(x)), tap
        # the tap an attacker reads is the erased one (forward_from starts after the eraser):
        # the same weights without the eraser give other features
        plain = create_model("arm_small", num_classes=3, image_size=48)
        plain.load_state_dict(model.inner.state_dict())
        assert not torch.allclose(plain.eval().forward_taps(x)[1][erased_tap], taps[erased_tap])


def test_models_that_cannot_be_split_are_named_with_the_fix():
    tapped = create_model("torchvision:squeezenet1_1", num_classes=3)
    with pytest.raises(PrivatenetError, match="'torchvision:squeezenet1_1' cannot be split") as e:
        check_split(tapped, tap="backbone")
    assert all(n in str(e.value) for n in SPLITTABLE) and "\n" not in str(e.value)
    small = create_model("small_cnn", num_classes=3)
    with pytest.raises(PrivatenetError, match="'small_cnn' has no tap 'arm' to split at; taps "
                                              "that can be cut: backbone, pool"):
        check_split(small, tap="arm")
    # an erased model around a model without forward_from cannot be split either
    own = with_taps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)),
                    {"conv": "0"})
    own.tap_layers = {"conv": "0"}
    with torch.no_grad():
        feats = own.forward_taps(torch.randn(8, 3, 8, 8))[1]["conv"]
    erased = erase_at_tap(own, tap="conv", eraser=fit_eraser(
        feats, torch.arange(8) % 2, num_classes=2), image_size=8)
    with pytest.raises(PrivatenetError, match="cannot be split"):
        check_split(erased, tap="conv")
    assert check_split(_erased("arm"), tap="arm") == "arm"


def test_bad_check_images_are_refused_before_any_export(tmp_path):
    net = create_model("small_cnn", num_classes=3)
    with pytest.raises(PrivatenetError, match=r"\(N, 3, 32, 32\)"):
        export_split(net, tap="pool", image_size=32, out_dir=tmp_path / "o",
                     check_images=torch.zeros(2, 3, 16, 16))
    with pytest.raises(PrivatenetError, match="image_size=3 is out of range"):
        export_split(net, tap="pool", image_size=3, out_dir=tmp_path / "o",
                     check_images=torch.zeros(2, 3, 3, 3))
    assert not (tmp_path / "o").exists()


def test_missing_deploy_extra_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(PrivatenetError, match=r'onnxscript .*pip install -e "\.\[deploy\]"'):
        export_lib.require_deploy()


# ---------------------------------------------------------------- one export, through the CLI


def _save_run(folder, net, *, data: str, classes=("angry", "happy", "sad"), size=48):
    """A folder that ``load_model`` reads like a finished ``train`` run."""
    from privatenet.models.saving import save_module
    from privatenet.storage import write_json

    save_module(folder / "model", net, {"role": "model", "data": data, "target": "emotion",
                                        "classes": list(classes), "image_size": size})
    write_json(folder / "results.json", {})
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An arm_small run (48 px, trained buffers) exported at ``backbone`` through the CLI: the
    ARM block, with its running affinity estimate, is in the trusted part."""
    from data_helpers import write_manifest

    root = tmp_path_factory.mktemp("export")
    csv = write_manifest(root / "data", n_train=6, n_test=6, size=48)
    torch.manual_seed(0)
    net = _settle(create_model("arm_small", num_classes=3, image_size=48), 48)
    net.arm.set_affinity_mean(torch.randn(net.arm.map_side, net.arm.map_side))
    run = _save_run(root / "run", net, data=f"manifest:{csv}")
    out = root / "deploy"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--model", str(run), "--split", "backbone", "--out", str(out),
                     "--check-images", "4"])
    assert code == 0
    return {"root": root, "run": run, "out": out, "net": net, "csv": csv,
            "stdout": stdout.getvalue()}


def test_export_writes_both_parts_and_a_true_description(exported):
    out, net = exported["out"], exported["net"]
    assert {p.name for p in out.iterdir()} == {
        "run.json", "run.lock", "config.yaml", "untrusted.onnx", "trusted.onnx", "export.json",
        "results.json"}
    doc = json.loads((out / "export.json").read_text())
    assert doc["format"] == 1
    assert doc["input"] == {"size": 48, "channels": 3, "mean": [0.485, 0.456, 0.406],
                            "std": [0.229, 0.224, 0.225], "dtype": "float32", "layout": "NCHW",
                            "scale": "pixel/255 then (x-mean)/std"}
    assert doc["classes"] == ["angry", "happy", "sad"] and doc["target"] == "emotion"
    assert doc["tap"] == "backbone" and doc["opset"] >= 17
    assert doc["torch"] == torch.__version__
    import onnxruntime

    assert doc["onnxruntime"] == onnxruntime.__version__
    assert doc["model_run"] == str(exported["run"]) and doc["model_config"] == net.config
    assert doc["check_inputs"] == {"source": "data", "data": f"manifest:{exported['csv']}",
                                   "split": "test", "count": 4}
    u, t = doc["parts"]["untrusted"], doc["parts"]["trusted"]
    assert (u["input_name"], u["output_name"]) == ("image", "features")
    assert (t["input_name"], t["output_name"]) == ("features", "logits")
    assert u["input_shape"] == ["N", 3, 48, 48]
    assert u["output_shape"] == t["input_shape"] == ["N", 512, 3, 3]
    assert t["output_shape"] == ["N", 3]
    assert u["parameters"] + t["parameters"] == sum(p.numel() for p in net.parameters())
    assert t["parameters"] == sum(p.numel() for m in (net.arm, net.fc) for p in m.parameters())
    for part in (u, t):
        blob = (out / part["file"]).read_bytes()
        assert part["bytes"] == len(blob)
        assert part["sha256"] == hashlib.sha256(blob).hexdigest()
    assert set(doc["max_abs_diff"]) == {"untrusted", "trusted", "end_to_end"}
    assert all(0 <= v < 1e-4 for v in doc["max_abs_diff"].values())
    results = json.loads((out / "results.json").read_text())
    assert results["max_abs_diff"] == doc["max_abs_diff"]
    text = exported["stdout"]
    assert "untrusted.onnx" in text and "trusted.onnx" in text and "parameters" in text
    assert "max abs difference" in text


def test_both_parts_run_on_another_batch_size_as_torch(exported):
    """Exported with a batch of 2, run with 5 and 1: the batch dimension is dynamic."""
    import onnxruntime as ort

    out, net = exported["out"], exported["net"]
    sessions = {w: ort.InferenceSession(str(out / f"{w}.onnx"),
                                        providers=["CPUExecutionProvider"])
                for w in ("untrusted", "trusted")}
    for s in sessions.values():
        assert isinstance(s.get_inputs()[0].shape[0], str)
    for n in (5, 1):
        x = torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            logits, taps = net.forward_taps(x)
        feats = sessions["untrusted"].run(None, {"image": x.numpy()})[0]
        assert feats.shape == (n, 512, 3, 3)
        assert (torch.from_numpy(feats) - taps["backbone"]).abs().max() < 1e-4
        got = sessions["trusted"].run(None, {"features": taps["backbone"].numpy()})[0]
        assert (torch.from_numpy(got) - logits).abs().max() < 1e-4
        end = sessions["trusted"].run(None, {"features": feats})[0]
        assert (torch.from_numpy(end) - logits).abs().max() < 1e-4


def test_untrusted_part_holds_none_of_the_trusted_weights(exported):
    import onnx

    untrusted = onnx.load(str(exported["out"] / "untrusted.onnx"))
    trusted = onnx.load(str(exported["out"] / "trusted.onnx"))
    names = [i.name for i in untrusted.graph.initializer]
    assert names and not any(".arm." in n or ".fc." in n for n in names), names
    assert not any(".features." in i.name for i in trusted.graph.initializer)


def test_a_finished_export_is_never_overwritten(exported, capsys):
    out = exported["out"]
    before = _snapshot(out)
    _fails(capsys, ["export", "--model", str(exported["run"]), "--split", "backbone", "--out",
                    str(out), "--check-images", "4"], str(out), "finished export")
    assert _snapshot(out) == before


@pytest.fixture
def reuse_onnx(exported, monkeypatch):
    """Export by reading the shared export's files (the same network): no export cost."""
    def cached(part, example, *, which, name, tap):
        return (exported["out"] / f"{which}.onnx").read_bytes()

    monkeypatch.setattr(export_lib, "_to_onnx", cached)
    return exported


@pytest.mark.parametrize("exists", [False, True])
def test_a_failed_check_leaves_nothing_behind(reuse_onnx, monkeypatch, capsys, tmp_path, exists):
    out = tmp_path / "deploy"
    if exists:
        out.mkdir()
    monkeypatch.setattr(export_lib, "TOLERANCE", -1.0)
    _fails(capsys, ["export", "--model", str(reuse_onnx["run"]), "--split", "backbone",
                    "--out", str(out), "--check-images", "2"], "differs from torch",
           "nothing was written")
    assert out.exists() == exists
    assert not exists or not any(out.iterdir())


def test_a_failed_write_leaves_nothing_behind(reuse_onnx, monkeypatch, capsys, tmp_path):
    from privatenet import export as module  # the split's files are written from here

    real = module.atomic_write_bytes

    def full_disk(path, data):
        if str(path).endswith("trusted.onnx") and not str(path).endswith("untrusted.onnx"):
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(module, "atomic_write_bytes", full_disk)
    out = tmp_path / "deploy"
    _fails(capsys, ["export", "--model", str(reuse_onnx["run"]), "--split", "backbone",
                    "--out", str(out), "--check-images", "2"], "No space left on device")
    assert not out.exists()


def test_random_check_images_where_the_runs_data_is_gone(reuse_onnx, tmp_path, capsys):
    run = _save_run(tmp_path / "run", reuse_onnx["net"], data="manifest:/nonexistent/faces.csv")
    out = tmp_path / "deploy"
    assert main(["export", "--model", str(run), "--split", "backbone", "--out", str(out),
                 "--check-images", "3"]) == 0
    check = json.loads((out / "export.json").read_text())["check_inputs"]
    assert check["source"] == "random" and check["count"] == 3 and check["seed"] == 0
    assert "could not be loaded" in check["reason"]
    assert "3 random images" in capsys.readouterr().out
    # a spec the user names must load
    _fails(capsys, ["export", "--model", str(run), "--split", "backbone", "--out",
                    str(tmp_path / "other"), "--data", "manifest:/nonexistent/faces.csv"],
           "/nonexistent/faces.csv")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- refusals before any export


def test_a_tap_the_model_lacks(exported, capsys, tmp_path):
    _fails(capsys, ["export", "--model", str(exported["run"]), "--split", "pool", "--out",
                    str(tmp_path / "o")], "'arm_small' has no tap 'pool'",
           "taps that can be cut: backbone, arm")
    assert not (tmp_path / "o").exists()


def test_a_model_that_cannot_be_cut(capsys, tmp_path):
    torch.manual_seed(0)
    net = create_model("torchvision:squeezenet1_1", num_classes=3)
    run = _save_run(tmp_path / "run", net, data="synthfaces", size=32)
    _fails(capsys, ["export", "--model", str(run), "--split", "backbone", "--out",
                    str(tmp_path / "o")], "'torchvision:squeezenet1_1' cannot be split",
           "arm_resnet18")
    assert not (tmp_path / "o").exists()


def test_a_missing_run_folder(capsys, tmp_path):
    _fails(capsys, ["export", "--model", str(tmp_path / "nope"), "--split", "arm", "--out",
                    str(tmp_path / "o")], "nope", "privatenet train")
    assert not (tmp_path / "o").exists()


def test_bad_check_image_count_names_the_flag(exported, capsys, tmp_path):
    _fails(capsys, ["export", "--model", str(exported["run"]), "--split", "arm", "--out",
                    str(tmp_path / "o"), "--check-images", "0"], "--check-images 0")


def test_missing_deploy_extra_through_the_cli(exported, monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    _fails(capsys, ["export", "--model", str(exported["run"]), "--split", "arm", "--out",
                    str(tmp_path / "o")], 'pip install -e ".[deploy]"')
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- more models (slow)


@pytest.mark.slow
@pytest.mark.parametrize("erased_tap", ["arm", "backbone"])
def test_an_erased_model_exports_its_eraser_in_the_untrusted_part(erased_tap, tmp_path):
    import onnxruntime as ort

    model = _erased(erased_tap)
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    doc = export_split(model, tap=erased_tap, image_size=48, out_dir=tmp_path / "o",
                       check_images=images)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == frozen
    assert all(v < 1e-4 for v in doc["max_abs_diff"].values())
    x = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        logits, taps = model.forward_taps(x)  # the erased features
    u = ort.InferenceSession(str(tmp_path / "o" / "untrusted.onnx"),
                             providers=["CPUExecutionProvider"])
    t = ort.InferenceSession(str(tmp_path / "o" / "trusted.onnx"),
                             providers=["CPUExecutionProvider"])
    feats = u.run(None, {"image": x.numpy()})[0]
    assert (torch.from_numpy(feats) - taps[erased_tap]).abs().max() < 1e-4
    assert (torch.from_numpy(t.run(None, {"features": feats})[0]) - logits).abs().max() < 1e-4
    assert doc["model_config"]["name"] == "erased"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "size", "tap"), [
    ("arm_resnet18", {"image_size": 65}, 65, "arm"),
    ("resnet18", {}, 32, "pool"),
    ("small_cnn", {}, 32, "backbone"),
])
def test_more_models_round_trip(name, options, size, tap, tmp_path):
    torch.manual_seed(0)
    net = _settle(create_model(name, num_classes=3, **options), size)
    doc = export_split(net, tap=tap, image_size=size, out_dir=tmp_path / "o",
                       check_images=torch.randn(3, 3, size, size))
    assert all(v < 1e-4 for v in doc["max_abs_diff"].values())
    total = sum(p.numel() for p in net.parameters())
    assert doc["parts"]["untrusted"]["parameters"] + doc["parts"]["trusted"]["parameters"] == total
