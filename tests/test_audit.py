"""The leakage audit: the worst case over the attacker zoo, choices never made on test, wide
inputs skipped with a reason, the description-length probe, and `privatenet audit`."""

import json

import numpy as np
import pytest

from privatenet.auditing import ZOOS, audit, online_codelength
from privatenet.cli import main
from privatenet.errors import PrivatenetError


def _data(n=400, signal=1.0, seed=0, shape=(8, 3, 3)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    x[:, 0] += signal * y.reshape(-1, *([1] * (len(shape) - 1)))
    return x[:300], y[:300], x[300:], y[300:]


def _fresh(xa, ya, xs, ys, **kwargs):
    return audit(attacker=(xa, ya), scoring=(xs, ys), **kwargs)


def test_worst_case_finds_the_leak_and_noise_stays_near_zero():
    xtr, ytr, xte, yte = _data(signal=1.5)
    rng = np.random.default_rng(1)
    result = _fresh(xtr, ytr, xte, yte, num_classes=2, seeds=2, zoo="quick",
                    controls={"noise": (rng.normal(size=(300, 5)), rng.normal(size=(100, 5)))})
    worst, attackers = result["worst"], result["attackers"].values()
    assert worst["leakage"] == max(max(a["normalized_leakage"], a["balanced_leakage"])
                                   for a in attackers)
    assert worst["normalized_leakage"] == max(a["normalized_leakage"] for a in attackers)
    assert worst["balanced_leakage"] == max(a["balanced_leakage"] for a in attackers)
    assert worst["leakage"] > 0.5
    assert result["controls"]["noise"]["worst"]["leakage"] < 0.3
    assert result["mdl"]["compression"] > 1.2
    assert result["controls"]["noise"]["mdl"]["compression"] < 1.1
    assert result["protocol"] == "fresh attacker rows" and not result["data_limited"]
    for report in attackers:
        assert len(report["seeds"]) == 2 and 0.5 < report["auroc"] <= 1.0
        assert report["balanced_leakage"] == pytest.approx(
            (report["balanced_accuracy"] - 0.5) / 0.5)


def test_choices_never_look_at_the_scoring_labels():
    xtr, ytr, xte, yte = _data(signal=0.6)
    a = _fresh(xtr, ytr, xte, yte, num_classes=2, mdl=False, zoo="quick", curve=())
    b = _fresh(xtr, ytr, xte, np.random.default_rng(5).permutation(yte), num_classes=2,
               mdl=False, zoo="quick", curve=())
    for name in a["attackers"]:
        assert a["attackers"][name]["seeds"][0]["chosen"] == \
            b["attackers"][name]["seeds"][0]["chosen"]


def test_cross_fitting_scores_each_row_by_attackers_that_never_saw_it(monkeypatch):
    from privatenet import auditing as module
    xtr, ytr, xte, yte = _data(n=200, signal=1.5)
    x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    seen = []
    real = module._sklearn_predictor

    def spying(name, num_classes, val_fraction):
        predict = real(name, num_classes, val_fraction)

        def wrapped(xa, ya, xs, seed):
            # the rows an attacker trains on and the rows it scores never overlap
            train_rows = {r.tobytes() for r in xa.reshape(len(xa), -1)}
            assert not any(r.tobytes() in train_rows for r in xs.reshape(len(xs), -1))
            seen.append(len(xs))
            return predict(xa, ya, xs, seed)
        return wrapped

    monkeypatch.setattr(module, "_sklearn_predictor", spying)
    result = audit(scoring=(x, y), num_classes=2, zoo="quick", folds=4, curve=(), mdl=False)
    assert result["protocol"] == "cross-fitted" and result["data_limited"]
    assert sum(seen) == len(ZOOS["quick"]) * len(y)  # every row scored once per attacker
    assert result["attackers"]["logistic"]["n"] == len(y)
    assert result["worst"]["leakage"] > 0.5


def test_an_eraser_fitted_on_few_wide_rows_is_caught_on_fresh_rows():
    """The review's finding: LEACE fitted on n < d defender rows equalises the class means on
    those rows by construction, so attackers trained on them read nothing; its direction is
    mostly noise, so attackers on rows it never saw still read the attribute."""
    import torch

    from privatenet.erasure import fit_eraser

    rng = np.random.default_rng(0)
    n_defender, n_fresh, d = 150, 300, 600
    y = rng.integers(0, 2, n_defender + n_fresh)
    direction = rng.normal(size=d)
    x = rng.normal(size=(len(y), d)) + np.outer(y - 0.5, direction) * (2.0 / np.sqrt(d)) * 3
    x = x.astype(np.float32)
    dx, dy = torch.from_numpy(x[:n_defender]), torch.from_numpy(y[:n_defender])
    eraser = fit_eraser(dx, dy, num_classes=2)  # the defence, fitted on defender rows only
    with torch.no_grad():
        erased = eraser(torch.from_numpy(x)).numpy()
    defender, fresh = (erased[:n_defender], y[:n_defender]), (erased[n_defender:], y[n_defender:])
    result = audit(scoring=fresh, in_sample=defender, num_classes=2, zoo="quick", curve=(),
                   mdl=False)
    # LEACE's in-sample guarantee: a linear attacker trained on the defender rows is blind
    assert result["in_sample"]["attackers"]["logistic"]["leakage"] < 0.15
    # on fresh rows the erasure barely holds: cross-fitted attackers read the attribute
    assert result["worst"]["leakage"] > 0.5
    assert result["attackers"]["logistic"]["leakage"] > 0.5


def test_a_rare_class_with_one_row_does_not_break_any_attacker():
    # An age group with a single test row: each family still fits on every fold (early
    # stopping, which needs a stratified hold-out, gives way to the full training budget).
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.integers(0, 4, 119), [4]])
    x = rng.normal(size=(120, 6)).astype(np.float32)
    x[:, 0] += y
    result = audit(scoring=(x, y), num_classes=5, zoo="full", curve=(0.5,), mdl=False)
    assert all("skipped" not in a for a in result["attackers"].values())
    assert result["attackers"]["boosted_trees"]["n"] == 120


def test_a_too_wide_input_is_skipped_with_a_reason_or_pooled():
    xtr, ytr, xte, yte = _data(shape=(1500,))
    result = _fresh(xtr, ytr, xte, yte, num_classes=2, mdl=False, zoo="quick", curve=())
    assert "1500 input dimensions" in result["attackers"]["boosted_trees"]["skipped"]
    assert result["worst"]["attacker"] in ("logistic", "knn")
    maps = _fresh(*_data(shape=(128, 3, 3)), num_classes=2, mdl=False, zoo="quick", curve=())
    assert maps["attackers"]["boosted_trees"]["input"] == "pooled"  # 1152 wide


def test_the_learning_curve_belongs_to_the_worst_attacker_and_flags_a_rise(monkeypatch):

    from privatenet import auditing as module
    xtr, ytr, xte, yte = _data(signal=0.8)
    result = _fresh(xtr, ytr, xte, yte, num_classes=2, mdl=False, zoo="quick")
    worst = result["worst"]
    assert list(worst["curve"]) == ["0.25", "0.5", "1"]
    assert worst["curve"]["1"] == pytest.approx(worst["leakage"])
    assert worst["still_rising"] == (worst["curve"]["1"] > worst["curve"]["0.5"])
    # the rule on constructed curves, not on observed ones
    scored = {"a": {**result["attackers"][worst["attacker"]],
                    "curve": {"0.25": 0.1, "0.5": 0.2, "1": 0.3}}}
    scored["a"].update(leakage=0.3)
    assert module._worst(scored)["still_rising"]
    scored["a"]["curve"] = {"0.25": 0.1, "0.5": 0.3, "1": 0.3}
    assert not module._worst(scored)["still_rising"]


def test_bad_input_is_one_line():
    xtr, ytr, xte, yte = _data()
    with pytest.raises(PrivatenetError, match="1 class"):
        _fresh(xtr, np.zeros_like(ytr), xte, yte, num_classes=2)
    with pytest.raises(PrivatenetError, match="zoo='huge'"):
        _fresh(xtr, ytr, xte, yte, num_classes=2, zoo="huge")
    with pytest.raises(PrivatenetError, match="feature rows"):
        _fresh(xtr[:10], ytr, xte, yte, num_classes=2)
    with pytest.raises(PrivatenetError, match="folds=1"):
        audit(scoring=(xte, yte), num_classes=2, folds=1)
    with pytest.raises(PrivatenetError, match="curve="):
        audit(scoring=(xte, yte), num_classes=2, curve=(1.5,))
    with pytest.raises(PrivatenetError, match="control 'c'"):  # cross-fitted: no attacker rows
        audit(scoring=(xte, yte), num_classes=2, controls={"c": (xtr, xte)})


def test_online_codelength_against_the_labels_own_prior():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    perfect = online_codelength(np.eye(3)[y] * 5, y, num_classes=3)
    useless = online_codelength(np.zeros((300, 2)), y, num_classes=3)
    assert perfect["compression"] > 3 > 1.05 > useless["compression"]
    assert perfect["uniform_bits"] == pytest.approx(300 * np.log2(3))


def test_features_that_say_nothing_compress_to_one_at_any_imbalance():
    # The old ratio (N log2 K over the code) read above 1 for noise whenever the classes are
    # imbalanced; against the labels' own prior, noise is 1 within the cost of the probe.
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.1).astype(int)  # 10 % / 90 %
    noise = rng.normal(size=(600, 20))
    result = online_codelength(noise, y, num_classes=2)
    assert result["uniform_bits"] / result["codelength_bits"] > 1.5  # the old, wrong reading
    assert 0.8 < result["compression"] < 1.05


def test_cli_audit_writes_its_report_and_refuses_bad_input(tmp_path, make_manifest, capsys):
    csv = make_manifest(tmp_path / "data", n_train=60, n_test=24)
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{csv}", "--model", "small_cnn", "--epochs", "1",
                 "--device", "cpu", "--out", str(run)]) == 0
    out = tmp_path / "audit"
    assert main(["audit", "--zoo", "quick", "--run", str(run), "--tap", "pool", "--private",
                 "gender", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Worst case over the quick zoo" in printed and "task output" in printed
    assert "data-limited" in printed  # no attacker split: cross-fitted on the test rows
    saved = json.loads((out / "audit.json").read_text())
    assert set(saved["controls"]) == {"task output", "random network", "image 16x16"}
    assert (out / "audit.png").read_bytes()[:4] == b"\x89PNG"
    assert "| logistic |" in (out / "audit.md").read_text()
    assert json.loads((out / "results.json").read_text())["worst"]["attacker"] in saved[
        "attackers"]
    for argv, needle in (
            (["--tap", "arm", "--private", "gender"], "no tap 'arm'"),
            (["--tap", "pool", "--private", "emotion"], "own task"),
            (["--tap", "pool", "--private", "gender", "--seeds", "0"], "--seeds 0")):
        target = tmp_path / "refused"
        code = main(["audit", "--zoo", "quick", "--run", str(run), *argv, "--device", "cpu",
                     "--out", str(target)])
        err = [line for line in capsys.readouterr().err.splitlines()
               if not line.startswith("[audit]")]
        assert code == 2 and len(err) == 1 and needle in err[0], err
        assert not target.exists()
    # the same command again returns the finished audit; other inputs there are refused
    before = {p: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"}
    assert main(["audit", "--zoo", "quick", "--run", str(run), "--tap", "pool", "--private",
                 "gender", "--device", "cpu", "--out", str(out)]) == 0
    assert "Worst case" in capsys.readouterr().out
    assert main(["audit", "--zoo", "quick", "--run", str(run), "--tap", "pool", "--private", "age",
                 "--device", "cpu", "--out", str(out)]) == 2
    assert "other settings.attribute" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"}


def test_an_interrupted_audit_is_redone_by_the_same_command(tmp_path, make_manifest,
                                                             monkeypatch):
    from privatenet.app import jobs as module  # the audit job calls the audit from here

    csv = make_manifest(tmp_path / "data", n_train=60, n_test=24)
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{csv}", "--model", "small_cnn", "--epochs", "1",
                 "--device", "cpu", "--out", str(run)]) == 0
    argv = ["audit", "--zoo", "quick", "--run", str(run), "--tap", "pool", "--private",
            "gender", "--device",
            "cpu", "--out", str(tmp_path / "audit")]
    real = module.audit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "audit", interrupted)
    assert main(argv) == 130
    assert not (tmp_path / "audit" / "results.json").exists()
    monkeypatch.setattr(module, "audit", real)
    assert main(argv) == 0 and (tmp_path / "audit" / "results.json").exists()


def test_torch_heads_join_the_zoo_with_epochs_chosen_on_validation():
    from privatenet.models import create_adversary

    xtr, ytr, xte, yte = _data(signal=1.5)
    result = _fresh(xtr, ytr, xte, yte, num_classes=2, mdl=False, head_epochs=(2, 6),
                    zoo="quick", curve=(), heads={"head:conv": lambda shape, n: create_adversary(
                        "conv", tap_shape=shape, num_classes=n, width=8)})
    head = result["attackers"]["head:conv"]
    assert head["input"] == "map" and head["seeds"][0]["chosen"]["epochs"] in (2, 6)
    assert head["normalized_leakage"] > 0.3 and 0.5 < head["auroc"] <= 1.0
    assert result["settings"]["heads"] == ["head:conv"]


def test_wide_features_are_fitted_in_the_train_rows_basis_with_the_same_solution():
    from sklearn.linear_model import LogisticRegression

    from privatenet.auditing import _train_row_basis

    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(60, 300)), rng.normal(size=(40, 300))
    w = rng.normal(size=300)
    ytr, yte = (xtr @ w > 0).astype(int), (xte @ w > 0).astype(int)
    mean, std = xtr.mean(0), xtr.std(0)
    ztr, zte = _train_row_basis(xtr, xte)
    assert ztr.shape == (60, 60) and zte.shape == (40, 60)  # one coordinate per train row
    exact = dict(C=0.1, tol=1e-10, max_iter=10_000)
    wide = LogisticRegression(**exact).fit((xtr - mean) / std, ytr)
    narrow = LogisticRegression(**exact).fit(ztr, ytr)
    # the L2-penalised optimum lies in the train rows' span: the same scores on test rows
    np.testing.assert_allclose(narrow.decision_function(zte),
                               wide.decision_function((xte - mean) / std), atol=1e-5)
    assert (narrow.predict(zte) == yte).mean() > 0.5
