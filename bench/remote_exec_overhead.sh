#!/usr/bin/env bash
# bench/remote_exec_overhead.sh: what remote execution adds per action on loopback.
# BuildGrid 0.4.4 with Execution (PostgreSQL) and one STAND-IN worker (a test double of a
# farm worker, tests/servers/standin_worker.py), all on this machine, started by the test
# harness. Per round, in one run: 10 small independent command stages built here one at a
# time (`-j 1`) and then remotely one at a time (`--remote-jobs 1`), each with a new seed
# so the farm's action cache never answers; then one stage writing 250 MB the same way.
# The overhead per action is (remote wall - local wall) / stages.
#
#   bench/remote_exec_overhead.sh [ROUNDS=3]
#
# The runner is the ignored test `remote_execution::bench_remote_execution_overhead` of
# the `it` test binary (dev profile).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
POCHI_BENCH_ROUNDS="${1:-3}" cargo test -q --test it -- --ignored --nocapture \
    remote_execution::bench_remote_execution_overhead 2>&1 | grep -E '^(case|small|250MB),'
