#!/usr/bin/env bash
# bench/schedule_check.sh: how close pochi's schedule comes to the best one (issue 13).
#
# Usage: bench/schedule_check.sh          (POCHI=target/release/pochi by default)
#
# Two graphs of `sleep` stages whose best makespan is known:
#   chain   a chain of three 3 s stages beside twelve independent 1 s stages, cpu = 2:
#           best 11 s (the chain first; 21 s of work on 2 slots, 9 s of chain).
#   mixed   a 3 s CPU export feeding a chain of two 2 s GPU stages, beside six 1 s CPU
#           stages, cpu = 2 and one declared GPU: best 7 s (the export first).
# Each runs three ways: the first build (no durations known: path length in stages
# decides), a rebuild after `pochi clean` (durations kept from the first run), and
# again after deleting the state (nothing known). Prints a Markdown table of wall time
# against the best schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
POCHI="$(realpath "${POCHI:-target/release/pochi}")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[ -x "$POCHI" ] || cargo build --release

stage() { # NAME SECONDS [DEVICE] [INPUT]
    printf '[stages.%s]\nkind = "command"\nrun = ["sh", "-c", "sleep %s; echo %s > {outputs.out}"]\noutputs = { out = "out/%s" }\n' "$1" "$2" "$1" "$1"
    [ -n "${3:-}" ] && printf 'device = "%s"\n' "$3"
    [ -n "${4:-}" ] && printf 'inputs = { i = "@%s" }\n' "$4"
    echo
}

mkdir -p "$WORK/chain" "$WORK/mixed"
{
    printf '[resources]\ncpu = 2\n\n'
    stage a1 3 && stage a2 3 "" a1 && stage a3 3 "" a2
    for i in $(seq -w 1 12); do stage "b$i" 1; done
} >"$WORK/chain/pipeline.toml"
{
    printf '[resources]\ncpu = 2\ngpus = [0]\n\n'
    stage export 3 cpu && stage engine1 2 cuda export && stage engine2 2 cuda engine1
    for i in $(seq 1 6); do stage "c$i" 1 cpu; done
} >"$WORK/mixed/pipeline.toml"

wall() { # DIR
    local start end
    start=$(date +%s.%N)
    (cd "$1" && "$POCHI" build >/dev/null 2>&1)
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}
row() { python3 -c 'import sys; g,w,b=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]); print(f"| {g} | {w:.2f} s | {b:.0f} s | {w/b:.3f}x |")' "$@"; }

echo "| graph, run | pochi | best schedule | ratio |"
echo "|---|---|---|---|"
for graph in chain mixed; do
    best=11
    [ "$graph" = mixed ] && best=7
    dir="$WORK/$graph"
    row "$graph, first build" "$(wall "$dir")" "$best"
    (cd "$dir" && "$POCHI" clean >/dev/null 2>&1)
    row "$graph, after pochi clean" "$(wall "$dir")" "$best"
    rm -rf "$dir/.pochi" "$dir/out"
    row "$graph, state deleted" "$(wall "$dir")" "$best"
done
