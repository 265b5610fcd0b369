"""Defects of the red-team (issue 15) that live in the command line's own handling: each case is
one line on stderr, exit 2, nothing written. Numbers refer to the issue's list."""

import logging
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import fails
from PIL import Image

from privatenet import cli
from privatenet.cli import main
from privatenet.data.cache import decode_images
from privatenet.errors import PrivatenetError, SettingError
from privatenet.train import distributed
from privatenet.train.config import TrainConfig, check_compiler

TRAIN = ["train", "--data", "synthfaces:n=20,size=32", "--model", "small_cnn", "--epochs", "1"]


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any data set is loaded: the checks must come first."""
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    # every load_dataset call of the package ends in this loader (the data here is synthfaces)
    monkeypatch.setattr("privatenet.data.load.synthfaces_from_spec", load)


# 12: a privacy weight without a privacy loss, or out of range, before any image is decoded
@pytest.mark.parametrize("extra, needles", [
    (["--lam", "2"], ("--lam", "--defence")),
    (["--lam", "nan"], ("--lam", "--defence")),
    (["--adversary-update", "alternating"], ("--adversary-update", "--defence")),
    (["--loss", "hsic", "--tap", "pool", "--private", "gender", "--lam", "2"],
     ("--lam 2.0", "outside [0, 1]")),
    (["--loss", "hsic", "--tap", "pool", "--private", "gender", "--lam", "nan"],
     ("--lam nan", "outside [0, 1]")),
])
def test_lambda_is_checked_before_the_data(capsys, tmp_path, no_decoding, extra, needles):
    out = tmp_path / "run"
    fails(capsys, [*TRAIN, "--out", str(out), *extra], *needles)
    assert not out.exists()


# 13: torch.compile without a working C++ compiler
def test_compile_without_a_compiler_is_refused_up_front(monkeypatch):
    pytest.importorskip("torch._inductor.cpp_builder")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr("torch._inductor.config.cpp.cxx", (None, "/nonexistent/c++"))
    check_compiler.cache_clear()
    try:
        with pytest.raises(PrivatenetError, match="compile=True needs a working C\\+\\+ compiler"):
            TrainConfig(compile=True)
        TrainConfig(compile=False)  # not compiling needs no compiler
    finally:
        check_compiler.cache_clear()


def test_compile_without_a_compiler_on_the_command_line(capsys, tmp_path, monkeypatch,
                                                        no_decoding):
    monkeypatch.setattr("privatenet.train.config.check_compiler", _refuse_compile)
    out = tmp_path / "run"
    fails(capsys, [*TRAIN, "--out", str(out), "--compile"], "--compile", "C++ compiler")
    assert not out.exists()


def _refuse_compile():
    raise SettingError("compile", True, "needs a working C++ compiler for torch.compile (none)")


# 13, 14: torch's own failures that a user can mend become one line with the fix
@pytest.mark.parametrize("exc, needles", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 824633720832 bytes.\nmore"),
     ("out of memory", "--batch-size", "--resume")),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
     ("out of memory", "--batch-size")),
])
def test_out_of_memory_is_one_line_with_what_to_lower(capsys, monkeypatch, exc, needles):
    monkeypatch.setitem(cli.COMMANDS, "train", _raiser(exc))
    fails(capsys, [*TRAIN, "--out", "x"], *needles)


def test_a_failed_compile_is_one_line(capsys, monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    exc = BackendCompilerFailed.__new__(BackendCompilerFailed)
    RuntimeError.__init__(exc, "backend='inductor' raised:\nInvalidCxxCompiler: no compiler")
    monkeypatch.setitem(cli.COMMANDS, "train", _raiser(exc))
    fails(capsys, [*TRAIN, "--out", "x"], "torch.compile failed", "--compile")


def test_other_runtime_errors_stay_tracebacks(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "train", _raiser(RuntimeError("a bug of ours")))
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main([*TRAIN, "--out", "x"])


def _raiser(exc):
    def command(args):
        raise exc
    return command


# 15: torchrun's environment variables, read once and checked
@pytest.mark.parametrize("env, needles", [
    ({"WORLD_SIZE": "abc"}, ("WORLD_SIZE='abc'", "unset")),
    ({"WORLD_SIZE": "0"}, ("WORLD_SIZE='0'",)),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, ("RANK='-1'",)),
    ({"WORLD_SIZE": "2", "RANK": "2"}, ("RANK=2", "WORLD_SIZE=2")),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, ("LOCAL_RANK='x'",)),
])
def test_bad_distributed_environment_is_one_line(capsys, monkeypatch, env, needles):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fails(capsys, ["data-info", "synthfaces:n=20,size=32"], *needles)


def test_launched_reads_the_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched() == (0, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched() == (3, 1, 4)


# 21: under torchrun, a refusal before any process group exists is printed by rank 0 only
@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_one_process_refusal_prints_on_rank_0_only(capsys, monkeypatch, rank, lines):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["data-info", "synthfaces:n=20,size=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == lines
    assert not torch.distributed.is_initialized()


# 17: decoder chatter (Python warnings, libtiff on file descriptor 2) stays off the terminal
def test_decoder_warnings_do_not_reach_the_terminal(tmp_path, capfd, caplog):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(good)

    def noisy_open(path, *args, **kwargs):
        import os
        os.write(2, b"tempfile.tif: Using code not yet in table.\n")  # what libtiff does
        warnings.warn("Truncated File Read", UserWarning, stacklevel=1)
        return real_open(path, *args, **kwargs)

    real_open = Image.open
    with pytest.MonkeyPatch.context() as m:
        m.setattr("privatenet.data.cache.Image.open", noisy_open)
        with caplog.at_level("INFO", logger="privatenet"):
            images = decode_images([good, good], image_size=None)
    assert images.shape == (2, 3, 16, 16)
    captured = capfd.readouterr()
    assert "Using code not yet in table" not in captured.err + captured.out
    assert "Truncated File Read" not in captured.err + captured.out
    assert any("decoders reported" in r.getMessage() for r in caplog.records)


def test_other_packages_warnings_are_hidden_unless_verbose(capsys, monkeypatch):
    def command(args):
        warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)
        raise PrivatenetError("the one line")

    monkeypatch.setitem(cli.COMMANDS, "data-info", command)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Python's own printer (pytest would otherwise record the warning itself)
        warnings.showwarning = warnings._showwarning_orig
        fails(capsys, ["data-info", "synthfaces"], "the one line")  # exactly one line
        assert main(["-v", "data-info", "synthfaces"]) == 2
    # with -v the warnings are logged (pytest holds the root logger's output here)
    assert logging.getLogger("py.warnings").getEffectiveLevel() == logging.INFO


# 19: a data spec's own options are not command-line flags
def test_spec_options_are_not_rewritten_as_flags(capsys, tmp_path):
    line = fails(capsys, [*TRAIN[:2], "synthfaces:n=20,seed=0,bogus=1", *TRAIN[3:],
                          "--out", str(tmp_path / "r")], "bogus=1")
    assert "--seed" not in line and "seed=0" in line
    line = fails(capsys, [*TRAIN[:2], "synthfaces:n=20,seed=-1", *TRAIN[3:],
                          "--out", str(tmp_path / "r")], "synthfaces:seed=-1")
    assert "--seed" not in line


def test_library_seed_is_still_shown_as_the_flag(capsys, tmp_path):
    fails(capsys, [*TRAIN, "--out", str(tmp_path / "r"), "--seed", "-3"], "--seed -3")


