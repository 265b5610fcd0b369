"""Throughput and latency of the paper's ARM ResNet-18: the public module against ours.

Prints, for arm_resnet18 at 224x224 on random tensors (no data loading):

- training throughput (images/s; forward + backward + Adam step, weight decay 1e-4 as in the
  public recipe) at ``--batch-size`` (default 32), and
- batch-1 eval latency (ms, mean +- std),

for (a) a faithful re-implementation of the public module (Python loop over the 2 channels with
torch.cat, global mean over the batch) in fp32, (b) ours in fp32, (c) ours channels_last fp32,
(d) ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``, and with ``--compile`` (e) ours
compiled with ``torch.compile``. ``--device cuda`` runs the same on a GPU (bf16 autocast is
then CUDA's). docs/design.md §6 holds the targets; this is a script, not a test.

    python benchmarks/bench_arm_cpu.py --threads 2 --steps 10
    python benchmarks/bench_arm_cpu.py --device cuda --batch-size 256 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn

from privatenet.models import create_model
from privatenet.models.arm import arm_map_side, resnet_map_side


class PublicAmend(nn.Module):
    """The public ``Amend_raf`` block as published, except ``.cuda()`` -> the input's device."""

    def __init__(self, inplace: int = 2):
        super().__init__()
        self.de_albino = nn.Conv2d(1, 1, kernel_size=(32, 32), stride=8, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(inplace)
        self.alpha = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        mask = torch.tensor([], device=x.device)
        parts = {}
        for i in range(x.size(1)):
            parts["x" + str(i)] = torch.unsqueeze(x[:, i], 1)
            parts["x" + str(i)] = self.de_albino(parts["x" + str(i)])
            mask = torch.cat((mask, parts["x" + str(i)]), 1)
        x = self.bn(mask)
        xmax, _ = torch.max(x, 1, keepdim=True)  # computed and unused, as published
        global_mean = x.mean(dim=[0, 1])
        xmean = torch.mean(x, 1, keepdim=True)
        xmin, _ = torch.min(x, 1, keepdim=True)  # computed and unused, as published
        x = xmean + self.alpha * global_mean
        return x, self.alpha


class PublicRes18Feature(nn.Module):
    """The public ARM ResNet-18: features, PixelShuffle(16), Amend_raf, fc(121); returns
    ``(logits, alpha)``. ``fc_in`` other than 121 only for smoke runs at other sizes."""

    def __init__(self, num_classes: int = 7, drop_rate: float = 0.0, fc_in: int = 121):
        super().__init__()
        self.drop_rate = drop_rate
        resnet = torchvision.models.resnet18()
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.arrangement = nn.PixelShuffle(16)
        self.arm = PublicAmend()
        self.fc = nn.Linear(fc_in, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = self.arrangement(x)
        x, alpha = self.arm(x)
        x = x.view(x.size(0), -1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        out = self.fc(x)
        return out, alpha


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class Variant:
    key: str
    label: str
    model: nn.Module
    x: torch.Tensor
    x1: torch.Tensor
    autocast: bool
    device: torch.device
    opt: torch.optim.Optimizer = field(init=False)
    step_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=1e-4)

    def _sync(self) -> None:
        if self.device.type == "cuda":  # GPU work is asynchronous: time what has finished
            torch.cuda.synchronize(self.device)

    def train_step(self, y: torch.Tensor) -> float:
        """Forward + cross-entropy + backward + Adam step; returns seconds."""
        self.model.train()
        self._sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = nn.functional.cross_entropy(logits_of(self.model, self.x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._sync()
        return time.perf_counter() - start

    def infer(self) -> float:
        """One batch-1 eval forward; returns milliseconds."""
        self.model.eval()
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits_of(self.model, self.x1)
            self._sync()
            return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--image-size", type=int, default=224,
                        help="input side (224 is the paper's; others only for smoke runs)")
    parser.add_argument("--latency-iters", type=int, default=20,
                        help="timed batch-1 inferences per variant")
    parser.add_argument("--compile", action="store_true",
                        help="also time ours under torch.compile (slow to compile)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of variants: public,ours,channels_last,"
                             "bf16,compile (public is the reference for the ratios)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    size, bs = args.image_size, args.batch_size
    x = torch.randn(bs, 3, size, size, device=device)
    y = torch.randint(0, 7, (bs,), device=device)
    x1 = torch.randn(1, 3, size, size, device=device)
    xc = x.contiguous(memory_format=torch.channels_last)
    x1c = x1.contiguous(memory_format=torch.channels_last)
    fc_in = arm_map_side(resnet_map_side(size)) ** 2

    def public() -> nn.Module:
        return PublicRes18Feature(fc_in=fc_in).to(device)

    def ours(**kw) -> nn.Module:
        return create_model("arm_resnet18", num_classes=7, image_size=size, **kw).to(device)

    # sanity: ours in batch mode computes exactly what the public module computes
    ref, twin = public().eval(), ours(affinity="batch").eval()
    twin.load_state_dict(ref.state_dict(), strict=False)
    with torch.no_grad():
        diff = (logits_of(ref, x[:2]) - twin(x[:2])).abs().max().item()

    specs: list[tuple[str, str, Callable[[], nn.Module], bool, bool]] = [
        ("public", "(a) public module, fp32", public, False, False),
        ("ours", "(b) ours, fp32", ours, False, False),
        ("channels_last", "(c) ours, channels_last fp32",
         lambda: ours().to(memory_format=torch.channels_last), True, False),
        ("bf16", "(d) ours, bf16 autocast", ours, False, True),
    ]
    if args.compile:
        specs.append(("compile", "(e) ours, torch.compile fp32", lambda: torch.compile(ours()),
                      False, False))
    only = {v for v in args.only.split(",") if v}
    variants = []
    for key, label, make, channels_last, autocast in specs:
        if only and key not in only:
            continue
        torch.manual_seed(0)
        variants.append(Variant(key, label, make(), xc if channels_last else x,
                                x1c if channels_last else x1, autocast, device))

    bf16_native = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (
        device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, native "
          f"bf16: {bf16_native}; "
          f"arm_resnet18 {size}x{size}; train batch {bs}, {args.steps} timed steps after "
          f"{args.warmup} warm-up; variants interleaved step by step")
    print(f"parity (batch mode vs public module, eval): max |logit diff| = {diff:.2e}")
    # round-robin so that a change of machine load hits every variant alike
    for _ in range(args.warmup):
        for v in variants:
            v.train_step(y)
    for _ in range(args.steps):
        for v in variants:
            v.step_s.append(v.train_step(y))
    for i in range(3 + args.latency_iters):
        for v in variants:
            ms = v.infer()
            if i >= 3:
                v.latency_ms.append(ms)

    print(f"{'variant':32s} {'train img/s':>11s} {'(median)':>9s} {'vs (a)':>7s} "
          f"{'batch-1 eval ms':>17s}")
    base = None
    for v in variants:
        ips = bs * len(v.step_s) / sum(v.step_s)
        med = bs / statistics.median(v.step_s)
        base = ips if v.key == "public" else base
        ratio = f"{ips / base:6.2f}x" if base else f"{'-':>7s}"
        std = statistics.stdev(v.latency_ms) if len(v.latency_ms) > 1 else 0.0
        print(f"{v.label:32s} {ips:11.2f} {med:9.2f} {ratio} "
              f"{statistics.mean(v.latency_ms):9.2f} +- {std:5.2f}")
    if not bf16_native and any(v.autocast for v in variants):
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast is emulated")


if __name__ == "__main__":
    main()
