"""The target rule of benchmarks/privacy_bench.py (the benchmark itself is a script)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "privacy_bench.py"
spec = importlib.util.spec_from_file_location("privacy_bench", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _row(name, utility_counts, leakage, n=600):
    mean = sum(utility_counts) / len(utility_counts) / n
    return {"defence": name, "utility": {"mean": mean}, "audit_leakage": {"mean": leakage}}


def test_exactly_one_point_below_the_original_counts_as_within_one_point():
    original = {"mean": sum([419, 392, 393]) / 3 / 600}
    rows = [_row("confusion", [427, 401, 403], 0.6),
            _row("hsic+leace", [405, 397, 384], 0.04),  # exactly 1.00 point below
            _row("leace", [399, 377, 394], 0.01)]  # 1.89 points below: not eligible
    t = bench.target(rows, original)
    assert t["best"] == "hsic+leace" and t["met"] and t["limit"] == 0.3


def test_a_missed_target_says_so():
    original = {"mean": 0.7}
    rows = [_row("confusion", [420], 0.6), _row("ensemble", [420], 0.5)]
    t = bench.target(rows, original)
    assert t["best"] == "ensemble" and not t["met"]
