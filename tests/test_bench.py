"""privatenet.bench: the measured figures, the parity with the public re-creation, the argument
checks, the recommendation rule and the ``privatenet bench`` command."""

import json
import math

import pytest
import torch

from privatenet import bench
from privatenet.bench import environment, format_table, measure
from privatenet.cli import main
from privatenet.errors import PrivatenetError

TINY = dict(model="arm_small", image_size=33, batch_size=4, device="cpu", steps=1, warmup=0,
            latency_iters=2)
FIGURES = ("train_images_per_s", "train_images_per_s_median", "latency_ms_mean")


@pytest.fixture(scope="module")
def tiny():
    """One tiny run shared by the tests that read it; records progress and the RNG state."""
    calls = []
    rng_before = torch.get_rng_state()
    result = measure(**TINY, variants=["fp32", "channels_last"],
                     on_progress=lambda *a: calls.append(a))
    return result, calls, rng_before, torch.get_rng_state()


def test_tiny_run_figures(tiny):
    result, calls, rng_before, rng_after = tiny
    assert [v["key"] for v in result["variants"]] == ["fp32", "channels_last"]
    for v in result["variants"]:
        for name in FIGURES:
            assert math.isfinite(v[name]) and v[name] > 0, (v["key"], name, v[name])
        assert math.isfinite(v["latency_ms_std"]) and v["latency_ms_std"] >= 0
        assert math.isfinite(v["ratio"]) and v["ratio"] > 0
        # Linux: peak RSS during the pass is at least the RSS before it
        assert v["peak_memory_mb"] is not None and v["baseline_memory_mb"] is not None
        assert v["peak_memory_mb"] >= v["baseline_memory_mb"] > 0
    assert result["reference"] == "fp32"
    assert result["variants"][0]["ratio"] == 1.0
    assert result["fastest"] in {"fp32", "channels_last"}
    assert result["fastest"] == max(result["variants"],
                                    key=lambda v: v["train_images_per_s"])["key"]
    assert result["parity_max_abs_diff"] is None  # no public variant, no parity check
    assert (result["model"], result["image_size"], result["batch_size"], result["steps"],
            result["warmup"], result["latency_iters"]) == ("arm_small", 33, 4, 1, 0, 2)
    assert result["environment"]["threads"] == torch.get_num_threads()
    # the machine's own limit beside every variant: the training rate in FLOP/s over the GEMM's
    assert result["gemm_gflop_per_s"]["fp32"] > 0 and result["train_gflop_per_image"] > 0
    for v in result["variants"]:
        assert v["train_gflop_per_s"] == pytest.approx(
            result["train_gflop_per_image"] * v["train_images_per_s"])
        assert v["gemm_fraction"] == pytest.approx(
            v["train_gflop_per_s"] / result["gemm_gflop_per_s"]["fp32"])
    # a captured CUDA graph exists only on CUDA: no graph latency on a CPU, and no column
    assert all(v["latency_graph_ms_mean"] is None and v["latency_graph_ms_std"] is None
               for v in result["variants"])
    assert "graph ms" not in format_table(result)
    assert json.loads(json.dumps(result)) == result
    assert ("train", 1, 1) in calls and ("latency", 2, 2) in calls
    assert torch.equal(rng_before, rng_after)  # the fixed seed did not leak to the caller


def test_training_flops_count_forward_and_backward_products():
    # 12 -> 5 -> 7: forward 2*(12*5 + 5*7) FLOPs per image; backward, the weight gradients of
    # both layers (the same count) and the input gradient of the second only (the images need
    # none); the biases and the loss are not products
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Linear(5, 7))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    assert bench.training_flops(net, x, y) == 2 * (12 * 5 + 5 * 7) * 2 + 2 * 5 * 7
    assert all(p.grad is None for p in net.parameters())  # counting leaves no gradient behind


def test_gemm_rate_is_the_product_count_over_the_median_time(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    # every timed product lasts from one reading of the clock to the next: 1 s
    assert bench.gemm_rate(torch.device("cpu"), side=8, reps=3) == 2 * 8**3 / 1e9


def test_format_table_mentions_every_variant(tiny):
    result = tiny[0]
    table = format_table(result)
    for v in result["variants"]:
        assert v["label"] in table
    assert f"{result['variants'][1]['train_images_per_s']:.2f}" in table
    assert table.splitlines()[0].startswith(f"torch {torch.__version__}")
    assert "recommendation:" in table and "native bf16" in table


def test_format_table_shows_graph_latency_where_it_was_measured(tiny):
    result = json.loads(json.dumps(tiny[0]))
    result["variants"][0]["latency_graph_ms_mean"] = 0.4321
    lines = format_table(result).splitlines()
    assert "graph ms" in lines[2]
    fp32, cl = (next(line for line in lines if line.startswith(v["label"]))
                for v in result["variants"])
    assert "0.43" in fp32 and fp32.index("0.43") > fp32.index("±")
    assert cl.split("±")[1].split()[1] == "-"


def test_public_parity_and_reference():
    result = measure(model="arm_resnet18", image_size=65, batch_size=2, device="cpu", steps=1,
                     warmup=0, latency_iters=1, variants=["public"])
    assert result["reference"] == "public"
    assert result["variants"][0]["ratio"] == 1.0
    assert result["parity_max_abs_diff"] is not None
    assert result["parity_max_abs_diff"] < 1e-4
    assert "parity" in format_table(result)


def test_environment_fields():
    env = environment(torch.device("cpu"))
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert isinstance(env["bf16_native"], bool) and env["device_name"]
    assert env["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("kwargs, named", [
    (dict(model="no_such_net"), "'no_such_net'"),
    (dict(batch_size=1), "batch_size=1"),
    (dict(variants=["fp32", "fp64"]), "'fp64'"),
    (dict(steps=0), "steps=0"),
    (dict(latency_iters=True), "latency_iters=True"),
    (dict(model="arm_small", variants=["public"]), "'arm_small'"),
    (dict(variants=["compile"]), "compile=True"),
    (dict(image_size=4), "image_size=4"),
    (dict(model="arm_small", image_size=32), "image_size=32"),  # the ARM head's minimum
])
def test_bad_arguments_name_the_value(kwargs, named):
    with pytest.raises(PrivatenetError) as err:
        measure(**{**TINY, **kwargs})
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_recommendation_threshold():
    env = {"bf16_native": False}
    cpu = torch.device("cpu")
    slow = bench._recommend({"fp32": 100.0, "bf16": 104.0, "channels_last": 120.0}, env,
                            "arm_small", 33, 4, cpu)
    assert slow["bf16_pays"] is False and slow["channels_last_pays"] is True
    assert slow["fastest"] == "channels_last" and slow["bf16_emulated"] and "note" in slow
    fast = bench._recommend({"fp32": 100.0, "bf16": 106.0}, {"bf16_native": True},
                            "arm_small", 33, 4, cpu)
    assert fast["bf16_pays"] is True and fast["channels_last_pays"] is None
    assert not fast["bf16_emulated"] and "note" not in fast
    # what training uses without options, against the fastest: fp32 contiguous on a CPU
    assert slow["default"] == "fp32" and slow["default_of_fastest"] == pytest.approx(100 / 120)
    assert "training's defaults here (auto) are fp32: 0.83x the fastest" in slow["summary"]


def test_recommendation_names_the_cuda_defaults_and_their_gain():
    rec = bench._recommend({"public": 90.0, "fp32": 100.0, "channels_last+bf16": 300.0},
                           {"bf16_native": True}, "arm_resnet18", 224, 256, torch.device("cuda"))
    assert rec["default"] == "channels_last+bf16" and rec["default_of_fastest"] == 1.0
    assert "are channels_last+bf16: 1.00x the fastest, 3.33x the public recipe" in rec["summary"]
    unmeasured = bench._recommend({"fp32": 100.0}, {"bf16_native": True}, "arm_small", 64, 8,
                                  torch.device("cuda"))
    assert unmeasured["default_of_fastest"] is None and "defaults" not in unmeasured["summary"]


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "b" / "bench.json"
    assert main(["bench", "--model", "arm_small", "--image-size", "33", "--batch-size", "4",
                 "--steps", "1", "--warmup", "0", "--latency-iters", "2", "--device", "cpu",
                 "--variants", "fp32,channels_last", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [v["key"] for v in result["variants"]] == ["fp32", "channels_last"]
    assert "ours, channels_last fp32" in printed and "recommendation:" in printed


def test_bench_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["bench", "--variants", "fp16", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fp16" in err and len(err.splitlines()) == 1
    assert main(["bench", "--out", str(tmp_path)]) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------- the output file (issue 15, defect 1)

CLI_TINY = ["bench", "--model", "arm_small", "--image-size", "33", "--batch-size", "4",
            "--steps", "1", "--warmup", "0", "--latency-iters", "1", "--device", "cpu",
            "--variants", "fp32"]


@pytest.fixture
def no_measure(monkeypatch):
    """``measure`` that fails the test if called: a refusal must come before any timing."""
    def called(**kwargs):
        raise AssertionError("measure ran before the output file was checked")
    monkeypatch.setattr("privatenet.app.bench_job.measure", called)  # where the job calls it


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"kind": "train", "fingerprint": null}\n')
    (run / "model.json").write_text('{"tensors_sha256": "abc"}\n')
    return run


@pytest.mark.parametrize("make, needle", [
    (lambda tmp: tmp / "data.csv", "not a privatenet bench output"),
    (lambda tmp: _run_folder(tmp) / "model.json", "inside the run folder"),
    (lambda tmp: _run_folder(tmp) / "new.json", "inside the run folder"),
    (lambda tmp: tmp / "other.json", "not a privatenet bench output"),
])
def test_bench_refuses_a_file_it_does_not_own(tmp_path, capsys, no_measure, make, needle):
    from cli_helpers import fails

    out = make(tmp_path)
    if out.name == "data.csv":
        out.write_text("path,label\na.jpg,3\n")
    elif out.name == "other.json":
        out.write_text('{"variants": []}\n')  # JSON, but no bench marker
    before = out.read_bytes() if out.exists() else None
    line = fails(capsys, [*CLI_TINY, "--out", str(out)], str(out), needle)
    assert "--out" in line
    assert (out.read_bytes() if out.exists() else None) == before


def test_bench_refuses_a_symlink(tmp_path, capsys, no_measure):
    from cli_helpers import fails

    target = tmp_path / "bench.json"
    target.write_text(json.dumps({"kind": bench.KIND}))
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fails(capsys, [*CLI_TINY, "--out", str(link)], str(link), "symlink")
    assert link.is_symlink() and json.loads(target.read_text()) == {"kind": bench.KIND}


def test_bench_refuses_an_unwritable_parent(tmp_path, capsys, no_measure):
    from cli_helpers import fails

    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, [*CLI_TINY, "--out", str(blocker / "sub" / "b.json")], "not a folder")


def test_bench_overwrites_its_own_output(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main([*CLI_TINY, "--out", str(out)]) == 0
    first = json.loads(out.read_text())
    assert first["kind"] == bench.KIND and first["skipped"] == {}
    first["steps"] = "stale"
    out.write_text(json.dumps(first))
    assert main([*CLI_TINY, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == 1


# ---------------------------------------------------- default variants (issue 15, defect 22)


def _variant_keys(monkeypatch, native, **kwargs):
    """The variants measure would run (and the left-out ones) with bf16 ``native`` or not."""
    seen = {}
    monkeypatch.setattr(bench, "bf16_native", lambda dev: native)

    def fake(model, size, bs, dev, steps, warmup, latency_iters, compile, keys, progress):
        seen["keys"] = keys
        return {}
    monkeypatch.setattr(bench, "_measure", fake)
    result = measure(**{**TINY, "model": "arm_resnet18", "image_size": 65, **kwargs})
    return seen["keys"], result["skipped"]


def test_default_variants_leave_out_emulated_bf16(monkeypatch):
    keys, skipped = _variant_keys(monkeypatch, native=False)
    assert keys == ["public", "fp32", "fused", "channels_last", "channels_last+fused"]
    assert set(skipped) == {"bf16", "channels_last+bf16", "compile"}
    assert "no native bf16" in skipped["bf16"] and "--variants bf16" in skipped["bf16"]
    keys, skipped = _variant_keys(monkeypatch, native=True)
    assert keys == ["public", "fp32", "fused", "channels_last", "channels_last+fused", "bf16",
                    "channels_last+bf16"]
    assert set(skipped) == {"compile"}


def test_explicit_bf16_still_runs_without_native_bf16(monkeypatch):
    keys, skipped = _variant_keys(monkeypatch, native=False, variants="fp32,bf16")
    assert keys == ["fp32", "bf16"] and skipped == {}


def test_left_out_variants_are_printed(tiny, monkeypatch, tmp_path, capsys):
    result = dict(tiny[0], skipped={"bf16": "this CPU has no native bf16 (why)"})
    assert "left out bf16 (ours, bf16 autocast): this CPU has no native bf16 (why)" in \
        format_table(result).splitlines()
    monkeypatch.setattr("privatenet.app.bench_job.measure", lambda **kw: result)
    assert main(["bench", "--device", "cpu", "--out", str(tmp_path / "b.json")]) == 0
    assert "left out bf16 (ours, bf16 autocast)" in capsys.readouterr().out
