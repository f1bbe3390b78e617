#!/bin/sh
# The whole of `pochi build pipelines/swin_unetr.toml` from a clean state, measured once
# (BENCHMARKS.md "SwinUNETR end to end"): the wall time, the peak resident memory of the
# largest single process (`/usr/bin/time -v`), the peak of everything running at once and
# of each stage (bench/tree_peak_rss.py --per-child), and each stage's duration from
# pochi's own JSON summary. The comparison measured in the same run: the sum of the stage
# durations (what running them one after another would take) against the wall time.
#
#     bench/swin_unetr_end_to_end.sh            # POCHI=target/release/pochi OUT=/tmp/swin_unetr_e2e
#
# It deletes pipelines/build/swin_unetr and the pipeline's state (pipelines/.pochi/v1/
# swin_unetr) first, and builds with an empty output cache of its own
# (POCHI_OUTPUT_CACHE_DIR in a temporary directory, removed afterwards), so nothing is
# restored and the stores are timed as on a fresh machine. CPU heavy (about an hour on
# 2 cores): it runs under `nice -n 10`.
set -eu
cd "$(dirname "$0")/.."
POCHI=${POCHI:-target/release/pochi}
OUT=${OUT:-/tmp/swin_unetr_e2e}
mkdir -p "$OUT"
rm -rf pipelines/build/swin_unetr pipelines/.pochi/v1/swin_unetr
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
status=0
POCHI_OUTPUT_CACHE_DIR=$cache nice -n 10 /usr/bin/time -v -o "$OUT/time.txt" \
    python3 bench/tree_peak_rss.py --per-child --log "$OUT/rss.log" -- \
    "$POCHI" build --json pipelines/swin_unetr.toml >"$OUT/build.json" 2>"$OUT/build.err" ||
    status=$?
grep -E "^(wall|child) " "$OUT/build.err" || true
python3 bench/summarize_build.py "$OUT/build.json" "$OUT/time.txt"
exit "$status"
