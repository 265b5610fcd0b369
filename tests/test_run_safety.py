"""Runs never lose, mix or silently corrupt data: the red-team cases about output folders,
resume provenance and locks, each reproduced through the CLI or the jobs."""

import pytest
from cli_helpers import fails as _fails

from privatenet.cli import main

FAST = ["--model", "small_cnn", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "run.lock"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_helpers import write_manifest

    root = tmp_path_factory.mktemp("safety")
    csv = write_manifest(root / "a", seed=0)
    other = write_manifest(root / "b", seed=1)
    return csv, other


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    csv, _ = data
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", f"manifest:{csv}", *FAST, "--out", str(run)]) == 0
    return run


def test_a_failed_or_refused_command_leaves_a_finished_run_as_it_was(data, finished, capsys):
    csv, _ = data
    before = _snapshot(finished)
    # invalid input: refused before anything is written
    _fails(capsys, ["train", "--data", f"manifest:{csv}", "--model", "arm_small",
                    "--image-size", "8", "--out", str(finished)], "--image-size 8")
    # a refused resume with other settings
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--lr", "0.5", "--resume",
                    "--out", str(finished)], "finished", "settings")
    # another command's output folder
    _fails(capsys, ["reproduce", "--preset", "smoke", "--data", f"manifest:{csv}",
                    "--device", "cpu", "--out", str(finished)], "'train' run")
    _fails(capsys, ["attack", "--run", str(finished), "--tap", "pool", "--private", "gender",
                    *FAST[2:], "--out", str(finished)], "'train' run")
    # no --resume: a finished run is never redone or overwritten
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--out", str(finished)],
           "finished")
    assert _snapshot(finished) == before


def test_resume_of_a_finished_run_with_the_same_options_prints_its_results(data, finished,
                                                                           capsys):
    csv, _ = data
    before = _snapshot(finished)
    capsys.readouterr()
    assert main(["train", "--data", f"manifest:{csv}", *FAST, "--resume",
                 "--out", str(finished)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert _snapshot(finished) == before


def test_an_edited_and_rehashed_model_json_is_one_line_in_attack(finished, tmp_path, capsys):
    """model.json's meta_sha256 detects corruption, not edits: values edited and rehashed
    (a huge num_classes or image_size, a class list that does not fit) are refused with one
    line naming the file, before any data is loaded or any network built."""
    import json
    import shutil

    from privatenet.storage import _meta_digest

    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("run.lock"))
    meta = json.loads((run / "model.json").read_text())
    out = tmp_path / "atk"
    for change, needle in (({"module": {**meta["module"], "num_classes": 10**12}}, "outputs"),
                           ({"image_size": 10**6}, "'image_size' is 1000000"),
                           ({"classes": [*meta["classes"], "extra"]}, "classes")):
        edited = {**meta, **change}
        edited["meta_sha256"] = _meta_digest(edited)
        (run / "model.json").write_text(json.dumps(edited))
        _fails(capsys, ["attack", "--run", str(run), "--tap", "pool", "--private", "gender",
                        *FAST[2:], "--out", str(out)], "model.json", needle, "edited")
        assert not out.exists()


def test_empty_out_and_a_foreign_folder_are_refused(data, tmp_path, capsys):
    csv, _ = data
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--out", ""], "empty")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--out", str(mine)],
           "not a privatenet")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _killed_train(csv, out, **privacy):
    """A train job killed after its first epoch (of two)."""
    from privatenet.app.jobs import train_job
    from privatenet.data import load_dataset
    from privatenet.train.config import TrainConfig
    from privatenet.train.loop import Callbacks

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    with pytest.raises(Killed):
        train_job(data=load_dataset(f"manifest:{csv}"), out=out, model="small_cnn",
                  target="emotion", config=TrainConfig(epochs=2, batch_size=16, device="cpu"),
                  callbacks=Callbacks(on_epoch=kill), **privacy)


def test_resume_with_other_data_is_refused(data, tmp_path, capsys):
    csv, other = data
    out = tmp_path / "killed"
    _killed_train(csv, out)
    before = _snapshot(out)
    _fails(capsys, ["train", "--data", f"manifest:{other}", *FAST[:2], "--epochs", "2",
                    "--batch-size", "16", "--device", "cpu", "--resume", "--out", str(out)],
           "unfinished", "other data")
    assert _snapshot(out) == before
    # the same data resumes and finishes
    assert main(["train", "--data", f"manifest:{csv}", *FAST[:2], "--epochs", "2",
                 "--batch-size", "16", "--device", "cpu", "--resume", "--out", str(out)]) == 0


def test_attack_resume_with_another_network_and_privacy_resume_with_another_adversary(
        data, finished, tmp_path, capsys):
    csv, _ = data
    second = tmp_path / "second"
    assert main(["train", "--data", f"manifest:{csv}", *FAST, "--seed", "3",
                 "--out", str(second)]) == 0
    atk = tmp_path / "atk"
    attack = ["attack", "--tap", "pool", "--private", "gender", *FAST[2:], "--out", str(atk)]
    assert main([*attack, "--run", str(finished)]) == 0
    _fails(capsys, [*attack, "--run", str(second), "--resume"], "finished", "other network")

    atk2 = tmp_path / "atk2"
    assert main(["attack", "--run", str(second), "--tap", "pool", "--private", "gender",
                 *FAST[2:], "--out", str(atk2)]) == 0
    out = tmp_path / "private"
    privacy = {"loss": "confusion", "tap": "pool", "private": "gender", "lam": 0.5,
               "update": "fixed"}
    _killed_train(csv, out, privacy={**privacy, "adversary": str(atk)})
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST[:2], "--epochs", "2",
                    "--batch-size", "16", "--device", "cpu", "--loss", "confusion",
                    "--tap", "pool", "--private", "gender", "--adversary", str(atk2),
                    "--resume", "--out", str(out)], "other adversary")


def test_a_second_run_on_a_folder_in_use_fails_at_once(data, tmp_path, capsys):
    from privatenet.train.rundir import open_run

    csv, _ = data
    out = tmp_path / "busy"
    with open_run(out, kind="train", fingerprint={}, resume=False):
        _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--resume",
                        "--out", str(out)], "in use")


def test_target_equal_to_private_is_refused(data, finished, tmp_path, capsys):
    csv, _ = data
    _fails(capsys, ["train", "--data", f"manifest:{csv}", *FAST, "--target", "gender",
                    "--loss", "confusion", "--tap", "pool", "--private", "gender",
                    "--adversary", str(tmp_path), "--out", str(tmp_path / "x")], "task target")
    _fails(capsys, ["attack", "--run", str(finished), "--tap", "pool", "--private", "emotion",
                    *FAST[2:], "--out", str(tmp_path / "y")], "own task")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_corrupt_cached_stage_says_how_to_recompute_it(data, tmp_path, capsys):
    csv, _ = data
    out = tmp_path / "rep"
    argv = ["reproduce", "--preset", "smoke", "--data", f"manifest:{csv}", "--taps", "pool",
            "--private", "gender", "--losses", "confusion", "--lambdas", "0",
            "--attacker-share", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    stage = next((out / "stages").glob("original-*"))
    (stage / "results.json").write_text("{ not json")
    _fails(capsys, argv, "delete the stage folder", "original-")


def test_attack_finds_a_relative_manifest_of_the_run_from_another_folder(tmp_path, monkeypatch,
                                                                         capsys):
    from data_helpers import write_manifest

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    write_manifest(tmp_path / "a" / "d")
    assert main(["train", "--data", "manifest:d/faces.csv", *FAST, "--out", "run"]) == 0
    monkeypatch.chdir(tmp_path / "b")  # the run's relative spec was stored as an absolute path
    assert main(["attack", "--run", "../a/run", "--tap", "pool", "--private", "gender",
                 *FAST[2:], "--out", "atk"]) == 0
    assert "normalised leakage" in capsys.readouterr().out


def _reproduce(csv, out, *more):
    return ["reproduce", "--preset", "smoke", "--data", f"manifest:{csv}", "--device", "cpu",
            *more, "--out", str(out)]


def test_a_data_set_without_the_train_split_is_one_line_and_leaves_no_folder(
        make_manifest, tmp_path, capsys):
    csv = make_manifest(tmp_path / "d", n_train=6, n_test=6, splits=("test", "test"))
    out = tmp_path / "r"
    for argv in (_reproduce(csv, out), _reproduce(csv, out, "--dry-run"),
                 ["train", "--data", f"manifest:{csv}", *FAST, "--out", str(out)]):
        _fails(capsys, argv, "faces.csv", "no 'train' split", "it has: test")
        assert not out.exists()


def test_reproduce_refuses_bad_lists_taps_and_columns_before_its_folder_exists(data, tmp_path,
                                                                               capsys):
    csv, _ = data
    out = tmp_path / "r"
    for option, value, needle in (
            ("--lambdas", "0,1.5", "lambdas list holds 1.5"), ("--lambdas", ",", "empty"),
            ("--taps", ",", "empty"), ("--private", ",", "empty"), ("--losses", ",", "empty"),
            ("--lambdas", "0,0.0", "twice"), ("--taps", "pool,pool", "twice"),
            ("--private", "age,age", "twice"), ("--losses", "leace,leace", "twice"),
            ("--taps", "arm", "no tap 'arm'"), ("--private", "race", "'race'"),
            ("--target", "mood", "'mood'"), ("--attacker-share", "0.9", "0..0.5"),
            ("--bottleneck-channels", "0", "--bottleneck-channels 0 is invalid"),
            # 40 train rows: a fifth of them is too few for an audit's attacker
            ("--attacker-share", "0.2", "--attacker-share 0.2 leaves too few rows")):
        _fails(capsys, _reproduce(csv, out, option, value), needle)
        assert not out.exists()


def test_seed_counts_are_bounded_and_checked_before_anything_runs(data, finished, tmp_path,
                                                                  capsys):
    csv, _ = data
    out = tmp_path / "r"
    _fails(capsys, _reproduce(csv, out, "--seeds", "101", "--dry-run"), "--seeds 101", "1..100")
    _fails(capsys, _reproduce(csv, out, "--seeds", "1000000", "--dry-run"), "1..100")
    _fails(capsys, ["audit", "--run", str(finished), "--tap", "pool", "--private", "gender",
                    "--seeds", "1000000000", "--out", str(out)], "--seeds 1000000000", "1..100")
    assert not out.exists()


def test_a_cache_dir_in_or_around_a_run_folder_is_refused_up_front(data, finished, tmp_path,
                                                                   capsys):
    csv, _ = data
    out = tmp_path / "r"
    fix = "~/.cache/privatenet"
    for cache, needle in ((out, "is the output folder"), (out / "c", "inside the output"),
                          (tmp_path, "contains the output folder")):
        _fails(capsys, _reproduce(csv, out, "--cache-dir", str(cache)), "--cache-dir", needle,
               fix)
        assert not out.exists()
    before = _snapshot(finished)
    inside = finished / "cache"
    audit = ["audit", "--run", str(finished), "--tap", "pool", "--private", "gender"]
    for argv, needle in (
            ([*audit, "--cache-dir", str(out), "--out", str(out)], "is the output folder"),
            ([*audit, "--cache-dir", str(inside), "--out", str(out)], "run folder"),
            (["train", "--data", f"manifest:{csv}", *FAST, "--cache-dir", str(inside),
              "--out", str(out)], "run folder"),
            (["train", "--data", f"manifest:{csv}", *FAST, "--cache-dir", str(out),
              "--out", str(out)], "is the output folder"),
            (["attack", "--run", str(finished), "--tap", "pool", "--private", "gender",
              *FAST[2:], "--data", f"manifest:{csv}", "--cache-dir", str(out / "c"),
              "--out", str(out)], "inside the output"),
            (["import-checkpoint", str(tmp_path / "none.pth"), "--data", f"manifest:{csv}",
              "--cache-dir", str(out), "--out", str(out)], "is the output folder"),
            (["attack", "--run", str(finished), "--tap", "pool", "--private", "gender",
              *FAST[2:], "--data", f"manifest:{csv}", "--cache-dir", str(finished),
              "--out", str(out)], "run folder"),
            (["import-checkpoint", str(tmp_path / "none.pth"), "--data", f"manifest:{csv}",
              "--cache-dir", str(inside), "--out", str(out)], "run folder"),
            (["export", "--run", str(finished), "--tap", "pool", "--data", f"manifest:{csv}",
              "--cache-dir", str(inside), "--out", str(out)], "run folder")):
        _fails(capsys, argv, "--cache-dir", needle, fix)
        assert not out.exists()
    assert _snapshot(finished) == before
