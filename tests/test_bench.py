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
    assert json.loads(json.dumps(result)) == result
    assert ("train", 1, 1) in calls and ("latency", 2, 2) in calls
    assert torch.equal(rng_before, rng_after)  # the fixed seed did not leak to the caller


def test_format_table_mentions_every_variant(tiny):
    result = tiny[0]
    table = format_table(result)
    for v in result["variants"]:
        assert v["label"] in table
    assert f"{result['variants'][1]['train_images_per_s']:.2f}" in table
    assert table.splitlines()[0].startswith(f"torch {torch.__version__}")
    assert "recommendation:" in table and "native bf16" in table


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
