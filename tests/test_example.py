"""examples/own_loop.py, the README's library example, runs on tiny data: a torchvision model
that is not in the registry, a plain loop, a known adversary, the confusion loss and the leakage
report, with none of privatenet's data containers or training loop."""

import importlib.util
from pathlib import Path

from data_helpers import check_report

from privatenet.data import load_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"


def test_own_loop_example_runs_and_reports_leakage(make_manifest, tmp_path, capsys):
    source = EXAMPLE.read_text()
    assert "privatenet.data" not in source and "load_dataset" not in source
    assert "pn.fit(" not in source  # the user's own loop, not ours
    spec = importlib.util.spec_from_file_location("own_loop", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    csv = make_manifest(tmp_path, n_train=40, n_test=16, size=32)
    report = example.main([str(csv), "--size", "32", "--epochs", "1"])
    assert set(report) == {"utility", "known adversary", "unknown adversary"}
    test = load_dataset(f"manifest:{csv}").splits["test"].labels  # what the example scored
    for name, r in report.items():
        column, k = ("emotion", 3) if name == "utility" else ("gender", 2)
        check_report(r, test[column], k)
    assert "normalised" in capsys.readouterr().out


def test_attach_example_runs_a_plain_loop_with_make_private(make_manifest,
                                                             tmp_path, capsys):
    path = EXAMPLE.parent / "attach.py"
    source = path.read_text()
    assert "pn.fit(" not in source and "adversary_step" not in source  # the hook does it
    spec = importlib.util.spec_from_file_location("attach", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    csv = make_manifest(tmp_path, n_train=40, n_test=16, size=32)
    report = example.main([str(csv), "--size", "32", "--epochs", "1"])
    test = load_dataset(f"manifest:{csv}").splits["test"].labels
    check_report(report["utility"], test["emotion"], 3)
    check_report(report["adversary trained alongside"], test["gender"], 2)
    assert "adversary trained alongside" in capsys.readouterr().out
