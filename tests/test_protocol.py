import json

import pytest
from data_helpers import check_report

from privatenet.app.protocol import plan, reproduce, resolve_config
from privatenet.cli import main
from privatenet.data import load_dataset
from privatenet.errors import PrivatenetError


def test_smoke_reproduce_on_a_grayscale_string_label_manifest(tmp_path, make_manifest):
    csv = make_manifest(tmp_path / "data", grayscale=True, n_train=120)
    settings = {"data": f"manifest:{csv}", "taps": ["pool"], "device": "cpu",
                "attacker_share": 0.25}
    config = resolve_config("smoke", settings)
    out = tmp_path / "run"
    before = plan(config=config, out=out, measure_steps=1)
    assert not out.exists()  # a dry run writes nothing
    assert before["to_run"] == len(before["stages"]) and before["projected_seconds"] > 0
    results = reproduce(config=config, out=out)
    after = plan(config=config, out=out, measure_steps=1)
    # the dry run names exactly the stage folders the run made, now all cached
    assert all(st["cached"] for st in after["stages"]) and after["to_run"] == 0
    assert {st["folder"] for st in after["stages"]} == {
        st["folder"] for st in results["stages"]} == {st["folder"] for st in before["stages"]}
    # the plan is the run: the same stages in the same order, each once (the sweep's lambda =
    # 0 point is Table 2's control row, not a second stage)
    folders = [st["folder"] for st in results["stages"]]
    assert folders == [st["folder"] for st in before["stages"]] and len(set(folders)) == len(
        folders)
    passes = {st["stage"]: (st["train_passes"], st["forward_passes"])
              for st in before["stages"]}
    # a quarter of every stratum of the train rows went to the attacker before any training
    n_all = len(load_dataset(config.data).split("train", ["emotion"]))
    n_attacker = results["rows"]["attacker"]
    n_train = results["rows"]["train"]
    assert n_train + n_attacker == n_all and n_attacker == pytest.approx(n_all / 4, abs=6)
    n_test = results["utility"]["original_report"]["n"]
    assert passes["original"] == (config.train.epochs * n_train, n_test)
    assert passes["attack-original-pool-gender"][0] == 0  # features only: no training pass

    # results.json: the schema of the protocol issue
    saved = json.loads((out / "results.json").read_text())
    assert saved["utility"]["original"].keys() >= {"accuracy", "balanced_accuracy"}
    assert {(r["attribute"], r["source"]) for r in saved["table1"]} == {
        ("gender", "image"), ("gender", "pool"), ("age", "image"), ("age", "pool")}
    test = load_dataset(config.data).splits["test"].labels
    for r in saved["table1"]:
        check_report(r, test[r["attribute"]], 2)
    # the lambda = 0 control first, then losses x taps x attributes
    assert [(r["loss"], r["attribute"]) for r in saved["table2"]] == [
        ("none", "gender"), ("none", "age")] + [
        (loss, a) for loss in config.losses for a in ("gender", "age")]
    assert config.adversarial_update == "fixed"  # the paper's baseline
    for r in saved["table2"]:
        assert r["tap"] == "pool"
        check_report(r["known"], test[r["attribute"]], 2)
        check_report(r["unknown"], test[r["attribute"]], 2)
        # the audit column: the quick zoo's worst case on the network's tap, by attackers
        # trained on the carved attacker rows (never the train rows the networks were fitted
        # on), scored on the test rows
        name = (f"finetune-{r['tap']}-{r['attribute']}" if r["loss"] == "none" else
                f"private-{r['loss']}-{r['tap']}-{r['attribute']}-lam{r['lam']:g}")
        stage = next(st["folder"] for st in results["stages"] if st["stage"] == "audit-" + name)
        full = json.loads((out / stage / "audit.json").read_text())
        assert full["rows"]["attacker"] == {"split": "attacker", "rows": n_attacker}
        assert not full["data_limited"]
        assert full["rows"]["defender"] == {"split": "train", "rows": n_train} | {
            k: v for k, v in full["rows"]["defender"].items() if k not in ("split", "rows")}
        assert r["audit"]["leakage"] == max(
            max(a["normalized_leakage"], a["balanced_leakage"])
            for a in full["attackers"].values())
        # utility is scored on every test row with a known target, whatever the attribute
        assert r["utility"]["n"] == saved["utility"]["original_report"]["n"]
        assert set(r["utility"]) >= {"accuracy", "balanced_accuracy"}
        orig = next(t for t in saved["table1"]
                    if t["attribute"] == r["attribute"] and t["source"] == "pool")
        expect = (r["unknown"]["accuracy"] - orig["accuracy"]) / orig["accuracy"] * 100
        assert r["robustness_unknown"] == pytest.approx(expect)
    assert [r["lam"] for r in saved["lambda_sweep"]] == [0.0, 1.0]
    control = next(r for r in saved["table2"] if r["loss"] == "none" and r["attribute"] == "age")
    assert saved["lambda_sweep"][0]["unknown"] == control["unknown"]["accuracy"]
    assert all({"lam", "utility", "known", "unknown"} <= set(r) for r in saved["lambda_sweep"])
    assert [r["network"] for r in saved["latency_ms"]][0] == "original"
    assert all(r["mean"] > 0 and r["std"] >= 0 and r["device"] for r in saved["latency_ms"])
    assert saved["classes"]["emotion"] == ["angry", "happy", "sad"]
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "Table 3" in report
    assert (out / "fig2_lambda_sweep.png").read_bytes()[:4] == b"\x89PNG"
    seen = set()  # a fresh run computes every stage once; later uses are cached
    for s in results["stages"]:
        assert s["cached"] == (s["folder"] in seen), s
        seen.add(s["folder"])

    # `privatenet audit` on one of the run's networks carves the same attacker rows again, so
    # its attackers are the run's and its in-sample column is the network's training rows
    net = next(st["folder"] for st in results["stages"]
               if st["stage"] == "private-confusion-pool-gender-lam0.5")
    assert main(["audit", "--run", str(out / net), "--tap", "pool", "--private", "gender",
                 "--zoo", "quick", "--in-sample", "--out", str(tmp_path / "aud")]) == 0
    rows = json.loads((tmp_path / "aud" / "audit.json").read_text())["rows"]
    assert rows["attacker"] == {"split": "attacker", "rows": n_attacker}
    assert rows["defender"]["rows"] == n_train

    # a rerun skips every finished stage and gives the same numbers
    again = reproduce(config=config, out=out)
    assert all(s["cached"] for s in again["stages"])
    assert again["table2"] == results["table2"]

    # a changed setting recomputes exactly the stages that depend on it
    def ran(res):
        return {s["stage"] for s in res["stages"] if not s["cached"]}

    more = resolve_config("smoke", settings | {"lambdas": [0.0, 0.3, 1.0]})
    assert ran(reproduce(config=more, out=out)) == {
        "private-confusion-pool-age-lam0.3", "attack-private-confusion-pool-age-lam0.3",
        "audit-private-confusion-pool-age-lam0.3"}
    longer = resolve_config("smoke", settings | {"adversary_epochs": 2})
    res = reproduce(config=longer, out=out)
    every = {s["stage"] for s in res["stages"]}
    assert every - ran(res) == {"original", "image-gender", "image-age", "latency-original",
                                "finetune", "latency-finetune", "audit-original-pool-gender",
                                "audit-original-pool-age", "audit-finetune-pool-gender",
                                "audit-finetune-pool-age"}

    # other data under the same spec (one label changed) recomputes everything
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(",angry,", ",sad,")
    csv.write_text("\n".join(lines) + "\n")
    res = reproduce(config=longer, out=out)
    assert ran(res) == {s["stage"] for s in res["stages"]}


def test_reproduce_refuses_a_folder_of_another_command(tmp_path, make_manifest):
    from privatenet.cli import main

    csv = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{csv}", "--model", "small_cnn", "--epochs", "1",
                 "--device", "cpu", "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    config = resolve_config("smoke", {"data": f"manifest:{csv}", "device": "cpu"})
    with pytest.raises(PrivatenetError, match="'train' run"):
        reproduce(config=config, out=run)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_resolve_config_checks_values():
    with pytest.raises(PrivatenetError, match="preset"):
        resolve_config("fast", {})
    with pytest.raises(PrivatenetError, match="outside"):
        resolve_config("smoke", {"lambdas": [0.0, 2.0]})
    with pytest.raises(PrivatenetError, match="defence='mine' is unknown"):
        resolve_config("smoke", {"losses": ["mine"]})
    paper = resolve_config("paper", {})
    assert (paper.model, paper.image_size, paper.train.epochs, paper.train.lr) == (
        "arm_resnet18", 224, 200, 1e-3)
    assert paper.train.batch_size == 256 and paper.adversary_epochs == 200
    with pytest.raises(PrivatenetError, match="task target"):
        resolve_config("smoke", {"private": ["emotion"]})
    with pytest.raises(PrivatenetError, match="seed"):
        resolve_config("smoke", {"seed": -5})  # checked up front, not after the training
    with pytest.raises(PrivatenetError, match="adversary_epochs"):
        resolve_config("smoke", {"adversary_epochs": 0})
    assert paper.private == ["gender", "age"] and paper.taps is None  # all: backbone, arm


def test_resolve_config_refuses_empty_or_repeated_lists_bad_taps_and_seed_counts():
    from privatenet.auditing import AuditConfig

    for key, value, needle in (
            ("lambdas", [], "lambdas list is empty"), ("taps", [], "taps list is empty"),
            ("losses", [], "losses list is empty"), ("private", [], "private list is empty"),
            ("lambdas", [0.5, 0.5], "twice"), ("taps", ["pool", "pool"], "twice"),
            ("private", ["age", "age"], "twice"), ("losses", ["leace", "leace"], "twice"),
            ("lambdas", [0.0, float("nan")], "lambdas list holds nan"),
            ("taps", ["arm"], "no tap 'arm'; valid taps: backbone, pool"),  # small_cnn's
            ("seeds", 101, "1..100"), ("seeds", 0, "1..100")):
        with pytest.raises(PrivatenetError, match=needle):
            resolve_config("smoke", {key: value})
    with pytest.raises(PrivatenetError, match="reaches seed 4294967296"):
        resolve_config("smoke", {"seed": 2**32 - 1, "seeds": 2})
    with pytest.raises(PrivatenetError, match="1..100"):
        AuditConfig(zoo="quick", seeds=10**9)


def test_reproduce_checks_splits_and_columns_before_its_folder_exists(tmp_path, make_manifest):
    out = tmp_path / "r"
    no_test = make_manifest(tmp_path / "a", n_train=12, splits=("train", "train"))
    no_train = make_manifest(tmp_path / "b", n_test=12, splits=("test", "test"))
    for csv, overrides, needle in (
            (no_test, {}, "faces.csv' has no 'test' split .it has: train."),
            (no_train, {}, "faces.csv' has no 'train' split .it has: test."),
            (no_train, {"private": ["race"]}, "no label column 'race'")):
        config = resolve_config("smoke", {"data": f"manifest:{csv}", "device": "cpu",
                                          **overrides})
        with pytest.raises(PrivatenetError, match=needle):
            reproduce(config=config, out=out)
        with pytest.raises(PrivatenetError, match=needle):
            plan(config=config, out=out)
        assert not out.exists()


def test_a_dry_run_reads_an_image_cache_but_never_writes_one(tmp_path, make_manifest,
                                                              monkeypatch):
    from privatenet.data import cache as image_cache

    csv = make_manifest(tmp_path / "d")
    cache, out = tmp_path / "cache", tmp_path / "r"
    config = resolve_config("smoke", {"data": f"manifest:{csv}", "cache_dir": str(cache),
                                      "device": "cpu", "attacker_share": 0})
    assert plan(config=config, out=out, measure_steps=1)["stages"]
    assert not cache.exists() and not out.exists()
    load_dataset(f"manifest:{csv}", cache_dir=cache)  # a real run writes it
    written = {p: p.read_bytes() for p in cache.iterdir()}
    assert len(written) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(image_cache, "_decode_all", no_decoding)
    plan(config=config, out=out, measure_steps=1)  # reads the cache
    assert {p: p.read_bytes() for p in cache.iterdir()} == written and not out.exists()
