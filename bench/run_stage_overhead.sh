#!/usr/bin/env bash
# bench/run_stage_overhead.sh: the cost of running a `dataset` stage as its Action
# (`pochi run-stage` in a child process, since issue 9) against running it inside the
# pochi process (the binary given as POCHI_BEFORE, e.g. one built at commit b9efb60):
# a dataset stage over N JPEG images (resize 72, center crop 64, normalize), built from
# clean (`pochi clean` first), both binaries interleaved round by round.
#
#   POCHI_BEFORE=/path/to/old/pochi bench/run_stage_overhead.sh [ROUNDS=5] [IMAGES=1000]
#
# POCHI: the new binary [target/release/pochi]. The images are written once with the
# managed toolchain's Pillow (seeded noise). Prints CSV rows round,before_s,child_s,ratio
# and the median ratio (goal: within 1.05).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds="${1:-5}"; images="${2:-1000}"
pochi="$(realpath "${POCHI:-$here/../target/release/pochi}")"
before="$(realpath "${POCHI_BEFORE:?set POCHI_BEFORE to the in-process pochi binary}")"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python="$("$pochi" toolchain path)"
"$python" - "$work/images" "$images" <<'PY'
import os, sys
import numpy as np
from PIL import Image
root, count = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(count):
    folder = os.path.join(root, f"class{i % 10}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
PY
for side in before child; do
  mkdir -p "$work/$side"
  cat > "$work/$side/pipeline.toml" <<TOML
[stages.data]
kind = "dataset"
source = "$work/images"
transform = [{ resize = 72 }, { center_crop = 64 }, { normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] } }]
TOML
done
time_build() { # binary dir -> seconds
  "$1" clean "$2/pipeline.toml" >/dev/null 2>&1
  local start end
  start=$(date +%s.%N)
  "$1" build "$2/pipeline.toml" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
echo "round,before_s,child_s,ratio"
ratios=()
for round in $(seq 1 "$rounds"); do
  b=$(time_build "$before" "$work/before")
  c=$(time_build "$pochi" "$work/child")
  r=$(echo "$c / $b" | bc -l)
  ratios+=("$r")
  printf '%s,%.3f,%.3f,%.3f\n' "$round" "$b" "$c" "$r"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'median child/in-process ratio: %.3f\n' "$median"
