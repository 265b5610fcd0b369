"""examples/own_loop.py, the README's library example, runs on tiny data: a torchvision model
that is not in the registry, a plain loop, a known adversary, the confusion loss and the leakage
report, with none of privatenet's data containers or training loop."""

import importlib.util
from pathlib import Path

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
    for r in report.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 16
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert report["utility"]["chance"] == 1 / 3 and report["known adversary"]["chance"] == 0.5
    assert "normalised" in capsys.readouterr().out
