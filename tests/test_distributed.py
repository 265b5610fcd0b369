"""Training in two processes under torchrun (gloo on CPU): torch's own DDP, rank 0 writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import make_split
from ddp_worker import SETTINGS

from privatenet.cli import main
from privatenet.models import create_model
from privatenet.train.loop import fit

HERE = Path(__file__).parent


def _torchrun(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.distributed
def test_two_processes_end_with_identical_weights_close_to_one_process(tmp_path):
    done = _torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), cwd=HERE)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    torch.manual_seed(0)
    single = create_model("small_cnn", num_classes=3)
    alone = fit(model=single, train=make_split(n=96), target="emotion", **SETTINGS)
    shared = json.loads((tmp_path / "history0.json").read_text())
    assert len(shared) == len(alone) == SETTINGS["epochs"]
    # The same global batches; only batch-norm statistics differ (each process normalises its
    # half of a batch), so the curves are close, not equal.
    for a, b in zip(alone, shared, strict=True):
        assert abs(a["loss"] - b["loss"]) < 0.15
        assert abs(a["train_acc"] - b["train_acc"]) < 0.1
    assert shared[-1]["train_acc"] > 0.9


@pytest.mark.distributed
def test_train_command_under_torchrun_writes_once_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = ["-m", "privatenet", "train", "--data", "synthfaces:n=120,size=32", "--model",
           "small_cnn", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
           "--out", str(out)]
    done = _torchrun(*cmd, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("emotion on the test split") == 1  # rank 0 alone reports
    results = json.loads((out / "results.json").read_text())
    assert len(results["history"]) == 2
    assert sorted(p.name for p in (out / "train").glob("checkpoint-*.json")) == [
        "checkpoint-000000.json", "checkpoint-000001.json"]
    again = _torchrun(*cmd, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    refused = _torchrun(*cmd, cwd=tmp_path)  # a finished run without --resume
    assert refused.returncode != 0
    assert refused.stderr.count("privatenet: error:") == 1  # rank 0's, once
    assert "holds a finished train run" in refused.stderr


@pytest.mark.distributed
def test_reproduce_under_torchrun_trains_in_both_processes_and_caches(tmp_path):
    out = tmp_path / "rep"
    cmd = ["-m", "privatenet", "reproduce", "--preset", "smoke", "--data",
           "synthfaces:n=300,size=32", "--taps", "pool", "--private", "age",
           "--losses", "confusion,hsic", "--lambdas", "0,1", "--device", "cpu",
           "--out", str(out)]
    done = _torchrun(*cmd, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Table 2") == 1  # rank 0 alone prints the tables
    results = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in results["table2"]] == ["none", "confusion", "hsic"]
    assert all(r["audit"]["accuracy"] >= 0 for r in results["table2"])  # rank 0's audits
    again = _torchrun(*cmd, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[run]" not in again.stderr and "[cached] original" in again.stderr


@pytest.mark.distributed
def test_a_refusal_in_a_rank_0_stage_stops_every_process(tmp_path):
    # Rank 0's audit stage refuses its input while rank 1 waits for that stage; both must
    # stop with rank 0's one-line error, not hang.
    done = _torchrun(str(HERE / "ddp_refusal.py"), "reproduce", "--preset", "smoke", "--data",
                     "synthfaces:n=200,size=32", "--taps", "pool", "--private", "gender",
                     "--device", "cpu", "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("privatenet: error:") == 1
    assert "the audit stage refused its input" in done.stderr


def test_commands_that_run_in_one_process_are_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["data-info", "synthfaces:n=50,size=32"]) == 2
    err = capsys.readouterr().err
    assert "'data-info' runs in one process" in err and "train" in err
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("kind", ["alternating"])
def test_trained_adversaries_are_refused_with_several_processes(kind, monkeypatch):
    from privatenet.errors import PrivatenetError
    from privatenet.models import create_adversary
    from privatenet.models.taps import tap_shapes
    from privatenet.regularizer import PrivacyRegularizer
    from privatenet.train import distributed

    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    model = create_model("small_cnn", num_classes=3)
    adv = create_adversary("linear", tap_shape=tap_shapes(model, image_size=32)["pool"],
                           num_classes=2)
    reg = PrivacyRegularizer(adv, loss="adversarial", lam=0.5, update=kind)
    with pytest.raises(PrivatenetError, match="not supported with several processes"):
        fit(model=model, train=make_split(), target="emotion", regularizer=reg, tap="pool",
            private="gender", **SETTINGS)
