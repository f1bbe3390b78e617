#!/usr/bin/env bash
# bench/cache_build.sh: what the output cache costs and saves in builds (issue 10).
#
#   1. No-op builds with the cache against --no-cache, alternating round by round, on a
#      STAGES-stage chain of `cp` stages (bench/gen_pipelines.py), every stage up to date:
#      the stamp path (`pochi build`) and the full check (`pochi build --json`, which
#      checks every key). Goal: no measurable cost.
#   2. Switching back (wall and CPU time, user + system with the children, from
#      /usr/bin/time): one `command` stage writing an MB MiB output (random bytes from a
#      seed, through `openssl enc`, the stand-in for an export) built for
#      PRECISION=fp16, then int8 (untimed), then fp16 again, timed: restored from the cache
#      against the same build with --no-cache (the stage reruns). Goal: the restore costs
#      a fraction of the rebuild.
#
#   bench/cache_build.sh [ROUNDS=9]
#   POCHI=target/release/pochi STAGES=1000 MB=250 NOOP_ROUNDS=30 bench/cache_build.sh 9
#
# ROUNDS: rounds of switching back; NOOP_ROUNDS: rounds of no-op builds [3 x ROUNDS].
#
# POCHI: the binary [target/debug/pochi; its dependencies (hashing, copying) are built
# with opt-level 2 in the dev profile]. The cache is a fresh POCHI_OUTPUT_CACHE_DIR under
# the scratch directory (on the filesystem of $TMPDIR). Prints one CSV row per round and
# the median ratios. Needs python3, openssl, bc, GNU date and /usr/bin/time (Debian's `time`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds="${1:-9}"
stages="${STAGES:-1000}"
noop_rounds="${NOOP_ROUNDS:-$((rounds * 3))}"
mb="${MB:-250}"
pochi="$(realpath "${POCHI:-$here/../target/debug/pochi}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export POCHI_OUTPUT_CACHE_DIR="$work/cache" NO_COLOR=1
unset POCHI_CACHE_MAX_SIZE

now() { date +%s.%N; }
# seconds taken by the command (its output discarded; a failure stops the script)
timed() {
    local start end
    start="$(now)"
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
    end="$(now)"
    echo "$end - $start" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ---------------------------------------------------------------- 1. no-op builds
python3 "$here/gen_pipelines.py" --shape chain --stages "$stages" --out "$work/chain" >/dev/null 2>&1
cd "$work/chain"
"$pochi" build -j 2 >/dev/null 2>&1
# Past the stat cache's racy window (files written in the last 2 s are hashed again).
sleep 3
"$pochi" build --json >/dev/null 2>&1
echo "noop_round,stamp_cache_s,stamp_no_cache_s,full_cache_s,full_no_cache_s"
stamp_ratios=()
full_ratios=()
for round in $(seq 1 "$noop_rounds"); do
    # Which goes first alternates, so that neither always follows the other.
    if [ $((round % 2)) = 1 ]; then
        sc="$(timed "$pochi" build)"
        sn="$(timed "$pochi" build --no-cache)"
        fc="$(timed "$pochi" build --json)"
        fn="$(timed "$pochi" build --json --no-cache)"
    else
        sn="$(timed "$pochi" build --no-cache)"
        sc="$(timed "$pochi" build)"
        fn="$(timed "$pochi" build --json --no-cache)"
        fc="$(timed "$pochi" build --json)"
    fi
    stamp_ratios+=("$(echo "$sc / $sn" | bc -l)")
    full_ratios+=("$(echo "$fc / $fn" | bc -l)")
    printf '%s,%.4f,%.4f,%.4f,%.4f\n' "$round" "$sc" "$sn" "$fc" "$fn"
done
ran="$("$pochi" build --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"].get("ran", 0))')"
[ "$ran" = 0 ] || { echo "the no-op build ran $ran stages" >&2; exit 1; }

# ---------------------------------------------------------------- 2. switching back
mkdir -p "$work/switch"
cd "$work/switch"
write_pipeline() {
    cat > pipeline.toml <<TOML
[pipeline]
name = "switch"

[stages.export]
kind = "command"
run = ["sh", "-c", "head -c ${mb}M /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:\$PRECISION -pbkdf2 > {outputs.out}"]
outputs = { out = "out/model.onnx" }
env = { PRECISION = "$1" }
TOML
}
write_pipeline fp16
"$pochi" build >/dev/null 2>&1
# the count NAME in the summary FILE
count() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"].get(sys.argv[2], 0))' "$1" "$2"; }
# fp16 again after int8 (untimed): restored (`restore`) or rebuilt (`rebuild`); seconds
restore_or_rebuild() {
    local flags=() expect=restored_local seconds
    [ "$1" = rebuild ] && flags=(--no-cache) && expect=ran
    write_pipeline int8
    "$pochi" build >/dev/null 2>&1
    write_pipeline fp16
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$pochi" build --json "${flags[@]}" \
        > "$work/$1.json" 2>/dev/null || { echo "$1 failed" >&2; exit 1; }
    [ "$(count "$work/$1.json" "$expect")" = 1 ] || { echo "$1: not $expect" >&2; exit 1; }
    awk '{printf "%s %.3f\n", $1, $2 + $3}' "$work/time"
}
echo "switch_round,restore_wall_s,rebuild_wall_s,restore_cpu_s,rebuild_cpu_s"
switch_walls=()
switch_cpus=()
for round in $(seq 1 "$rounds"); do
    # Which goes first alternates (the page cache, the machine's other work).
    if [ $((round % 2)) = 1 ]; then
        read -r rw rc < <(restore_or_rebuild restore)
        read -r bw bc < <(restore_or_rebuild rebuild)
    else
        read -r bw bc < <(restore_or_rebuild rebuild)
        read -r rw rc < <(restore_or_rebuild restore)
    fi
    switch_walls+=("$(echo "$rw / $bw" | bc -l)")
    switch_cpus+=("$(echo "$rc / $bc" | bc -l)")
    printf '%s,%.2f,%.2f,%.3f,%.3f\n' "$round" "$rw" "$bw" "$rc" "$bc"
done

printf 'median cache/no-cache ratio of a no-op build (%s stages): stamp %.3f, full check %.3f\n' \
    "$stages" \
    "$(printf '%s\n' "${stamp_ratios[@]}" | median)" \
    "$(printf '%s\n' "${full_ratios[@]}" | median)"
printf 'median restore/rebuild ratio of switching back (%s MiB output): wall %.3f, cpu %.3f\n' \
    "$mb" "$(printf '%s\n' "${switch_walls[@]}" | median)" \
    "$(printf '%s\n' "${switch_cpus[@]}" | median)"
