#!/usr/bin/env bash
# bench/engine_paths.sh: pochi against ninja on every path of the engine (issue 13), as
# ratios measured in one interleaved run on the same machine.
#
# Usage: bench/engine_paths.sh            (POCHI=target/release/pochi by default)
#   SHAPES="chain fanout diamond" N=10000 RUNS=10 BUILD_RUNS=1 bench/engine_paths.sh
#
# For each shape it generates the same graph twice with bench/gen_pipelines.py (one copy
# per tool, so neither sees the other's outputs), then measures, pochi and ninja taking
# turns:
#   full build      from nothing (outputs and state removed), BUILD_RUNS times each
#   no-op stamp     `pochi build` against `ninja` with everything built (hyperfine)
#   no-op check     `pochi build --json` (the full content check: the stamp is bypassed)
#   one change      one source file edited (the first), then a rebuild of what depends on it
# and prints a Markdown table with pochi / ninja ratios. Needs ninja and hyperfine
# (bench/run.sh installs both). Timing is wall clock: on a shared machine, compare ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
POCHI="$(realpath "${POCHI:-target/release/pochi}")"
SHAPES="${SHAPES:-chain fanout diamond}"
N="${N:-10000}"
RUNS="${RUNS:-10}"
BUILD_RUNS="${BUILD_RUNS:-1}"
JOBS="${JOBS:-2}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[ -x "$POCHI" ] || cargo build --release
command -v ninja >/dev/null && command -v hyperfine >/dev/null || {
    echo "engine_paths: needs ninja and hyperfine (apt-get install ninja-build hyperfine)" >&2
    exit 2
}

now() { date +%s.%N; }
# timed DIR COMMAND...: runs COMMAND in DIR, prints its wall time in seconds.
timed() {
    local dir=$1 start end
    shift
    start=$(now)
    (cd "$dir" && "$@" >/dev/null 2>&1)
    end=$(now)
    echo "$end - $start" | bc -l
}
mean() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(sum(v)/len(v))' "$@"; }
hf_mean() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(" ".join(str(x["mean"]) for x in r))' "$1"; }
row() { python3 -c 'import sys; n,p,q=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]); f=lambda s: f"{s*1e3:.0f} ms" if s<10 else f"{s:.1f} s"; print(f"| {n} | {f(p)} | {f(q)} | {p/q:.2f}x |")' "$@"; }

echo "| path | pochi | ninja | pochi / ninja |"
echo "|---|---|---|---|"
for shape in $SHAPES; do
    p="$WORK/$shape-pochi"
    n="$WORK/$shape-ninja"
    python3 bench/gen_pipelines.py --shape "$shape" --stages "$N" --out "$p" >/dev/null 2>&1
    python3 bench/gen_pipelines.py --shape "$shape" --stages "$N" --out "$n" >/dev/null 2>&1
    builds_p=()
    builds_n=()
    for _ in $(seq "$BUILD_RUNS"); do
        rm -rf "$p/out" "$p/.pochi" && mkdir -p "$p/out"
        rm -rf "$n/out" "$n/.ninja_log" "$n/.ninja_deps" && mkdir -p "$n/out"
        builds_p+=("$(timed "$p" "$POCHI" build -j "$JOBS")")
        builds_n+=("$(timed "$n" ninja -j "$JOBS")")
    done
    row "$shape $N: full build" "$(mean "${builds_p[@]}")" "$(mean "${builds_n[@]}")"
    (cd "$p" && "$POCHI" build -j "$JOBS" >/dev/null 2>&1)
    hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$WORK/noop.json" \
        "$POCHI build -j $JOBS $p/pipeline.toml" \
        "$POCHI build -j $JOBS --json $p/pipeline.toml" \
        "ninja -C $n -j $JOBS" >/dev/null 2>&1
    read -r stamp check ninja_noop < <(hf_mean "$WORK/noop.json")
    row "$shape $N: no-op via the stamp" "$stamp" "$ninja_noop"
    row "$shape $N: no-op full check (--json)" "$check" "$ninja_noop"
    first=$(cd "$p/src" && ls | head -n 1)
    echo "changed" >>"$p/src/$first"
    echo "changed" >>"$n/src/$first"
    change_p=$(timed "$p" "$POCHI" build -j "$JOBS")
    change_n=$(timed "$n" ninja -j "$JOBS")
    row "$shape $N: one source changed" "$change_p" "$change_n"
done
