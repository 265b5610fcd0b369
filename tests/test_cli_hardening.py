"""The CLI's handling of bad input: --config values checked like command-line values, one-line
argparse errors, library parameter names shown as flags, OS errors and Ctrl-C. Commands are
replaced by stubs, so nothing here trains or loads data."""

import math

import numpy as np
import pytest
from cli_helpers import fails as _fails

from privatenet import cli, options
from privatenet.cli import build_parser, main
from privatenet.errors import PrivatenetError, SettingError
from privatenet.train.config import TrainConfig

BASE = ["train", "--data", "synthfaces", "--out", "runs/x"]


@pytest.fixture
def seen(monkeypatch):
    """Replace every command by a stub that records the parsed arguments."""
    calls = []

    def stub(args):
        calls.append(args)
        return 0

    for name in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, name, stub)
    return calls


def _raising(monkeypatch, command, exc):
    def stub(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, command, stub)


def _config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- --config values

@pytest.mark.parametrize("text, needles", [
    ("epochs: [1, 2]\n", ("epochs", "[1, 2]", "an integer")),
    ("epochs: 1.5\n", ("epochs", "1.5", "an integer")),
    ("epochs: many\n", ("epochs", "'many'", "an integer")),
    ("epochs: true\n", ("epochs", "an integer")),
    ("lr: {a: 1}\n", ("lr", "a number")),
    ("no_augment: 'yes'\n", ("no_augment", "true or false")),
    ("no-augment: 1\n", ("no-augment", "true or false")),
    ("model: nope\n", ("model", "'nope'", "small_cnn", "arm_resnet18")),
    ("target: [emotion]\n", ("target", "a string")),
    ("adversary_update: sometimes\n", ("adversary_update", "fixed", "alternating")),
])
def test_config_values_are_checked_at_load_time(capsys, tmp_path, seen, text, needles):
    _fails(capsys, ["--config", _config(tmp_path, text), *BASE], "c.yaml", *needles)
    assert not seen


def test_config_file_that_cannot_be_read(capsys, tmp_path, seen):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("target: \xe9motion\n".encode("latin-1"))
    _fails(capsys, ["--config", str(bad), *BASE], "latin1.yaml", "UTF-8")
    _fails(capsys, ["--config", str(tmp_path), *BASE], str(tmp_path), "directory")
    assert not seen


def test_unknown_config_key_is_one_line_with_the_valid_keys(capsys, tmp_path, seen):
    _fails(capsys, ["--config", _config(tmp_path, "epoch: 3\n"), *BASE],
           "c.yaml", "'epoch'", "did you mean 'epochs'", "batch_size")


def test_config_values_are_converted_and_the_command_line_wins(tmp_path, seen):
    cfg = _config(tmp_path, "epochs: '3'\nlr: 1e-3\nno-augment: true\nmodel: small_cnn\n"
                            "seed: 7\nimage_size:\n")
    assert main(["--config", cfg, *BASE, "--seed", "9"]) == 0
    args = seen[-1]
    assert args.epochs == 3 and type(args.epochs) is int
    assert args.lr == 1e-3 and type(args.lr) is float
    assert args.no_augment is True and args.model == "small_cnn"
    assert args.seed == 9 and args.image_size is None


def test_config_supplies_required_options(capsys, tmp_path, seen):
    cfg = _config(tmp_path, "data: synthfaces\nout: runs/a\nrun: runs/r\ntap: pool\n"
                            "private: gender\n")
    assert main(["--config", cfg, "train"]) == 0
    assert seen[-1].data == "synthfaces" and seen[-1].out == "runs/a"
    assert main(["--config", cfg, "attack"]) == 0
    assert (seen[-1].run, seen[-1].tap, seen[-1].private) == ("runs/r", "pool", "gender")
    assert main(["--config", cfg, "reproduce"]) == 0
    # an option neither gives stays required
    _fails(capsys, ["--config", _config(tmp_path, "out: runs/a\n"), "train"], "--data")
    _fails(capsys, ["train", "--out", "runs/a"], "--data")


# ---------------------------------------------------------------- argparse errors

@pytest.mark.parametrize("argv, needles", [
    (["train", "--model", "nope", "--data", "x", "--out", "y"],
     ("--model", "'nope'", "small_cnn", "privatenet train --help")),
    (["trian"], ("'trian'", "data-info")),
    (["train", "--data", "x", "--out", "y", "--epochs", "1.5"], ("--epochs", "'1.5'")),
    (["attack", "--run", "r", "--tap", "t", "--private", "p", "--out", "o", "--head", "x"],
     ("--head", "'x'", "mlp")),
    (["reproduce", "--data", "x", "--out", "y", "--preset", "huge"],
     ("--preset", "'huge'", "paper", "smoke")),
    (["data-info", "synthfaces", "--bogus"], ("--bogus",)),
    (["--config"], ("--config",)),
])
def test_argparse_errors_are_one_line(capsys, seen, argv, needles):
    _fails(capsys, argv, *needles)
    assert not seen


# ---------------------------------------------------------------- TrainConfig

@pytest.mark.parametrize("bad", [
    dict(epochs=1.5), dict(epochs=True), dict(epochs="3"), dict(epochs=[1, 2]),
    dict(batch_size=16.0), dict(eval_batch_size=0), dict(lr=math.nan), dict(lr=math.inf),
    dict(lr="0.1"), dict(lr=True), dict(weight_decay=-1.0), dict(lr_decay=math.nan),
    dict(seed=-5), dict(seed=2**32), dict(seed=10**23), dict(seed=1.0), dict(augment="no"),
    dict(device=0),
])
def test_train_config_checks_types_and_ranges(bad):
    (name, value), = bad.items()
    with pytest.raises(PrivatenetError, match=f"^{name}=") as e:
        TrainConfig(**{"device": "cpu", **bad})
    assert "\n" not in str(e.value)


def test_train_config_accepts_the_edges():
    assert TrainConfig(seed=2**32 - 1, device="cpu").seed == 2**32 - 1
    cfg = TrainConfig(epochs=np.int64(2), lr=np.float32(0.01), seed=0, lr_decay=1,
                      device="cpu")
    assert cfg.epochs == 2


@pytest.mark.parametrize("flag, value", [("--seed", "-5"), ("--seed", "100000000000000000000000"),
                                         ("--epochs", "0"), ("--lr", "nan")])
def test_bad_optimisation_value_is_refused_before_any_work(capsys, flag, value):
    # the data spec does not exist: the setting must be refused before it is looked at
    _fails(capsys, ["train", "--data", "rafdb:/nonexistent", "--out", "/nonexistent/o",
                    flag, value], f"{flag} {value} is invalid")


# ---------------------------------------------------------------- settings spelled as flags

def _sub(name):
    return options.subparsers(build_parser())[name]


@pytest.mark.parametrize("command, error, line", [
    ("train", SettingError("seed", -5, "is invalid; give ..."), "--seed -5 is invalid; give ..."),
    ("train", SettingError("image_size", 3, "is out of range"), "--image-size 3 is out of range"),
    ("train", SettingError("resume", False, ": runs/a holds a run"),
     "without --resume: runs/a holds a run"),
    ("train", SettingError("compile", True, "needs a compiler"), "--compile needs a compiler"),
    ("train", SettingError("tap", None, "is missing; ..."), "--tap is missing; ..."),
    ("train", SettingError("defence", "x", "is unknown"), "--defence x is unknown"),
    # a field whose option has another name: reproduce's vib_channels is --bottleneck-channels
    ("reproduce", SettingError("vib_channels", 0, "is invalid"), "--bottleneck-channels 0 is "
                                                                 "invalid"),
    # a setting the command has no option for keeps the library's spelling
    ("attack", SettingError("init_from", "x", "is bad"), "init_from='x' is bad"),
    # any other message is shown as it is: nothing is rewritten by pattern
    ("train", PrivatenetError("image_size=64 and batch_size"), "image_size=64 and batch_size"),
])
def test_a_refused_setting_is_spelled_with_the_commands_flag(command, error, line):
    assert options.error_line(error, _sub(command)) == line


def test_library_errors_are_shown_with_flags(capsys, monkeypatch):
    _raising(monkeypatch, "train", SettingError("resume", False, ": runs/x is unfinished"))
    _fails(capsys, BASE, "without --resume: runs/x is unfinished")


# ---------------------------------------------------------------- OS errors

@pytest.mark.parametrize("exc, line", [
    (PermissionError(13, "Permission denied", "/x/run"), "/x/run: Permission denied"),
    (OSError(28, "No space left on device", "/x/run/model.safetensors"),
     "/x/run/model.safetensors: No space left on device"),
    (IsADirectoryError(21, "Is a directory", "/x/d"), "/x/d: Is a directory"),
    (OSError(30, "Read-only file system"), "Read-only file system"),
])
def test_os_errors_are_one_line(capsys, monkeypatch, exc, line):
    _raising(monkeypatch, "train", exc)
    assert _fails(capsys, BASE) == f"privatenet: error: {line}"


# ---------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("argv, resume", [
    (BASE, True),
    (["attack", "--run", "r", "--tap", "t", "--private", "p", "--out", "o"], True),
    (["reproduce", "--data", "synthfaces", "--out", "o"], False),
    (["demo"], False),
])
def test_interrupt_advice_fits_the_command(capsys, monkeypatch, argv, resume):
    _raising(monkeypatch, argv[0], KeyboardInterrupt())
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rerun the same command" in err[0]
    assert ("--resume" in err[0]) == resume, err[0]
    if not resume:
        assert "finished stages are kept" in err[0]


def test_a_closed_pipe_is_not_an_error(monkeypatch, capsys):
    import privatenet.cli as cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "data-info", closed)
    assert cli.main(["data-info", "synthfaces"]) == 0
    assert capsys.readouterr().err == ""


def test_config_files_with_the_old_keys_of_renamed_options_still_load(tmp_path, seen):
    assert main(["--config", _config(tmp_path, "loss: hsic\n"), *BASE]) == 0
    assert seen[-1].defence == "hsic"
    cfg = _config(tmp_path, "losses: vib,leace\nadversarial_update: alternating\n")
    assert main(["--config", cfg, "reproduce", "--data", "d", "--out", "o"]) == 0
    assert (seen[-1].defences, seen[-1].adversary_update) == ("vib,leace", "alternating")
