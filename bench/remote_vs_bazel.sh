#!/usr/bin/env bash
# bench/remote_vs_bazel.sh: the time remote execution adds per action, pochi against Bazel,
# on the same farm in one run. One BuildGrid 0.4.4 with Execution (PostgreSQL) and one
# STAND-IN worker (tests/servers/standin_worker.py, a test double of a farm worker; it
# collects Bazel 2.1's `output_files`, which buildbox does not), all on 127.0.0.1, started
# with the test harness's launcher (tests/servers/launch.py). Per round, interleaved:
#   pochi: a pipeline of ACTIONS serial `command` stages (each reads the previous one's
#          output and appends a line), `pochi build --no-cache -j 1` here, then with
#          `executor = "remote"` and `--remote-executor --remote-jobs 1`;
#   Bazel: ACTIONS serial genrules doing the same (`cat $< > $@; echo ... >> $@`),
#          `bazel build --spawn_strategy=local`, then `--spawn_strategy=remote
#          --remote_executor=grpc://...`;
# every build with new action contents (a tag in each command), so no action cache
# (pochi's, Bazel's, the farm's) ever answers. The order of the tools alternates round by
# round. Overhead per action = (remote wall - local wall) / ACTIONS, per tool; the ratio
# is pochi's over Bazel's.
#
#   bench/remote_vs_bazel.sh [ACTIONS=20] [ROUNDS=3]
#
# Bazel: npm's @bazel/bazel-linux_x64 2.1.0 (a self-contained Bazel with its JDK),
# installed once into ${XDG_CACHE_HOME:-~/.cache}/pochi/bench/bazel-2.1.0; its server runs
# with --output_user_root in this run's scratch folder and stays up across rounds (one
# warm-up build per mode first, like pochi's). pochi: target/debug/pochi (built here:
# pochi's code unoptimized, its dependencies with opt-level 2), its remote runs with
# POCHI_LOG=pochi::driver::remote=debug for the per-phase means. Prints CSV, then medians,
# then where Bazel's time goes in one more remote build with --profile (not timed).
set -euo pipefail
actions="${1:-20}"
rounds="${2:-3}"
[[ "$actions" =~ ^[1-9][0-9]*$ && "$rounds" =~ ^[1-9][0-9]*$ ]] \
    || { echo "usage: $0 [ACTIONS=20] [ROUNDS=3]" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
servers="$root/tests/servers"
build_timeout=600 # seconds, one build of either tool

bazel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/pochi/bench/bazel-2.1.0"
bazel_bin="$bazel_dir/node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64"

work="$(mktemp -d)"
chmod 711 "$work" # PostgreSQL runs as `postgres` when we are root and must reach its dir
sessions=()       # session leaders of the servers, stopped in reverse order
bazel_started=""

cleanup() {
    local i
    if [ -n "$bazel_started" ]; then
        (cd "$work/bazel" && timeout 60 "$bazel_bin" --output_user_root="$work/bazel-root" \
            shutdown > /dev/null 2>&1) || true
        for pidfile in "$work"/bazel-root/*/server/server.pid.txt; do
            [ -f "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2> /dev/null || true
        done
    fi
    for ((i = ${#sessions[@]} - 1; i >= 0; i--)); do
        kill -TERM -- "-${sessions[i]}" 2> /dev/null || true
    done
    for ((i = ${#sessions[@]} - 1; i >= 0; i--)); do
        for _ in $(seq 1 50); do
            kill -0 -- "-${sessions[i]}" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-${sessions[i]}" 2> /dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "remote_vs_bazel: $*" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_until() {
    local limit="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" > /dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what not ready within ${limit}s"
        sleep 0.2
    done
}

port_open() {
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1"
}

# --- tools ---------------------------------------------------------------------------
if [ ! -x "$bazel_bin" ]; then
    mkdir -p "$bazel_dir"
    (cd "$bazel_dir" && timeout 600 npm install --no-audit --no-fund --no-save \
        @bazel/bazel-linux_x64@2.1.0 > "$work/npm.log" 2>&1) \
        || { cat "$work/npm.log" >&2; die "npm install @bazel/bazel-linux_x64@2.1.0 failed"; }
fi
(cd "$root" && nice -n 10 timeout 3600 cargo build -q 2>&1 | tail -3)
pochi="$root/target/debug/pochi"
[ -x "$pochi" ] || die "no $pochi"
venv="$(timeout 900 python3 "$servers/install_buildgrid.py")"
python="$venv/bin/python"

# --- PostgreSQL, BuildGrid with Execution, one stand-in worker ------------------------
pg_port="$(free_port)"
setsid python3 "$servers/launch.py" postgres --dir "$work/postgres" --port "$pg_port" \
    > "$work/postgres.log" 2>&1 &
sessions+=("$!")
wait_until 120 "PostgreSQL" port_open "$pg_port" || { cat "$work/postgres.log" >&2; exit 1; }
timeout 60 python3 "$servers/launch.py" createdb --port "$pg_port" --name buildgrid \
    > /dev/null || die "createdb failed"

port="$(free_port)"
setsid python3 "$servers/launch.py" buildgrid-exec --venv "$venv" --dir "$work/buildgrid" \
    --port "$port" --sql "postgresql://postgres@127.0.0.1:$pg_port/buildgrid" \
    > "$work/buildgrid.log" 2>&1 &
sessions+=("$!")
wait_until 180 "BuildGrid" timeout 10 "$python" "$servers/reapi_client.py" \
    --server "127.0.0.1:$port" --rpc-timeout 5 capabilities \
    || { cat "$work/buildgrid.log" >&2; exit 1; }

os="$(uname -s | tr '[:upper:]' '[:lower:]')"
isa="$(uname -m)"
mkdir -p "$work/worker"
setsid "$python" "$servers/standin_worker.py" --server "127.0.0.1:$port" \
    --name bench-worker --work-dir "$work/worker" \
    --property "OSFamily=$os" --property "ISA=$isa" > "$work/worker.log" 2>&1 &
sessions+=("$!")
wait_until 120 "the stand-in worker" grep -q ": session " "$work/worker.log" \
    || { cat "$work/worker.log" >&2; exit 1; }
leases() { grep -c " started" "$work/worker.log" || true; }

# --- the two projects -----------------------------------------------------------------
mkdir -p "$work/pochi" "$work/bazel"
touch "$work/bazel/WORKSPACE"

pochi_pipeline() { # $1: tag, $2: executor line ("" or 'executor = "remote"')
    local i
    printf '[pipeline]\nname = "chain"\n'
    for ((i = 0; i < actions; i++)); do
        printf '\n[stages.s%d]\nkind = "command"\n' "$i"
        [ -z "$2" ] || printf '%s\n' "$2"
        if [ "$i" -eq 0 ]; then
            printf 'run = ["sh", "-c", "echo %s-0 > {outputs.out}"]\n' "$1"
        else
            printf 'run = ["sh", "-c", "cat {inputs.prev} > {outputs.out}; echo %s-%d >> {outputs.out}"]\n' "$1" "$i"
            printf 'inputs = { prev = "@s%d" }\n' $((i - 1))
        fi
        printf 'outputs = { out = "out/s%d.txt" }\n' "$i"
    done
}

bazel_build_file() { # $1: tag
    local i
    for ((i = 0; i < actions; i++)); do
        if [ "$i" -eq 0 ]; then
            printf 'genrule(name = "g0", outs = ["g0.txt"], cmd = "echo %s-0 > $@")\n' "$1"
        else
            printf 'genrule(name = "g%d", srcs = [":g%d"], outs = ["g%d.txt"], cmd = "cat $< > $@; echo %s-%d >> $@")\n' \
                "$i" $((i - 1)) "$i" "$1" "$i"
        fi
    done
}

# The last output holds one line per action, the last one TAG-(ACTIONS-1).
check_chain() { # $1: file, $2: tag
    [ "$(wc -l < "$1")" -eq "$actions" ] && [ "$(tail -n 1 "$1")" = "$2-$((actions - 1))" ] \
        || die "$1 is not the chain's output for $2"
}

now() { date +%s.%N; }
seconds() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

# run_pochi MODE TAG -> prints the wall seconds; MODE: local | remote
run_pochi() {
    local mode="$1" tag="$2" start end before
    local -a args=(build --no-cache -j 1)
    if [ "$mode" = remote ]; then
        pochi_pipeline "$tag" 'executor = "remote"' > "$work/pochi/pipeline.toml"
        args+=(--remote-jobs 1 --remote-executor "grpc://127.0.0.1:$port")
    else
        pochi_pipeline "$tag" "" > "$work/pochi/pipeline.toml"
    fi
    before="$(leases)"
    start="$(now)"
    (cd "$work/pochi" && POCHI_OUTPUT_CACHE_DIR="$work/pochi-cache" \
        POCHI_LOG=pochi::driver::remote=debug timeout "$build_timeout" "$pochi" "${args[@]}" \
        > "$work/pochi.out" 2> "$work/pochi.err") \
        || { cat "$work/pochi.out" "$work/pochi.err" >&2; die "pochi build ($mode) failed"; }
    end="$(now)"
    check_chain "$work/pochi/out/s$((actions - 1)).txt" "$tag"
    [ "$mode" = local ] || [ $(($(leases) - before)) -eq "$actions" ] \
        || die "pochi: the worker did not run $actions actions"
    seconds "$start" "$end"
}

bazel() {
    timeout "$build_timeout" "$bazel_bin" --output_user_root="$work/bazel-root" \
        --nosystem_rc --nohome_rc --noworkspace_rc "$@"
}

# run_bazel MODE TAG -> prints the wall seconds
run_bazel() {
    local mode="$1" tag="$2" start end before
    local -a args=(build --color=no --curses=no)
    if [ "$mode" = remote ]; then
        args+=(--spawn_strategy=remote "--remote_executor=grpc://127.0.0.1:$port"
            --remote_instance_name= "--remote_default_exec_properties=OSFamily=$os"
            "--remote_default_exec_properties=ISA=$isa")
    else
        args+=(--spawn_strategy=local)
    fi
    args+=("${bazel_extra[@]}")
    bazel_build_file "$tag" > "$work/bazel/BUILD"
    before="$(leases)"
    bazel_started=1
    start="$(now)"
    (cd "$work/bazel" && bazel "${args[@]}" "//:g$((actions - 1))" > "$work/bazel.log" 2>&1) \
        || { cat "$work/bazel.log" >&2; die "bazel build ($mode) failed"; }
    end="$(now)"
    grep -q "$actions processes: $actions $mode\.\|$actions process: $actions $mode\." "$work/bazel.log" \
        || { cat "$work/bazel.log" >&2; die "bazel did not run $actions actions ($mode)"; }
    check_chain "$work/bazel/bazel-bin/g$((actions - 1)).txt" "$tag"
    [ "$mode" = local ] || [ $(($(leases) - before)) -eq "$actions" ] \
        || die "bazel: the worker did not run $actions actions"
    seconds "$start" "$end"
}

# Mean milliseconds of each remote phase of the last pochi build (its debug log).
pochi_phases() {
    python3 - "$work/pochi.err" <<'EOF'
import sys
sums, lines = {}, 0
for line in open(sys.argv[1]):
    if "remote phases of" in line:
        lines += 1
        for word in line.split():
            if "=" in word:
                name, value = word.split("=", 1)
                try:
                    sums[name] = sums.get(name, 0.0) + float(value)
                except ValueError:
                    pass
print(" ".join(f"{n}={s / max(lines, 1):.0f}" for n, s in sums.items()))
EOF
}

# Mean milliseconds per action of Bazel's remote profile tasks (its JSON trace profile).
bazel_phases() {
    python3 - "$1" "$actions" <<'EOF'
import json, sys
events = json.load(open(sys.argv[1]))
events = events["traceEvents"] if isinstance(events, dict) else events
sums = {}
for event in events:
    cat = event.get("cat", "")
    if "dur" in event and any(w in cat.lower() for w in ("remote", "upload")):
        sums[cat] = sums.get(cat, 0) + event["dur"] / 1000
n = int(sys.argv[2])
print("; ".join(f"{c}={s / n:.0f}" for c, s in sorted(sums.items())))
EOF
}

bazel_extra=()

# --- rounds ---------------------------------------------------------------------------
nonce="$$-$RANDOM"
for mode in local remote; do # warm-up: Bazel's server and both tools' first connections
    run_pochi "$mode" "warm-$mode-$nonce" > /dev/null
    run_bazel "$mode" "warm-$mode-$nonce" > /dev/null
done

echo "round,actions,pochi_local_s,pochi_remote_s,pochi_overhead_ms,bazel_local_s,bazel_remote_s,bazel_overhead_ms,ratio,pochi_mean_phases_ms"
rows=()
for round in $(seq 1 "$rounds"); do
    tag="r$round-$nonce"
    if [ $((round % 2)) -eq 1 ]; then
        pl="$(run_pochi local "$tag-l")"
        pr="$(run_pochi remote "$tag-r")"
        phases="$(pochi_phases)"
        bl="$(run_bazel local "$tag-l")"
        br="$(run_bazel remote "$tag-r")"
    else
        bl="$(run_bazel local "$tag-l")"
        br="$(run_bazel remote "$tag-r")"
        pl="$(run_pochi local "$tag-l")"
        pr="$(run_pochi remote "$tag-r")"
        phases="$(pochi_phases)"
    fi
    row="$(python3 - "$actions" "$pl" "$pr" "$bl" "$br" <<'EOF'
import sys
n = int(sys.argv[1])
pl, pr, bl, br = map(float, sys.argv[2:])
po, bo = (pr - pl) / n * 1000, (br - bl) / n * 1000
print(f"{pl:.3f},{pr:.3f},{po:.0f},{bl:.3f},{br:.3f},{bo:.0f},{po / bo:.2f}")
EOF
)"
    rows+=("$row")
    echo "$round,$actions,$row,$phases"
done

printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [line.strip().split(",") for line in sys.stdin if line.strip()]
col = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"median: pochi {col(2):.0f} ms/action, bazel {col(5):.0f} ms/action, "
      f"ratio of medians {col(2) / col(5):.2f}, median of ratios {col(6):.2f}")
'

# One more Bazel remote build, not timed, with its profile: where Bazel's time goes.
bazel_extra=(--experimental_generate_json_trace_profile "--profile=$work/bazel-profile.json")
run_bazel remote "profile-$nonce" > /dev/null
echo "bazel mean ms per action, one more remote build with --profile (not timed): $(bazel_phases "$work/bazel-profile.json")"
