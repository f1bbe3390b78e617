#!/usr/bin/env bash
# bench/report_precisions.sh: per precision (fp32, fp16, int8), the median latency of
# pochi's report stage (ONNX Runtime in process through `ort`, no `threads` key: ONNX
# Runtime's defaults) against Python's `onnxruntime.InferenceSession(MODEL)` with no
# options (its defaults), on the same ONNX files: pipelines/resnet18.toml's `onnx`,
# `onnx_fp16` and `onnx_int8` (ModelOpt), built first in a scratch copy. Batch 1, the same
# 8 seeded samples, 10 warm-up runs, ITERATIONS timed runs; pochi and Python interleaved
# round by round on the same machine and the same libonnxruntime.
#
#   bench/report_precisions.sh [ROUNDS=3] [ITERATIONS=50]
#
# POCHI: the pochi binary [target/release/pochi]. THREADS=N: both sides with N intra-op
# threads (pochi `threads = N`, Python intra-op N, inter-op 1) instead of the defaults.
# WORK=DIR: build and keep the models there (a second run reuses them).
# POCHI_BEFORE: a second pochi binary (e.g. one built at ORT_ENABLE_LAYOUT) timed in the
# same rounds; its median is the last column. Prints CSV rows
# round,precision,pochi_median_ms,python_median_ms,ratio,python_layout_median_ms,
# pochi_min_ms,python_min_ms,min_ratio[,before_median_ms] (python_layout: Python at ORT_ENABLE_LAYOUT, the
# level pochi used before, for comparison; the minimum is far less disturbed than the
# median by other work on a shared machine) and, last, the median ratios per precision.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds="${1:-3}"; iterations="${2:-50}"
pochi="$(realpath "${POCHI:-$here/../target/release/pochi}")"
if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK"; work="$(realpath "$WORK")"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
threads="${THREADS:-}"
cp -r "$here/../pipelines/resnet18.toml" "$here/../pipelines/scripts" "$work/"
cd "$work"
python="$("$pochi" toolchain path)"
# The three precisions (the engine and report stages are not needed).
"$pochi" build resnet18.toml -t onnx_fp16 -t onnx_int8 >&2
declare -A models=(
  [fp32]="$work/build/resnet18/resnet18.onnx"
  [fp16]="$(ls "$work"/build/resnet18/onnx_fp16*.onnx | head -1)"
  [int8]="$(ls "$work"/build/resnet18/onnx_int8*.onnx | head -1)"
)
"$python" -I -c "
import numpy as np
np.save('data.npy', np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32))
"
echo "round,precision,pochi_median_ms,python_median_ms,ratio,python_layout_median_ms,pochi_min_ms,python_min_ms,min_ratio${POCHI_BEFORE:+,before_median_ms}"
results="$work/results.csv"; : > "$results"
for round in $(seq 1 "$rounds"); do
  for precision in fp32 fp16 int8; do
    model="${models[$precision]}"
    mkdir -p "r_$precision"
    cat > "r_$precision/pipeline.toml" <<TOML
[stages.bench]
kind = "report"
models = ["$model"]
data = "$work/data.npy"
warmup = 10
iterations = $iterations
min_duration = "0s"
batch = 1
${threads:+threads = $threads}
TOML
    py="$("$python" -I "$here/ort_python_throughput.py" "$model" data.npy "${threads:-default}" 10 "$iterations" 1)"
    (cd "r_$precision" && { "$pochi" clean >/dev/null 2>&1 || true; } && "$pochi" build >/dev/null && cp build/pipeline/bench/summary.json pochi.json)
    layout="$("$python" -I "$here/ort_python_throughput.py" "$model" data.npy layout 10 "$iterations" 1)"
    before=""
    if [ -n "${POCHI_BEFORE:-}" ]; then
      before="$(cd "r_$precision" && { "$POCHI_BEFORE" clean >/dev/null 2>&1 || true; } && "$POCHI_BEFORE" build >/dev/null \
        && "$python" -I -c "import json; print(json.load(open('build/pipeline/bench/summary.json'))['models'][0]['latency']['median_ms'])")"
    fi
    "$python" -I -c "
import json, sys
r = json.load(open(sys.argv[3]))['models'][0]['latency']
p = json.loads(sys.argv[1]); q = json.loads(sys.argv[5])
print(f\"{sys.argv[2]},{sys.argv[4]},{r['median_ms']:.3f},{p['median_ms']:.3f},{r['median_ms'] / p['median_ms']:.3f},{q['median_ms']:.3f},{r['min_ms']:.3f},{p['min_ms']:.3f},{r['min_ms'] / p['min_ms']:.3f}\" + (f\",{float(sys.argv[6]):.3f}\" if sys.argv[6] else \"\"))
" "$py" "$round" "r_$precision/pochi.json" "$precision" "$layout" "$before" | tee -a "$results"
  done
done
"$python" -I -c "
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
for p in ('fp32', 'fp16', 'int8'):
    ratios = [float(r[4]) for r in rows if r[1] == p]
    mins = [float(r[8]) for r in rows if r[1] == p]
    print(f'{p}: pochi / Python median latency, median over {len(ratios)} rounds {statistics.median(ratios):.3f}; minimum latency {statistics.median(mins):.3f}')
" "$results"
