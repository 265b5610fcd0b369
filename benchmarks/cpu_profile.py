"""Where a training step's time goes, by operator: the gap between a network's training rate
and the machine's own GEMM rate, taken apart.

    python benchmarks/cpu_profile.py --model arm_resnet18 --image-size 224 --batch-size 32

Profiles ``--steps`` training steps (forward, cross-entropy, backward, Adam) of one variant of
``privatenet bench`` on random tensors after ``--warmup`` untimed ones, and prints the self time
of each operator group (convolutions and matrix products, batch norm, element-wise, pooling,
the optimizer, the rest) with the share of the step and, for the products, the rate they reach
against the GEMM rate measured in the same run. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import re
import time

import torch
from torch.profiler import ProfilerActivity, profile

from privatenet.bench import BenchConfig, gemm_rate, training_flops
from privatenet.models import create_model, model_options

#: Operator groups, first match wins (aten operator names, self time).
GROUPS = (
    ("convolution and matrix products", r"convolution|conv2d|mkldnn_conv|addmm|^aten::mm$|"
                                        r"bmm|matmul|linear"),
    ("batch norm", r"batch_norm"),
    ("optimizer", r"_fused_adam|_foreach|adam|lerp|addcdiv|addcmul|sqrt"),
    ("pooling", r"pool"),
    ("element-wise (relu, add, mul, copies)", r"relu|threshold|add|mul|div|sub|copy|clone|"
                                              r"fill|zero|sigmoid|softmax|exp|where|cat"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="arm_resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fused", action="store_true", help="fused Adam")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    BenchConfig(model=a.model, image_size=a.image_size, batch_size=a.batch_size)  # checks
    torch.manual_seed(0)
    sized = {"image_size": a.image_size} if "image_size" in model_options(a.model) else {}
    net = create_model(a.model, num_classes=7, **sized)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size)
    y = torch.randint(0, 7, (a.batch_size,))
    flops = training_flops(net, x, y)
    if a.channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4,
                           **({"fused": True} if a.fused else {}))

    def step() -> None:
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    net.train()
    for _ in range(a.warmup):
        step()
    gemm = gemm_rate(torch.device("cpu"))
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    wall = (time.perf_counter() - start) / a.steps
    # self time of the operators (aten::), the leaves of the call tree, per step
    totals: dict[str, float] = {}
    ops: dict[str, float] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        seconds = ev.self_cpu_time_total / 1e6 / a.steps
        ops[ev.key] = seconds
        group = next((g for g, pat in GROUPS if re.search(pat, ev.key)), "other")
        totals[group] = totals.get(group, 0.0) + seconds
    measured = sum(totals.values())
    print(f"{a.model} {a.image_size}x{a.image_size}, batch {a.batch_size}, "
          f"{'channels_last' if a.channels_last else 'contiguous'}, "
          f"{'fused' if a.fused else 'default'} Adam, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"GEMM {gemm:.1f} GFLOP/s; a step: {flops * a.batch_size / 1e9:.1f} GFLOP in "
          f"{wall:.2f} s under the profiler = {flops * a.batch_size / wall / 1e9:.1f} GFLOP/s "
          f"({flops * a.batch_size / wall / 1e9 / gemm:.0%} of GEMM)")
    print(f"{'operator group':42s} {'s/step':>7s} {'share':>6s}")
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        extra = ""
        if group.startswith("convolution"):
            rate = flops * a.batch_size / seconds / 1e9
            extra = f"  {rate:.1f} GFLOP/s in the products = {rate / gemm:.0%} of GEMM"
        print(f"{group:42s} {seconds:7.3f} {seconds / measured:6.1%}{extra}")
    print(f"{'(operators, all)':42s} {measured:7.3f}; wall per step {wall:.3f} s")
    print("top operators by self time:")
    for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:40s} {seconds:7.3f} s {seconds / measured:6.1%}")


if __name__ == "__main__":
    main()
