"""The CLI end to end on tiny data, and every bad-input case of the foundation issue: one-line
error, exit code 2, no traceback, nothing already written damaged."""

import json

import pytest
from cli_helpers import fails as _fails
from data_helpers import check_report

from privatenet.cli import main
from privatenet.data import load_dataset

FAST = ["--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny train run (small_cnn on a manifest) shared by the tests below."""
    from data_helpers import write_manifest

    root = tmp_path_factory.mktemp("cli")
    csv = write_manifest(root / "data")
    run = root / "run"
    assert main(["train", "--data", f"manifest:{csv}", "--model", "small_cnn", *FAST,
                 "--out", str(run)]) == 0
    return csv, run


def test_train_then_attack_prints_a_leakage_report(trained, tmp_path, capsys):
    csv, run = trained
    assert (run / "config.yaml").exists() and (run / "train" / "metrics.jsonl").exists()
    utility = json.loads((run / "results.json").read_text())["utility"]
    check_report(utility, load_dataset(f"manifest:{csv}").splits["test"].labels["emotion"], 3)
    capsys.readouterr()
    assert main(["attack", "--run", str(run), "--tap", "pool", "--private", "gender", *FAST,
                 "--out", str(tmp_path / "atk")]) == 0
    out = capsys.readouterr().out
    for line in ("accuracy", "balanced accuracy", "majority-class rate", "chance (1/K)",
                 "normalised leakage"):
        assert line in out
    res = json.loads((tmp_path / "atk" / "results.json").read_text())
    assert res["attribute"] == "gender" and res["head"] == "mlp"


def test_data_info(capsys, make_manifest, tmp_path):
    csv = make_manifest(tmp_path)
    assert main(["data-info", f"manifest:{csv}"]) == 0
    out = capsys.readouterr().out
    assert "split train: 40 images" in out and "majority rate" in out


def test_missing_dataset_root(capsys, tmp_path):
    _fails(capsys, ["data-info", f"rafdb:{tmp_path / 'nope'}"], "nope")


def test_missing_image_file(capsys, make_manifest, tmp_path):
    csv = make_manifest(tmp_path)
    (tmp_path / "img" / "005.png").unlink()
    _fails(capsys, ["data-info", f"manifest:{csv}"], "005.png")


def test_malformed_label_line(capsys, make_manifest, tmp_path):
    csv = make_manifest(tmp_path)
    lines = csv.read_text().splitlines()
    lines[3] = lines[3] + ",extra"
    csv.write_text("\n".join(lines) + "\n")
    _fails(capsys, ["data-info", f"manifest:{csv}"], "faces.csv", "line 4")


def test_malformed_rafdb_label_line(capsys, tmp_path):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "Image" / "aligned").mkdir(parents=True)
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\r\ntrain_00002.jpg five\r\n")
    _fails(capsys, ["data-info", f"rafdb:{tmp_path}"], "list_patition_label.txt", "line 2")


def test_label_name_not_in_the_class_list(capsys, trained, tmp_path, make_manifest):
    """Initialising from a run whose saved class list lacks a label of the data."""
    _, run = trained
    csv = make_manifest(tmp_path / "other")
    csv.write_text(csv.read_text().replace(",sad,", ",bored,"))
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--model", "small_cnn",
                    "--init-from", str(run), *FAST, "--out", str(tmp_path / "o")],
           "'bored'", "class list")
    assert not (tmp_path / "o" / "results.json").exists()


def test_empty_split(capsys, make_manifest, tmp_path):
    csv = make_manifest(tmp_path, splits=("train", "train"))
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--model", "small_cnn", *FAST,
                    "--out", str(tmp_path / "o")], "'test'")


def test_private_attribute_the_dataset_lacks(capsys, trained, tmp_path):
    csv, run = trained
    _fails(capsys, ["attack", "--run", str(run), "--tap", "pool", "--private", "race", *FAST,
                    "--out", str(tmp_path / "o")], "'race'")


def test_checkpoint_of_another_architecture(capsys, trained, tmp_path):
    csv, run = trained
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--model", "resnet18",
                    "--init-from", str(run), *FAST, "--out", str(tmp_path / "o")],
           "small_cnn", "resnet18")


def test_corrupt_checkpoint_file(capsys, trained, tmp_path):
    import shutil

    _, run = trained
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    before = _snapshot(bad)
    _fails(capsys, ["attack", "--run", str(bad), "--tap", "pool", "--private", "gender", *FAST,
                    "--out", str(tmp_path / "o")], "model.safetensors", "corrupt")
    assert _snapshot(bad) == before


def test_finished_run_is_never_overwritten(capsys, trained):
    csv, run = trained
    before = _snapshot(run)
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--model", "small_cnn", *FAST,
                    "--out", str(run)], str(run))
    assert _snapshot(run) == before


def test_privacy_options_come_together(capsys, trained, tmp_path):
    csv, _ = trained
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--loss", "confusion", *FAST,
                    "--out", str(tmp_path / "o")], "--tap", "--private", "--adversary")


def test_bad_config_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: [1\n")
    _fails(capsys, ["--config", str(cfg), "data-info", "synthfaces"], "c.yaml")


def test_help_explains_every_option(capsys):
    import argparse

    from privatenet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"train", "attack", "audit", "reproduce", "demo", "import-checkpoint",
                             "data-info", "export", "video", "bench", "split-advisor"}
    for name, sub in [("privatenet", parser), *commands.items()]:
        for action in sub._actions:
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
                f"{name} {action.option_strings or action.dest} has no help"
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: privatenet " + cmd in capsys.readouterr().out


def test_import_public_checkpoint_then_attack(tmp_path, capsys):
    import torch

    from privatenet.models import create_model
    from privatenet.models.public import public_state_dict

    torch.manual_seed(0)
    net = create_model("arm_resnet18", num_classes=7, image_size=96)
    torch.save({"model_state_dict": public_state_dict(net)}, tmp_path / "public.pth")
    data = ["--data", "synthfaces:n=120,size=96,seed=1"]
    assert main(["import-checkpoint", str(tmp_path / "public.pth"), *data, "--device", "cpu",
                 "--out", str(tmp_path / "imp")]) == 0
    assert "affinity running" in capsys.readouterr().out
    assert main(["attack", "--run", str(tmp_path / "imp"), "--tap", "arm", "--private", "age",
                 *FAST, "--out", str(tmp_path / "atk")]) == 0
    res = json.loads((tmp_path / "atk" / "results.json").read_text())
    assert res["head"] == "fc" and res["tap"] == "arm"
    # a checkpoint of another architecture is refused with one line
    torch.save({"model_state_dict": create_model("resnet18", num_classes=7).state_dict()},
               tmp_path / "other.pth")
    _fails(capsys, ["import-checkpoint", str(tmp_path / "other.pth"), *data,
                    "--out", str(tmp_path / "imp2")], "other.pth")


def test_import_checkpoint_refuses_nan_or_inf_weights(tmp_path, capsys):
    import torch

    from privatenet.models import create_model
    from privatenet.models.public import public_state_dict

    state = public_state_dict(create_model("arm_resnet18", num_classes=7, image_size=96))
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model_state_dict": state}, tmp_path / "nan.pth")
    out = tmp_path / "imp"
    _fails(capsys, ["import-checkpoint", str(tmp_path / "nan.pth"), "--data",
                    "synthfaces:n=120,size=96,seed=1", "--device", "cpu", "--out", str(out)],
           "nan.pth: tensor 'features.0.weight' holds NaN or infinite values")
    assert not out.exists()


def test_reproduce_dry_run_lists_stages_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--preset", "smoke", "--data", "synthfaces:n=150,size=32",
                 "--device", "cpu", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "original" in printed and "to run" in printed and "training images/s" in printed
    assert "stages to run" in printed and "not projected" in printed  # the audits
    assert not out.exists()


@pytest.mark.parametrize("new, old", [
    (["train", "--data", "d", "--out", "o", "--defence", "hsic"],
     ["train", "--data", "d", "--out", "o", "--loss", "hsic"]),
    (["reproduce", "--data", "d", "--out", "o", "--defences", "vib,leace"],
     ["reproduce", "--data", "d", "--out", "o", "--losses", "vib,leace"]),
    (["reproduce", "--data", "d", "--out", "o", "--adversary-update", "alternating"],
     ["reproduce", "--data", "d", "--out", "o", "--adversarial-update", "alternating"]),
    (["export", "--run", "r", "--split", "backbone", "--out", "o"],
     ["export", "--model", "r", "--split", "backbone", "--out", "o"]),
    (["video", "in.mp4", "--run", "r", "--out", "o"], ["video", "in.mp4", "--model", "r",
                                                       "--out", "o"]),
])
def test_the_old_spellings_of_renamed_options_still_parse_the_same(new, old):
    from privatenet.cli import build_parser

    parser = build_parser()
    assert vars(parser.parse_args(new)) == vars(parser.parse_args(old))


def test_reproduce_takes_its_data_from_a_preset_that_names_it(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr("privatenet.app.protocol.plan", lambda config, out: seen.append(config))
    monkeypatch.setattr("privatenet.app.summaries.plan_text", lambda p: "")
    assert main(["reproduce", "--preset", "demo", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    assert str(seen[0].data).startswith("synthfaces:n=3000")
    for argv in (["--preset", "paper"], []):  # the paper's data is the user's to give
        assert main(["reproduce", *argv, "--dry-run", "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert "reproduce needs --data" in err and len(err.strip().splitlines()) == 1


def test_training_options_are_made_from_the_train_config_declaration():
    from dataclasses import fields

    from privatenet.cli import OPTIM, SPEED, build_parser
    from privatenet.options import given, options, subparsers
    from privatenet.train.config import TrainConfig

    commands = subparsers(build_parser())
    declared = {f.name: f for f in fields(TrainConfig)}
    train, attack = options(commands["train"]), options(commands["attack"])
    for name in OPTIM + SPEED:
        dest = f"no_{name}" if declared[name].default is True else name
        help = declared[name].metadata["help"].replace("%", "%%")
        assert help in train[dest].help and help in attack.get(dest, train[dest]).help
        assert train[dest].choices == declared[name].metadata.get("choices")
    assert train["epochs"].default == TrainConfig.epochs == 10
    assert attack["batch_size"].default == 128 != TrainConfig.batch_size  # its own default
    assert train["precision"].default is None  # unset: the library's auto
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--no-augment",
                                      "--lr", "0.01", "--precision", "fp32"])
    config = TrainConfig(**given(args, TrainConfig, OPTIM + SPEED))
    assert (config.augment, config.lr, config.precision, config.batch_size) == (
        False, 0.01, "fp32", 64)


def test_reproduce_options_are_made_from_the_protocol_declaration(tmp_path, monkeypatch):
    from dataclasses import fields

    from privatenet.app.protocol import ProtocolConfig
    from privatenet.cli import build_parser
    from privatenet.options import options, subparsers

    opts = options(subparsers(build_parser())["reproduce"])
    declared = {f.name: f for f in fields(ProtocolConfig)}
    for name in [f.name for f in fields(ProtocolConfig) if "help" in f.metadata]:
        f = declared[name]
        flag = f.metadata.get("flag", f"--{name.replace('_', '-')}")
        action = next(a for a in opts.values() if flag in a.option_strings)
        assert f.metadata["help"].replace("%", "%%") in action.help and action.default is None
        assert action.choices == f.metadata.get("choices")
    seen = []
    monkeypatch.setattr("privatenet.app.protocol.plan", lambda config, out: seen.append(config))
    monkeypatch.setattr("privatenet.app.summaries.plan_text", lambda p: "")
    assert main(["reproduce", "--preset", "smoke", "--data", "synthfaces:n=40,size=32",
                 "--defences", "vib,leace", "--lambdas", "0,0.5", "--taps", "backbone",
                 "--private", "age", "--bottleneck-channels", "8", "--adversary-update",
                 "alternating", "--epochs", "2", "--privacy-epochs", "3", "--precision", "fp32",
                 "--dry-run", "--out", str(tmp_path / "r")]) == 0
    c = seen[0]
    assert (c.losses, c.lambdas, c.taps, c.private, c.vib_channels, c.adversarial_update) == (
        ["vib", "leace"], [0.0, 0.5], ["backbone"], ["age"], 8, "alternating")
    assert (c.train.epochs, c.privacy_epochs, c.train.precision, c.model) == (
        2, 3, "fp32", "small_cnn")  # the rest from the smoke preset
