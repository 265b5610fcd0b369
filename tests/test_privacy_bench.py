"""The target rule of benchmarks/privacy_bench.py (the benchmark itself is a script)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "privacy_bench.py"
spec = importlib.util.spec_from_file_location("privacy_bench", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _row(name, vs_control, gap):
    return {"defence": name, "vs_control": {"mean": vs_control}, "gap": {"mean": gap}}


CONTROL = _row(bench.CONTROL, 0.0, 0.5)


def test_the_rule_uses_the_control_and_no_slack():
    rows = [CONTROL, _row("confusion", -0.002, 0.6),
            _row("hsic+leace", -0.0101, 0.04),  # just over 1 point below the control: out
            _row("leace", -0.0099, 0.25)]  # just under: eligible
    t = bench.target(rows)
    assert t["best"] == "leace" and t["met"] and t["limit"] == 0.3


def test_a_missed_target_says_so_with_the_best_eligible_defence():
    rows = [CONTROL, _row("confusion", 0.0, 0.6), _row("ensemble", 0.01, 0.5),
            _row("hsic", -0.05, 0.0)]  # hsic holds, but costs 5 points: not eligible
    t = bench.target(rows)
    assert t["best"] == "ensemble" and not t["met"]


def test_no_eligible_defence_is_a_missed_target():
    t = bench.target([CONTROL, _row("confusion", 0.0, 0.6), _row("leace", -0.2, 0.0)])
    assert t["best"] is None and not t["met"]


def test_paired_interval_brackets_a_known_difference():
    import numpy as np

    rng = np.random.default_rng(0)
    control = [(rng.random(500) < 0.6).astype(float) for _ in range(3)]
    better = [np.maximum(c, (rng.random(500) < 0.5).astype(float)) for c in control]
    lo, hi = bench.paired_interval(better, control)
    diff = np.mean([b.mean() - c.mean() for b, c in zip(better, control, strict=True)])
    assert lo < diff < hi and lo > 0  # every change is an improvement: the interval is > 0
    same = bench.paired_interval(control, control)
    assert same == [0.0, 0.0]
