#!/usr/bin/env bash
# What a lent GPU is for now, in one run (a lease is 15 minutes in all): the GPU goals of the
# serving issue (13) and the CUDA tests.
#   1. tests/test_cuda.py (CUDA codes equal the CPU's, batch-independent, served and trained on CUDA);
#   2. the serving benchmark on CUDA at the server's defaults, with its result file
#      (bench/results.py format: copy it to bench/results/serving_cuda.json and `make figures`);
#   3. the decoder's in-process speed at batch 32 and 256 (ms per 100-step batch, ms per step).
# It prints one table. Prepare here with bench/gpu_prepare.sh, then on the device machine,
# with ".gpu" carried:  bash bench/gpu_check.sh   ($OUT: where results go).
# CI never runs this; it needs no network (Python 3.12 and torch as the device has them).
# A rehearsal here on the CPU: INSTALL=0 DEVICE=cpu PYTHON=.venv/bin/python SERVING_ARGS=--quick bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
INSTALL=${INSTALL:-1}
SERVING_ARGS=${SERVING_ARGS:---concurrency 1,64 --warmup 0.5 --duration 1.5 --max-round 5}
SERVING_TIMEOUT_S=${SERVING_TIMEOUT_S:-240}  # the grid takes about 2 minutes on the H200
CUDA_TEST_TIMEOUT_S=${CUDA_TEST_TIMEOUT_S:-120}
DECODE_TIMEOUT_S=${DECODE_TIMEOUT_S:-120}
mkdir -p "$OUT"

if [ "$INSTALL" = 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl || exit 1
    export PATH=/tmp/site/bin:$PATH
fi
# The tree's own code first (import path = file path: the four roots of the sketchserve namespace),
# then the wheels' dependencies.
export PYTHONPATH=$PWD:$PWD/client:$PWD/server:$PWD/training:$PWD/bench:/tmp/site
export SKETCHSERVE_DATA=${SKETCHSERVE_DATA:-$PWD/.gpu/data} PYTHONUNBUFFERED=1

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo "cores $(nproc)"
} > "$OUT/summary.txt" 2>&1

timeout "$CUDA_TEST_TIMEOUT_S" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/tests.log" 2>&1
echo "test_cuda exit $?" >> "$OUT/tests.log"

# shellcheck disable=SC2086  # SERVING_ARGS is a list of flags
timeout "$SERVING_TIMEOUT_S" "$PY" bench/bench_serving.py --device "$DEVICE" $SERVING_ARGS \
    --out "$OUT/serving.md" --json "$OUT/serving_cuda.json" > "$OUT/serving.log" 2>&1
echo "serving bench exit $?" >> "$OUT/summary.txt"

timeout "$DECODE_TIMEOUT_S" "$PY" - "$DEVICE" >> "$OUT/summary.txt" 2>&1 <<'EOF'
"""The decoder alone, in-process: 100-step greedy batches at 32 and 256 (the issue's 'decode step' figure)."""
import sys
import time

import torch

from sketchserve.runtime import NOISE_CHANNELS, SketchRuntime

STEPS, REPEATS = 100, 5
device = torch.device(sys.argv[1])
runtime = SketchRuntime.load("models/face", device)  # the decoder module itself is timed, on the device
print("| decode batch | ms per 100-step batch | ms per step | sketches/s |")
print("|---:|---:|---:|---:|")
for batch in (32, 256):
    z = torch.zeros(batch, runtime.manifest.latent_size, device=device)
    noise = torch.zeros(batch, STEPS, NOISE_CHANNELS, device=device)
    with torch.inference_mode():
        runtime.decoder.sample(z, noise, 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(REPEATS):
            runtime.decoder.sample(z, noise, 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    ms = (time.perf_counter() - started) / REPEATS * 1000
    print(f"| {batch} | {ms:.1f} | {ms / STEPS:.3f} | {batch / ms * 1000:.0f} |")
EOF

grep -E "passed|failed|skipped|exit" "$OUT/tests.log" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
[ -f "$OUT/serving.md" ] && cat "$OUT/serving.md" || tail -n 20 "$OUT/serving.log"
