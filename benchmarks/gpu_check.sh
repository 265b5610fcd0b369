#!/usr/bin/env bash
# The GPU check (docs/design.md §6), one short run on a CUDA machine:
#   1. the GPU tests (pytest -m gpu: augmentation and pinned copies on the device, captured
#      CUDA graphs against the eager network);
#   2. `privatenet bench` at the paper's batch and size: the public recipe against ours in
#      fp32, fused Adam, channels_last, bf16, both and compiled, each against the GPU's own
#      GEMM rate, and batch-1 latency launched kernel by kernel and replayed from a CUDA graph;
#   3. benchmarks/loop_vs_module.py: our training loop (eager and compiled) against the module
#      alone, and the paper preset's hours from `reproduce --dry-run` and from the loop's rate;
#   4. a slice of the quick protocol at 224 px: the privacy networks' rates through the loop.
# Prints everything; writes its files under $OUT (default /tmp/gpu_check).
#
#   bash benchmarks/gpu_check.sh            # about 6 minutes on one H100/H200
#   REHEARSE=1 bash benchmarks/gpu_check.sh # every step on the CPU with tiny sizes (~4 min on
#                                           # 2 cores): a script error costs no GPU time
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if [[ -n "${REHEARSE:-}" ]]; then
    DEV=cpu
    echo "rehearsal: every step on the CPU with tiny sizes; the figures mean nothing"
    BENCH=(--model arm_small --image-size 64 --batch-size 32 --steps 2 --warmup 1
           --latency-iters 3 --variants fp32,channels_last)
    LOOP=(--model arm_small --image-size 64 --batch-size 64 --faces 600 --epochs 2 --steps 2
          --paper-faces 300)
    SLICE=(--model arm_small --image-size 64 --data synthfaces:n=600,size=64 --epochs 2
           --adversary-epochs 1 --privacy-epochs 2)
else
    DEV=cuda
    BENCH=(--threads 8 --batch-size 256 --steps 20 --warmup 5 --latency-iters 100 --compile)
    LOOP=(--compile)
    SLICE=(--data synthfaces:n=5000,size=224 --epochs 3 --adversary-epochs 3
           --privacy-epochs 3)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== the GPU tests (pytest -m gpu): augmentation, pinned copies, CUDA paths =="
$PY -m pytest -q -p no:cacheprovider -m gpu tests

echo "== privatenet bench: arm_resnet18, 224 px, random tensors, batch 256 (the paper's) =="
$PY -m privatenet bench --device $DEV "${BENCH[@]}" --out "$OUT/bench.json"

echo "== our loop against the module alone; the paper preset's projected GPU-hours =="
$PY benchmarks/loop_vs_module.py --device $DEV "${LOOP[@]}" --cache-dir "$OUT/cache" --out "$OUT"

echo "== quick-protocol slice: synthfaces 5,000 faces at 224 px, 3 epochs, our loop =="
$PY -m privatenet reproduce --preset quick "${SLICE[@]}" --private age --taps backbone \
    --losses confusion,hsic --lambdas 0.5 --audit-zoo none --device $DEV \
    --cache-dir "$OUT/cache" --out "$OUT/quick" > "$OUT/quick.log" 2>&1 \
    || { tail -20 "$OUT/quick.log"; exit 1; }
$PY - "$OUT/quick" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
res = json.loads((run / "results.json").read_text())
print("stage seconds:", {s["stage"]: s.get("seconds") for s in res["stages"] if not s["cached"]})
rows = res["rows"]["train"]  # the defence's share; image-* adversaries train on fewer rows
for folder in sorted(run.glob("stages/*/train")):
    if folder.parent.name.startswith(("image-", "attack-", "known-")):
        continue  # adversary heads, not networks
    hist = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    later = hist[1:] or hist  # the first epoch pays for start-up and kernel selection
    ips = rows * len(later) / sum(h["seconds"] for h in later)
    print(f"{folder.parent.name}: {ips:,.0f} training images/s (epochs 2-{len(hist)})")
lat = res["latency_ms"]
print("Table 3 (fp32, batch 1, eager):", ", ".join(f"{r['network']} {r['mean']:.2f} ms"
                                                   for r in lat))
PY
