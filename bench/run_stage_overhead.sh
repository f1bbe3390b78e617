#!/usr/bin/env bash
# bench/run_stage_overhead.sh: the cost of running a `dataset` stage as its Action
# (`pochi run-stage` in a child process, since issue 9) against running it inside the
# pochi process (the binary given as POCHI_BEFORE, e.g. one built at commit b9efb60):
# a dataset stage over N JPEG images (resize 72, center crop 64, normalize), built from
# clean (`pochi clean` first), both binaries interleaved round by round. Wall time and CPU
# time (user + system, the children included: steadier than wall time on a busy machine).
#
#   POCHI_BEFORE=/path/to/old/pochi bench/run_stage_overhead.sh [ROUNDS=5] [IMAGES=1000]
#
# POCHI: the new binary [target/release/pochi]. The images are written once with the
# managed toolchain's Pillow (seeded noise). Prints CSV rows and the median ratios
# (goal: within 1.05). Needs /usr/bin/time (Debian's `time`).
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
time_build() { # binary dir -> "wall_s cpu_s" (cpu: user + system of pochi and its children)
  "$1" clean "$2/pipeline.toml" >/dev/null 2>&1
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$1" build "$2/pipeline.toml" >/dev/null 2>&1
  awk '{printf "%s %.3f\n", $1, $2 + $3}' "$work/time"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "round,before_wall_s,child_wall_s,wall_ratio,before_cpu_s,child_cpu_s,cpu_ratio"
walls=(); cpus=()
for round in $(seq 1 "$rounds"); do
  read -r bw bc < <(time_build "$before" "$work/before")
  read -r cw cc < <(time_build "$pochi" "$work/child")
  wr=$(echo "$cw / $bw" | bc -l); cr=$(echo "$cc / $bc" | bc -l)
  walls+=("$wr"); cpus+=("$cr")
  printf '%s,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f\n' "$round" "$bw" "$cw" "$wr" "$bc" "$cc" "$cr"
done
printf 'median child/in-process ratio: wall %.3f, cpu %.3f\n' \
  "$(printf '%s\n' "${walls[@]}" | median)" "$(printf '%s\n' "${cpus[@]}" | median)"
