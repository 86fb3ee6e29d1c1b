#!/usr/bin/env bash
# Everything a lent GPU is for, in one run (a lease is 15 minutes in all):
#   1. the training runs below, side by side on the one GPU (--max-minutes each), and meanwhile
#      the whole test suite (tests/test_cuda.py runs only where CUDA is);
#   2. export of each run (best on validation, and last), packed into $OUT;
#   3. the serving benchmark on CUDA (bench/bench_serving.py --device cuda) of models/face.
# It prints a short table. Prepare here with bench/gpu_prepare.sh, then on the device machine,
# with ".gpu" carried:  bash bench/gpu_check.sh   ($OUT: where results go; TRAIN_MINUTES: budget).
# CI never runs this; it needs no network (Python 3.12 and torch as the device has them).
# A rehearsal here on the CPU: INSTALL=0 DEVICE=cpu TRAIN_MINUTES=0.2 PATH=.venv/bin:$PATH PYTHON=.venv/bin/python
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
TRAIN_MINUTES=${TRAIN_MINUTES:-3.5}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
INSTALL=${INSTALL:-1}
PART_BYTES=15500000       # each returned file stays under the device tool's 16 MiB
MODELS_BUDGET=61000000    # all model parts together: 4 parts (the tool returns 8 files, 64 MiB at most)
SERVING_TIMEOUT_S=${SERVING_TIMEOUT_S:-120}  # the serving benchmark's grid takes about 80 s
CUDA_TEST_TIMEOUT_S=90                       # then the rest of the suite while the trainings run
SUITE_TIMEOUT_S=${SUITE_TIMEOUT_S:-140}      # (the suite takes about 3 min on 2 cores)
REPO=$PWD
mkdir -p "$OUT" /tmp/gpu_runs
RUNS=/tmp/gpu_runs
LOGS=/tmp/gpu_logs
mkdir -p "$LOGS"

if [ "$INSTALL" = 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export SKETCHSERVE_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1
D=.gpu/data/sketchrnn
FOUR=("$D/face.npz" "$D/pig.npz" "$D/alarm clock.npz" "$D/radio.npz")
SMALL=(--enc-hidden 128 --dec-hidden 256 --latent-size 64)
COMMON=(--device "$DEVICE" --threads 1 --max-steps 100000 --max-minutes "$TRAIN_MINUTES")

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} > "$OUT/summary.txt" 2>&1

# train NAME FLAGS...: one run (the clustering benchmark's models train on the four categories).
train() {
    local name=$1; shift
    sketchserve train --out "$RUNS/$name" "${COMMON[@]}" "$@" > "$LOGS/$name.train.log" 2>&1
    echo "$name train exit $?" >> "$LOGS/exits.txt"
}
train gpu_pos_kl0.1 --data "${FOUR[@]}" "${SMALL[@]}" --encoder-input offsets+positions --kl-weight 0.1 &
train gpu_kl0.1 --data "${FOUR[@]}" "${SMALL[@]}" --kl-weight 0.1 &
train gpu_pos_kl1 --data "${FOUR[@]}" "${SMALL[@]}" --encoder-input offsets+positions --kl-weight 1.0 &
train gpu_paper_pos --data "${FOUR[@]}" --encoder-input offsets+positions &

# Tests and benchmarks run from outside the checkout, so that its bare sketchserve/ folder
# (the package's root without server/, client/, training/) does not shadow the installed package.
cd /tmp
timeout "$CUDA_TEST_TIMEOUT_S" "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" > "$OUT/tests.log" 2>&1
echo "test_cuda exit $?" >> "$OUT/tests.log"
timeout "$SUITE_TIMEOUT_S" "$PY" -m pytest -q -p no:cacheprovider --ignore "$REPO/tests/test_cuda.py" "$REPO/tests" > "$LOGS/all_tests.log" 2>&1
echo "all tests exit $?" >> "$LOGS/all_tests.log"
tail -n 30 "$LOGS/all_tests.log" >> "$OUT/tests.log"
wait

for run in "$RUNS"/*/; do
    name=$(basename "$run")
    sketchserve export "$run" --out "$RUNS/${name}_best" > "$LOGS/$name.export.log" 2>&1 &
    sketchserve export "$run" --checkpoint last --out "$RUNS/${name}_last" >> "$LOGS/$name.export.log" 2>&1 &
done
wait

for run in "$RUNS"/*/; do
    [ -f "$run/metrics.jsonl" ] || continue
    mkdir -p "$LOGS/$(basename "$run")"
    cp "$run"/metrics.jsonl "$run"/loss.png "$LOGS/$(basename "$run")/" 2>/dev/null
done
# Models come back in parts under the size limits, best exports first (curves and logs in logs.tar.gz).
"$PY" - "$RUNS" "$OUT" "$PART_BYTES" "$MODELS_BUDGET" >> "$OUT/summary.txt" 2>&1 <<'EOF'
import io, json, sys, tarfile
from pathlib import Path
runs, out, part_bytes, budget = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print("| run | steps | best step | valid loss (best) | valid L_R | KL | steps/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for run in sorted(p for p in runs.iterdir() if (p / "metrics.jsonl").exists()):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["valid_loss"]) if evals else {}
    rate = train[-1]["steps_per_s"] if train else 0.0
    print(f"| {run.name} | {evals[-1]['step'] if evals else 0} | {best.get('step', '-')} | "
          f"{best.get('valid_loss', float('nan')):.4f} | {best.get('valid_recon', float('nan')):.4f} | "
          f"{best.get('valid_kl', float('nan')):.3f} | {rate:.1f} |")
BIG = 5_000_000  # paper-size models: their best exports come before their last ones
def size_of(model): return sum(f.stat().st_size for f in model.iterdir())
exports = sorted(list(runs.glob("*_best")) + list(runs.glob("*_last")),
                 key=lambda m: (size_of(m) > BIG, m.name.endswith("_last"), m.name))
buffer = io.BytesIO()
with tarfile.open(fileobj=buffer, mode="w") as tar:
    used = 0
    for model in exports:
        size = size_of(model)
        if used + size > budget:
            print(f"left out (over the return budget): {model.name}")
            continue
        used += size
        tar.add(model, arcname=model.name)
data = buffer.getvalue()
for index, start in enumerate(range(0, len(data), part_bytes)):
    (out / f"models.tar.{index:02d}").write_bytes(data[start:start + part_bytes])
print(f"models.tar: {len(data)} bytes in {(len(data) + part_bytes - 1) // part_bytes} part(s)")
EOF
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .

timeout "$SERVING_TIMEOUT_S" "$PY" "$REPO/bench/bench_serving.py" --device "$DEVICE" --concurrency 1,64 --warmup 0.5 --duration 1.5 --max-round 5 \
    --out "$OUT/serving_cuda.md" > "$LOGS/serving.log" 2>&1
echo "serving bench exit $?" >> "$OUT/summary.txt"
tail -n 5 "$LOGS/serving.log" >> "$OUT/summary.txt"
cat "$LOGS/exits.txt" >> "$OUT/summary.txt"
grep -E "passed|failed|exit" "$OUT/tests.log" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
[ -f "$OUT/serving_cuda.md" ] && cat "$OUT/serving_cuda.md"
