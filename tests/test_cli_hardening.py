"""The CLI's handling of bad input: --config values checked like command-line values, one-line
argparse errors, library parameter names shown as flags, OS errors and Ctrl-C. Commands are
replaced by stubs, so nothing here trains or loads data."""

import math

import numpy as np
import pytest
from cli_helpers import fails as _fails

from privatenet import cli
from privatenet.cli import build_parser, main, to_flags
from privatenet.errors import PrivatenetError
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


# ---------------------------------------------------------------- parameter names to flags

def _sub(name):
    import argparse

    parser = build_parser()
    return next(a for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)).choices[name]


@pytest.mark.parametrize("message, expected", [
    ("pass resume=True to continue", "pass --resume to continue"),
    ("runs/a exists and resume=False.", "runs/a exists and no --resume."),
    ("image_size=224 gives a 7x7 map", "--image-size 224 gives a 7x7 map"),
    ("(image_size=64)", "(--image-size 64)"),
    ("give a smaller batch_size.", "give a smaller --batch-size."),
    ("init_from: no run here", "--init-from: no run here"),
    ("cache_dir='/a b/c' is a file", "--cache-dir '/a b/c' is a file"),
    ("seed=-5 is invalid", "--seed -5 is invalid"),
    ("the data of the run; seed it", "the data of the run; seed it"),
    ("/data/cache_dir/x.png and my_batch_size", "/data/cache_dir/x.png and my_batch_size"),
    ("image_size.png", "image_size.png"),
    ("use --batch-size", "use --batch-size"),
    ("num_classes=7, image_size=96", "num_classes=7, --image-size 96"),
    ('other data.spec ("synthfaces:n=600,seed=0", not "synthfaces:n=600,seed=7")',
     'other data.spec ("synthfaces:n=600,seed=0", not "synthfaces:n=600,seed=7")'),
])
def test_to_flags(message, expected):
    assert to_flags(message, _sub("train")) == expected


def test_to_flags_uses_the_subcommand_options():
    assert to_flags("lambdas=0,1 and private", _sub("reproduce")) == "--lambdas 0,1 and private"
    assert to_flags("init_from", _sub("attack")) == "init_from"  # attack has no --init-from


def test_library_errors_are_shown_with_flags(capsys, monkeypatch):
    _raising(monkeypatch, "train", PrivatenetError("runs/x is unfinished; pass resume=True "
                                                   "or choose another out (image_size=64)"))
    _fails(capsys, BASE, "pass --resume or", "(--image-size 64)")


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
