"""Inference latency (the paper's Table 3) and training throughput measurements."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

#: Precisions of the latency measurement: ``fp32`` (the paper's Table 3) or ``bf16`` autocast.
LATENCY_PRECISIONS = ("fp32", "bf16")


@torch.no_grad()
def latency_ms(model: nn.Module, *, image_size: int, device: str | torch.device = "cpu",
               repeats: int = 30, warmup: int = 5, batch_size: int = 1,
               precision: str = "fp32") -> dict:
    """Per-image inference time of ``model`` in eval mode: mean and std over ``repeats`` timed
    forward passes of one batch (batch 1 by default, as in the paper's Table 3), in ms, in
    ``precision`` (``fp32``, the paper's, or ``bf16`` autocast)."""
    if repeats < 2 or warmup < 0 or batch_size < 1 or precision not in LATENCY_PRECISIONS:
        raise ValueError(f"need repeats >= 2, warmup >= 0, batch_size >= 1, precision in "
                         f"{LATENCY_PRECISIONS}")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0 / batch_size)
    finally:
        model.train(was_training)
    return {"mean": statistics.fmean(times), "std": statistics.stdev(times),
            "precision": precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)"}
