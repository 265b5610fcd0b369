import errno
import json
import os
import signal
import time

import pytest

from privatenet.errors import PrivatenetError
from privatenet.train import rundir
from privatenet.train.rundir import open_run, run_job

FP = {"data": "synthfaces:n=40", "init": None, "adversary": None,
      "settings": {"epochs": 2, "lr": 0.001}}


def _snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(path, match, **kwargs):
    """Assert that a claim of ``path`` is refused with a one-line message, touching nothing."""
    before = _snapshot(path) if path.is_dir() else None
    kwargs = {"kind": "train", "fingerprint": FP, "resume": False, **kwargs}
    with pytest.raises(PrivatenetError, match=match) as e:
        with open_run(path, **kwargs):
            pass
    assert "\n" not in str(e.value)
    if before is not None:
        assert _snapshot(path) == before
    return str(e.value)


def _finished_run(path, fingerprint=FP):
    with open_run(path, kind="train", fingerprint=fingerprint, resume=False) as run:
        (path / "results.json").write_text(json.dumps({"accuracy": 0.9}))
        assert run.finished


def _unfinished_run(path, fingerprint=FP):
    with open_run(path, kind="train", fingerprint=fingerprint, resume=False) as run:
        (path / "config.yaml").write_text("epochs: 2\n")
        assert not run.finished


def test_new_folder_is_created_and_marked(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with open_run(out, kind="train", fingerprint=FP, resume=False) as run:
        assert run.created and not run.finished and run.path == out
        marker = json.loads((out / "run.json").read_text())
        assert marker["kind"] == "train" and marker["fingerprint"] == FP
        assert marker["created"] and marker["privatenet"]
        assert (out / "run.lock").read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "run.lock"]


def test_existing_empty_folder_and_resume_on_a_new_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with open_run(tmp_path / "empty", kind="attack", fingerprint=FP, resume=False) as run:
        assert run.created
    # resume=True on a folder that never held a run starts one.
    with open_run(tmp_path / "new", kind="attack", fingerprint=FP, resume=True) as run:
        assert run.created


def test_empty_path_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("", "  "):
        with pytest.raises(PrivatenetError, match="path is empty"):
            with open_run(path, kind="train", fingerprint=FP, resume=False):
                pass
    assert list(tmp_path.iterdir()) == []


def test_folder_that_is_not_a_run_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    msg = _refused(tmp_path, "not a privatenet train run folder")
    assert "notes.txt" in msg and "empty or new folder" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock file either
    (tmp_path / "file").write_text("x")
    _refused(tmp_path / "file", "is a file, not a folder")


def test_finished_train_run_is_not_a_reproduce_folder(tmp_path):
    # `reproduce --out <a finished train run>` must not replace that run's files.
    _finished_run(tmp_path)
    msg = _refused(tmp_path, "'train' run, not a 'reproduce' run", kind="reproduce",
                   fingerprint=None, resume=True)
    assert str(tmp_path) in msg


def test_existing_run_without_resume_is_refused(tmp_path):
    _unfinished_run(tmp_path / "u")
    _refused(tmp_path / "u", r"holds an unfinished train run; pass resume=True")
    _finished_run(tmp_path / "f")
    _refused(tmp_path / "f", "holds a finished train run; choose another folder")
    _refused(tmp_path / "f", "holds a finished train run", fingerprint=None)


@pytest.mark.parametrize("key", ["data", "init", "adversary", "settings"])
def test_resume_with_another_fingerprint_names_the_first_difference(tmp_path, key):
    _unfinished_run(tmp_path)
    # settings differs too, but it comes last: the message names `key`, the first difference.
    other = dict(FP, settings={"epochs": 99})
    other[key] = {"epochs": 3} if key == "settings" else "other"
    name = "settings.epochs" if key == "settings" else key  # nested keys as a dotted path
    msg = _refused(tmp_path, f"unfinished train run with other {name} ", fingerprint=other,
                   resume=True)
    assert "resume it with the same inputs" in msg


def test_difference_message_shows_both_values_shortened(tmp_path):
    _unfinished_run(tmp_path)
    long = "manifest:" + "x" * 500 + ".csv"
    msg = _refused(tmp_path, "other data", fingerprint=dict(FP, data=long), resume=True)
    assert '"synthfaces:n=40"' in msg and '"manifest:xxx' in msg and "..." in msg
    assert len(msg) < len(str(tmp_path)) + 250
    # A key only one of them has is a difference too.
    msg = _refused(tmp_path, "other seed", fingerprint=dict(FP, seed=1), resume=True)
    assert "(none), not 1" in msg


def test_resume_with_the_same_fingerprint(tmp_path):
    _unfinished_run(tmp_path)
    with open_run(tmp_path, kind="train", fingerprint=dict(FP), resume=True) as run:
        assert not run.created and not run.finished
    # Tuples compare equal to the lists the marker holds.
    fp = dict(FP, settings={"epochs": 2, "lr": 0.001}, taps=("a", "b"))
    _unfinished_run(tmp_path / "t", fingerprint=fp)
    with open_run(tmp_path / "t", kind="train", fingerprint=fp, resume=True):
        pass


def test_resume_of_a_finished_run(tmp_path):
    _finished_run(tmp_path)
    before = _snapshot(tmp_path)
    with open_run(tmp_path, kind="train", fingerprint=FP, resume=True) as run:
        assert run.finished and run.results() == {"accuracy": 0.9}
    assert {k: v for k, v in _snapshot(tmp_path).items() if k != "run.lock"} == \
        {k: v for k, v in before.items() if k != "run.lock"}
    msg = _refused(tmp_path, "holds a finished train run with other settings",
                   fingerprint=dict(FP, settings={"epochs": 5}), resume=True)
    assert msg.endswith("choose another folder")


def test_fingerprint_none_skips_the_comparison(tmp_path):
    with open_run(tmp_path, kind="reproduce", fingerprint={"preset": "demo"}, resume=False):
        pass
    with open_run(tmp_path, kind="reproduce", fingerprint=None, resume=True) as run:
        assert not run.created


def test_second_claim_in_the_same_process_fails_at_once(tmp_path):
    with open_run(tmp_path, kind="train", fingerprint=FP, resume=False):
        for resume in (False, True):
            msg = _refused(tmp_path, "in use by another privatenet run", resume=resume)
            assert f"(pid {os.getpid()})" in msg and "wait for it" in msg
    # Released at the end of the block, also when the block raises.
    with pytest.raises(RuntimeError):
        with open_run(tmp_path, kind="train", fingerprint=FP, resume=True):
            raise RuntimeError("training failed")
    with open_run(tmp_path, kind="train", fingerprint=FP, resume=True):
        pass
    assert (tmp_path / "run.lock").read_text() == ""


def _start_holder(path):
    """A child process (forked: no second torch import) that claims ``path`` and sleeps."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            with open_run(path, kind="train", fingerprint=FP, resume=False):
                (path / "config.yaml").write_text("epochs: 2\n")
                os.write(write, b"claimed")
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 16) == b"claimed"
    os.close(read)
    return pid


def test_second_process_fails_at_once_then_killed_run_resumes(tmp_path):
    out = tmp_path / "run"
    pid = _start_holder(out)
    try:
        t0 = time.monotonic()
        msg = _refused(out, "in use by another privatenet run", resume=True)
        assert time.monotonic() - t0 < 5 and f"(pid {pid})" in msg
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The kernel released the killed run's lock; its stale pid is not reported.
    _refused(out, "holds an unfinished train run; pass resume=True")
    with open_run(out, kind="train", fingerprint=FP, resume=True) as run:
        assert not run.created and (out / "config.yaml").exists()


def test_claim_killed_before_its_marker_can_be_claimed_again(tmp_path):
    (tmp_path / "run.lock").write_text("999999999\n")
    (tmp_path / ".run.json.abc123.tmp").write_text('{"ki')
    with open_run(tmp_path, kind="train", fingerprint=FP, resume=False) as run:
        assert run.created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.lock"]


def test_os_errors_are_one_line_errors_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    msg = _refused(tmp_path / "file" / "run", "cannot create or read run folder")
    assert str(tmp_path / "file" / "run") in msg

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rundir, "write_json", full_disk)
    msg = _refused(tmp_path / "full", "cannot write .*run.json")
    assert "free space" in msg


def test_corrupt_marker_is_a_one_line_error(tmp_path):
    (tmp_path / "run.json").write_text("[1]")
    _refused(tmp_path, "not a privatenet run marker")


def test_run_job_writes_config_then_results_last_and_returns_a_finished_run(tmp_path):
    calls = []

    def work(run):
        calls.append(run.path)
        assert (run.path / "config.yaml").exists() and not (run.path / "results.json").exists()
        return {"value": len(calls)}

    out = tmp_path / "job"
    first = run_job(out, kind="attack", fingerprint={"a": 1}, resume=False,
                    settings={"job": "attack"}, work=work)
    again = run_job(out, kind="attack", fingerprint={"a": 1}, resume=True,
                    settings={"job": "attack"}, work=work)
    assert first == again == {"value": 1} and len(calls) == 1  # finished: not redone

    def broken(run):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_job(tmp_path / "broken", kind="attack", fingerprint=None, resume=False,
                settings=None, work=broken)
    assert not (tmp_path / "broken" / "results.json").exists()  # an unfinished run
