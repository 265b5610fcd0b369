"""Our training loop against the network alone, and the paper preset's projected GPU-hours.

    python benchmarks/loop_vs_module.py --device cuda --out /tmp/loop   # gpu_check.sh runs it

1. The module alone: :func:`privatenet.bench.measure` of the variant the loop uses on the
   device (``auto`` precision and memory format: bf16 and channels_last on CUDA, fp32 and
   contiguous on a CPU) at the loop's batch and image size, on random tensors.
2. The loop: :func:`privatenet.train.loop.fit` on synthfaces at that size with its
   augmentation on the device, ``--epochs`` epochs; its rate over epochs 2 and later (the first
   pays for start-up and kernel selection). With ``--compile`` also the loop under
   ``torch.compile``.
3. The loop's rate over the module's (the goal on one H100/H200 is >= 0.9).
4. ``reproduce --preset paper --dry-run`` (:func:`privatenet.app.protocol.plan`) on
   synthfaces of RAF-DB's size (15,339 faces, the test split drawn at RAF-DB's share; images
   generated small and resized to 224 px: the dry run only counts them): the projected hours at
   the module's rate as the dry run measures it, and at the loop's measured rate.

Prints figures and writes them to ``OUT/loop_vs_module.json``; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from privatenet.app.protocol import FORWARD_SHARE, plan, resolve_config
from privatenet.bench import measure, variant_of
from privatenet.data import load_dataset
from privatenet.models import create_model
from privatenet.train.config import TrainConfig, resolve_device
from privatenet.train.loop import fit

RAFDB_FACES = 15_339  # RAF-DB basic: 12,271 train + 3,068 test


def _loop_rate(train, *, model: str, size: int, config: TrainConfig) -> dict:
    torch.manual_seed(0)
    net = create_model(model, num_classes=7, image_size=size)
    history = fit(model=net, train=train, target="emotion", config=config)
    later = history[1:] or history
    rates = [len(train) / h["seconds"] for h in later]
    return {"images_per_s": len(train) * len(later) / sum(h["seconds"] for h in later),
            "median_epoch_images_per_s": statistics.median(rates),
            "epochs_timed": len(later), "rows": len(train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="arm_resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--faces", type=int, default=5000, help="synthfaces drawn for the loop")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of the module alone")
    ap.add_argument("--compile", action="store_true", help="also time the loop compiled")
    ap.add_argument("--paper-faces", type=int, default=RAFDB_FACES,
                    help="faces of the paper-preset projection (0: skip it)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)
    variant = variant_of(precision="auto", memory_format="auto", compile=False, device=device)
    size, bs = a.image_size, a.batch_size

    module = measure(model=a.model, image_size=size, batch_size=bs, device=a.device,
                     steps=a.steps, warmup=3, latency_iters=1, variants=[variant])
    module_ips = module["variants"][0]["train_images_per_s"]
    print(f"{module['environment']['device_name']}: {a.model} {size} px, batch {bs}, "
          f"{variant}")
    print(f"the module alone (random tensors, {a.steps} steps): {module_ips:,.0f} img/s")

    data = load_dataset(f"synthfaces:n={a.faces},size={size}", cache_dir=a.cache_dir)
    train = data.split("train", ["emotion"])
    result = {"device": module["environment"]["device_name"], "model": a.model,
              "image_size": size, "batch_size": bs, "variant": variant,
              "module_images_per_s": module_ips, "loops": {}}
    for compiled in (False, True) if a.compile else (False,):
        config = TrainConfig(epochs=a.epochs, batch_size=bs, device=a.device,
                             compile=compiled, seed=0)
        loop = _loop_rate(train, model=a.model, size=size, config=config)
        loop["of_module"] = loop["images_per_s"] / module_ips
        name = "compiled" if compiled else "eager"
        result["loops"][name] = loop
        print(f"our loop, {name} ({loop['rows']:,} synthfaces, augmentation on, epochs 2-"
              f"{a.epochs}): {loop['images_per_s']:,.0f} img/s = {loop['of_module']:.0%} of "
              "the module")

    if a.paper_faces:
        config = resolve_config("paper", {
            "data": f"synthfaces:n={a.paper_faces},size=32", "device": a.device,
            "cache_dir": a.cache_dir})
        p = plan(config=config, out=out / "paper-dry-run")
        paper = result["paper"] = {
            "train_passes": p["train_passes"], "forward_passes": p["forward_passes"],
            "dry_run_hours": p["projected_seconds"] / 3600,
            "dry_run_images_per_s": p["throughput"]["train_images_per_s"], "loop_hours": None}
        line = (f"paper preset on {a.paper_faces:,} faces: {p['train_passes']:,} training and "
                f"{p['forward_passes']:,} forward passes; reproduce --dry-run projects "
                f"{paper['dry_run_hours']:.2f} hours on {device} (the module at "
                f"{paper['dry_run_images_per_s']:,.0f} img/s)")
        # the loop's rate projects the preset only when it trained the preset's network
        if (a.model, size, bs) == (config.model, config.image_size, config.train.batch_size):
            best = max(loop["images_per_s"] for loop in result["loops"].values())
            paper["loop_hours"] = (p["train_passes"] + p["forward_passes"] * FORWARD_SHARE
                                   ) / best / 3600
            line += f", {paper['loop_hours']:.2f} at our loop's rate"
        print(line + " (the audits' attackers not included)")
    (out / "loop_vs_module.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
