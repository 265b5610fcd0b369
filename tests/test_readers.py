"""The bounded reader of every YAML and JSON file (privatenet.readers): regular files only, a
size limit, a nesting limit and, for YAML, a limit on the nodes after alias expansion. Each
refusal is one short line naming the file, also through the CLI and the run/checkpoint
readers; a deeply nested training checkpoint JSON falls back to the previous good one."""

import json
import logging
import os
import signal
import time

import pytest
import torch
from cli_helpers import fails

from privatenet import readers
from privatenet.errors import PrivatenetError
from privatenet.models.saving import load_module, save_module
from privatenet.readers import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_JSON_BYTES,
    MAX_YAML_NODES,
    brief,
    load_json,
    load_yaml,
    read_bytes,
    read_text,
)
from privatenet.storage import (
    load_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)
from privatenet.train.rundir import open_run

#: Far deeper than any recursion limit: json.loads raises RecursionError without the reader.
VERY_DEEP = 100_000
INFO = ["data-info", "synthfaces"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _deep_json(depth):
    return "[" * depth + "]" * depth


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


@pytest.fixture
def alarm():
    """Fail instead of hanging: a blocking call is interrupted after a few seconds."""
    def timeout(signum, frame):
        raise TimeoutError("blocked")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- the CLI's --config

def _billion_laughs(path, levels=9, width=9):
    """Each anchor a list of ``width`` aliases of the one before: width**levels nodes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"epochs: *a{levels}")
    return _write(path, "\n".join(lines) + "\n")


def test_billion_laughs_config_is_refused_at_once(capsys, tmp_path):
    path = _billion_laughs(tmp_path / "lol.yaml")
    start = time.perf_counter()
    line = fails(capsys, ["--config", str(path), *INFO], "lol.yaml",
                 f"more than {MAX_YAML_NODES} YAML nodes", "aliases")
    assert time.perf_counter() - start < 2 and len(line) < 300


@pytest.mark.parametrize("text", [
    "epochs: " + "[" * VERY_DEEP + "]" * VERY_DEEP + "\n",
    "".join(" " * i + f"k{i}:\n" for i in range(2 * MAX_DEPTH)),
], ids=["flow", "block"])
def test_deep_config_is_refused(capsys, tmp_path, text):
    path = _write(tmp_path / "deep.yaml", text)
    line = fails(capsys, ["--config", str(path), *INFO], "deep.yaml",
                 f"nested more than {MAX_DEPTH} levels")
    assert len(line) < 300


def test_special_config_files_are_refused_without_blocking(capsys, tmp_path, alarm):
    fails(capsys, ["--config", "/dev/zero", *INFO], "/dev/zero", "not a regular file")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    fails(capsys, ["--config", str(fifo), *INFO], "fifo.yaml", "FIFO", "not a regular file")
    fails(capsys, ["--config", str(tmp_path), *INFO], str(tmp_path), "directory")


def test_oversize_config_is_refused(capsys, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * MAX_CONFIG_BYTES + b"\n")
    line = fails(capsys, ["--config", str(path), *INFO], "big.yaml", "1 MiB")
    assert len(line) < 300


def test_quoted_config_values_are_cut(capsys, tmp_path):
    long = "x" * 100_000
    for text in (f"epochs: {long}\n", f"model: {long}\n", f"? {long}\n: 1\n",
                 "epochs: [&a " + json.dumps([long[:5000]] * 50) + ", *a, *a]\n"):
        line = fails(capsys, ["--config", str(_write(tmp_path / "c.yaml", text)), *INFO],
                     "c.yaml")
        assert len(line) < 1000 and "x" * 100 not in line and "xxx..." in line


# ---------------------------------------------------------------- run and checkpoint JSON

def test_deep_run_json_is_a_one_line_error(capsys, tmp_path):
    run = tmp_path / "run"
    fp = {"data": "synthfaces:n=40", "settings": {"epochs": 1}}
    with open_run(run, kind="train", fingerprint=fp, resume=False):
        pass
    _write(run / "run.json", _deep_json(VERY_DEEP))
    with pytest.raises(PrivatenetError, match="run.json: nested more than") as e:
        with open_run(run, kind="train", fingerprint=fp, resume=True):
            pass
    _one_line(e)
    fails(capsys, ["train", "--data", "synthfaces:n=40", "--model", "small_cnn", "--out",
                   str(run), "--resume"],
          "run.json", "nested more than")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, VERY_DEEP])
def test_deep_checkpoint_and_model_json_are_one_line_errors(tmp_path, depth):
    save_checkpoint(tmp_path / "ck", tensors={"w": torch.ones(2)}, meta={"epoch": 1})
    _write(tmp_path / "ck.json", _deep_json(depth))
    with pytest.raises(PrivatenetError, match="ck.json: nested more than") as e:
        load_checkpoint(tmp_path / "ck")
    _one_line(e)
    net = torch.nn.Linear(2, 2)
    net.config = {"name": "small_cnn"}
    save_module(tmp_path / "model", net, {"role": "model"})
    _write(tmp_path / "model.json", '{"module": ' + _deep_json(depth) + "}")
    with pytest.raises(PrivatenetError, match="model.json: nested more than"):
        load_module(tmp_path / "model")


def test_deep_export_json_is_a_one_line_error(tmp_path):
    from privatenet.video.classify import read_export

    _write(tmp_path / "export.json", '{"format": ' + _deep_json(VERY_DEEP) + "}")
    with pytest.raises(PrivatenetError, match="export.json: nested more than") as e:
        read_export(tmp_path)
    _one_line(e)


def test_deep_newest_training_checkpoint_falls_back(tmp_path, caplog):
    for epoch in range(3):
        save_training_checkpoint(tmp_path, tensors={"w": torch.full((2,), float(epoch))},
                                 meta={"epoch": epoch, "history": [{"epoch": epoch + 1}]})
    _write(tmp_path / "checkpoint-000002.json",
           '{"epoch": 2, "history": ' + _deep_json(VERY_DEEP) + "}")
    with caplog.at_level(logging.WARNING, logger="privatenet.storage"):
        tensors, meta = load_training_checkpoint(tmp_path)
    assert meta["epoch"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-000002" in warning and "nested more than" in warning
    assert "fell back" in warning and len(warning) < 1000


# ---------------------------------------------------------------- the limits themselves

def test_size_limit_exactly_at_and_one_past(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b'"' + b"a" * 98 + b'"')
    assert read_bytes(path, limit=100) == path.read_bytes()
    assert load_json(path, limit=100) == "a" * 98
    with pytest.raises(PrivatenetError, match="larger than the limit of 99 bytes") as e:
        load_json(path, limit=99)
    assert "aaa" not in _one_line(e)
    big = tmp_path / "c.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES - 1) + b"\n")
    assert len(read_text(big, limit=MAX_CONFIG_BYTES)) == MAX_CONFIG_BYTES
    with pytest.raises(PrivatenetError, match="larger than the limit"):
        read_text(big, limit=MAX_CONFIG_BYTES - 1)


def test_default_limits():
    import inspect

    assert MAX_CONFIG_BYTES == 1 << 20 and MAX_JSON_BYTES == 64 << 20
    assert inspect.signature(load_json).parameters["limit"].default == MAX_JSON_BYTES
    assert inspect.signature(load_yaml).parameters["limit"].default == MAX_CONFIG_BYTES
    assert inspect.signature(load_yaml).parameters["max_nodes"].default == MAX_YAML_NODES


@pytest.mark.parametrize("open_, close", [("[", "]"), ('{"k": ', "}")])
def test_json_depth_exactly_at_and_one_past(tmp_path, open_, close):
    path = _write(tmp_path / "d.json", open_ * MAX_DEPTH + "1" + close * MAX_DEPTH)
    load_json(path)
    _write(path, open_ * (MAX_DEPTH + 1) + "1" + close * (MAX_DEPTH + 1))
    with pytest.raises(PrivatenetError, match=f"nested more than {MAX_DEPTH} levels"):
        load_json(path)
    assert load_json(path, max_depth=MAX_DEPTH + 1) is not None


def test_yaml_depth_exactly_at_and_one_past(tmp_path):
    path = _write(tmp_path / "d.yaml", "[" * MAX_DEPTH + "]" * MAX_DEPTH)
    load_yaml(path)
    _write(path, "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH)) + " " * MAX_DEPTH + "1\n")
    load_yaml(path)
    for text in ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
                 "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 1))
                 + " " * (MAX_DEPTH + 1) + "1\n"):
        _write(path, text)
        with pytest.raises(PrivatenetError, match=f"nested more than {MAX_DEPTH} levels"):
            load_yaml(path)


def test_yaml_alias_reaches_its_anchors_depth(tmp_path):
    # Root list (level 1) holding an anchored nest of MAX_DEPTH - 1 levels: MAX_DEPTH in all.
    nest = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    path = _write(tmp_path / "a.yaml", f"[&x {nest}, *x]")
    assert len(load_yaml(path)) == 2
    _write(path, f"[&x {nest}, [*x]]")  # the alias one level further down: one past
    with pytest.raises(PrivatenetError, match=f"nested more than {MAX_DEPTH} levels"):
        load_yaml(path)


def _aliased(nodes):
    """A YAML list of exactly ``nodes`` nodes once expanded: the root, an anchored list of 10
    nodes, aliases of it and single scalars."""
    reps, rest = divmod(nodes - 1, 10)
    items = ["&a [" + ", ".join("123456789") + "]"] + ["*a"] * (reps - 1) + ["0"] * rest
    return "[" + ", ".join(items) + "]\n"


def _nodes(value):
    """Nodes of a composed YAML value, every alias expanded."""
    return 1 + (sum(_nodes(v) for v in value) if isinstance(value, list) else 0)


def test_yaml_node_limit_exactly_at_and_one_past(tmp_path):
    path = _write(tmp_path / "n.yaml", _aliased(MAX_YAML_NODES))
    assert _nodes(load_yaml(path)) == MAX_YAML_NODES
    _write(path, _aliased(MAX_YAML_NODES + 1))
    with pytest.raises(PrivatenetError, match=f"more than {MAX_YAML_NODES} YAML nodes"):
        load_yaml(path)
    assert _nodes(load_yaml(path, max_nodes=MAX_YAML_NODES + 1)) == MAX_YAML_NODES + 1


def test_yaml_alias_to_its_own_container_is_refused(tmp_path):
    with pytest.raises(PrivatenetError, match="alias \\*x refers to a node that contains it"):
        load_yaml(_write(tmp_path / "r.yaml", "a: &x [1, *x]\n"))
    assert load_yaml(_write(tmp_path / "ok.yaml", "a: &x [1, 2]\nb: *x\n")) == \
        {"a": [1, 2], "b": [1, 2]}


def test_special_and_missing_files(tmp_path, alarm):
    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    for path, needle in ((fifo, "FIFO"), (tmp_path, "directory"),
                         ("/dev/zero", "character device"), (tmp_path / "no.json", "not found")):
        with pytest.raises(PrivatenetError, match=needle) as e:
            load_json(path)
        assert str(path) in _one_line(e)


def test_invalid_text_keeps_its_messages(tmp_path):
    with pytest.raises(PrivatenetError, match="not valid JSON .*the file is corrupt"):
        load_json(_write(tmp_path / "b.json", "{not json"))
    with pytest.raises(PrivatenetError, match="not valid YAML"):
        load_yaml(_write(tmp_path / "b.yaml", "a: [\n"))
    (tmp_path / "l.yaml").write_bytes(b"a: \xe9\n")
    with pytest.raises(PrivatenetError, match="not UTF-8 text \\(byte 3\\)"):
        load_yaml(tmp_path / "l.yaml")


def test_brief_is_bounded_without_a_full_repr():
    assert brief("nope") == "'nope'"
    assert len(brief("x" * 10**7)) <= 60 and len(brief([["y" * 10**6] * 10**6])) <= 60
    assert readers.brief([1, 2]) == "[1, 2]"
