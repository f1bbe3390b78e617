#!/usr/bin/env bash
# bench/report_vs_python.sh: the report stage's ONNX Runtime throughput (Rust, `ort`,
# in process) against Python's onnxruntime on the same model, data, threads and protocol,
# interleaved round by round on the same machine (see docs/report-benchmark.md).
#
#   bench/report_vs_python.sh MODEL.onnx [THREADS=2] [ITERATIONS=100] [ROUNDS=3] [BATCH=1]
#
# POCHI: the pochi binary [target/release/pochi]. The Python side runs in pochi's managed
# toolchain (`pochi toolchain path`), i.e. the same onnxruntime library.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="$(realpath "$1")"; threads="${2:-2}"; iterations="${3:-100}"; rounds="${4:-3}"; batch="${5:-1}"
pochi="${POCHI:-$here/../target/release/pochi}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cd "$work"
python="$("$pochi" toolchain path)"
# Data: 8 seeded random samples of the model's input shape (batch axis replaced).
"$python" -I -c "
import numpy as np, onnx, sys
m = onnx.load(sys.argv[1], load_external_data=False)
dims = [d.dim_value or 1 for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
np.save('data.npy', np.random.default_rng(0).standard_normal([8] + dims).astype(np.float32))
" "$model"
cat > pipeline.toml <<TOML
[stages.bench]
kind = "report"
models = ["$model"]
data = "data.npy"
warmup = 10
iterations = $iterations
min_duration = "0s"
threads = $threads
batch = $batch
TOML
echo "round,rust_throughput,python_throughput,ratio,rust_median_ms,python_median_ms"
for round in $(seq 1 "$rounds"); do
  py="$("$python" -I "$here/ort_python_throughput.py" "$model" data.npy "$threads" 10 "$iterations" "$batch")"
  "$pochi" clean >/dev/null 2>&1 || true
  "$pochi" build >/dev/null 2>&1
  "$python" -I -c "
import json, sys
r = json.load(open('build/pipeline/bench/summary.json'))['models'][0]['latency']
p = json.loads(sys.argv[1])
print(f\"{sys.argv[2]},{r['throughput']:.2f},{p['throughput']:.2f},{r['throughput'] / p['throughput']:.3f},{r['median_ms']:.3f},{p['median_ms']:.3f}\")
" "$py" "$round"
done
