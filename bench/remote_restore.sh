#!/usr/bin/env bash
# bench/remote_restore.sh: a stage with one 250 MB output, built (run and uploaded to
# BuildGrid on loopback), then in fresh clones: restored from BuildGrid with an empty
# local cache, restored from the local cache, and run again with --no-cache, interleaved
# round by round in one run (best of ROUNDS). The stage writes random bytes (so a run is
# never byte-identical to a restore); a real rebuild of such an output is far slower (the
# full-size SwinUNETR export of BENCHMARKS.md section 2: about 190 s on the CPU).
#
#   bench/remote_restore.sh [MEGABYTES=250] [ROUNDS=3]
#
# Uses target/debug/pochi (built here if missing: pochi's code unoptimized, its
# dependencies with opt-level 2). Prints a Markdown table.
set -euo pipefail
megabytes="${1:-250}"
rounds="${2:-3}"
# shellcheck source=bench/remote_common.sh
source "$(dirname "$0")/remote_common.sh"
(cd "$root" && nice -n 10 cargo build -q 2>&1 | tail -3)
pochi="$root/target/debug/pochi"
url="grpc://127.0.0.1:$port"

pipeline() { # $1: a nonce, so each round's stage is new to the server
    cat <<EOF
[pipeline]
name = "restore"

[stages.export]
kind = "command"
run = ["sh", "-c", "head -c $((megabytes * 1000 * 1000)) /dev/urandom > {outputs.out}"]
outputs = { out = "out/model.onnx" }
env = { NONCE = "$1" }
EOF
}

# Seconds one `pochi build` takes in project $1 with output cache $2 (more flags after).
timed() {
    local dir="$1" cache="$2"
    shift 2
    local start end
    start="$(date +%s.%N)"
    (cd "$dir" && POCHI_OUTPUT_CACHE_DIR="$cache" "$pochi" build "$@" > "$dir.log" 2>&1) \
        || { cat "$dir.log" >&2; exit 1; }
    end="$(date +%s.%N)"
    python3 -c "print(f'{$end - $start:.3f}')"
}

best() { printf '%s\n' "$@" | sort -g | head -1; }
first=(); remote=(); local_=(); rerun=()
for round in $(seq 1 "$rounds"); do
    nonce="$round-$RANDOM-$$"
    for name in a b c d; do
        mkdir -p "$work/$round/$name"
        pipeline "$nonce" > "$work/$round/$name/pipeline.toml"
    done
    # a: runs and uploads; b: a fresh clone, empty cache: restores from BuildGrid;
    # c: a clone sharing b's local cache: restores locally; d: --no-cache, runs.
    first+=("$(timed "$work/$round/a" "$work/$round/cache-a" --remote-cache "$url")")
    remote+=("$(timed "$work/$round/b" "$work/$round/cache-b" --remote-cache "$url")")
    local_+=("$(timed "$work/$round/c" "$work/$round/cache-b" --remote-cache "$url")")
    rerun+=("$(timed "$work/$round/d" "$work/$round/cache-d" --no-cache)")
    cmp -s "$work/$round/a/out/model.onnx" "$work/$round/b/out/model.onnx" \
        || { echo "the restored output differs" >&2; exit 1; }
    cmp -s "$work/$round/a/out/model.onnx" "$work/$round/c/out/model.onnx" \
        || { echo "the restored output differs" >&2; exit 1; }
    rm -rf "${work:?}/$round"
done
r="$(best "${rerun[@]}")"
echo "| ${megabytes} MB output, best of $rounds | seconds | vs running the stage |"
echo "| --- | --- | --- |"
for row in "run + upload to BuildGrid:$(best "${first[@]}")" \
    "restore from BuildGrid (empty local cache):$(best "${remote[@]}")" \
    "restore from the local cache:$(best "${local_[@]}")" \
    "run with --no-cache:$r"; do
    label="${row%%:*}"
    seconds="${row##*:}"
    echo "| $label | $seconds | $(python3 -c "print(f'{$seconds / $r:.2f}x')") |"
done
