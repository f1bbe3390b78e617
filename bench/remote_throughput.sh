#!/usr/bin/env bash
# bench/remote_throughput.sh: upload and download throughput of a large blob to BuildGrid
# (cache-only, loopback) through pochi's ByteStream client against a Python grpcio client
# making the same ByteStream calls (1 MiB chunks, from and to disk) with BuildGrid's own
# generated protos, interleaved round by round in one run. Each round uploads new blobs
# (a blob the server has would end early), synced to disk before the clients start, and
# the clients take turns at going first (the first after the copies used to be slowest).
#
#   bench/remote_throughput.sh [MEGABYTES=250] [ROUNDS=3]
#
# pochi's side is the ignored test `remote_client::bench_throughput` of the `it` test
# binary, dev profile (pochi's code unoptimized; its dependencies, tonic, prost, sha2,
# are built with opt-level 2 by Cargo.toml). pochi verifies the SHA-256 of the upload
# while it streams and of the download before it renames it into place. The Python
# client runs twice per round: as is (it hashes before its upload, outside the timing,
# and only writes the download) and with --verify (it checks the bytes as pochi does).
set -euo pipefail
megabytes="${1:-250}"
rounds="${2:-3}"
# shellcheck source=bench/remote_common.sh
source "$(dirname "$0")/remote_common.sh"
(cd "$root" && nice -n 10 cargo test -q --test it --no-run 2>&1 | tail -3)
head -c "$((megabytes * 1000 * 1000))" /dev/urandom > "$work/base.bin"
variant() { # a copy of base.bin with its first bytes replaced, so each blob is new
    cp "$work/base.bin" "$work/$1.bin"
    printf '%-32s' "$1-$RANDOM-$$" | dd of="$work/$1.bin" conv=notrunc status=none
}
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mbps() { python3 -c "print(f'{$megabytes / $1:.0f}')"; }
echo "round,pochi_up_MBps,python_up_MBps,python_verify_up_MBps,pochi_down_MBps,python_down_MBps,python_verify_down_MBps,up_ratio,up_ratio_verify,down_ratio,down_ratio_verify"
run_pochi() {
    (cd "$root" && POCHI_BENCH_URL="grpc://127.0.0.1:$port" POCHI_BENCH_FILE="$work/pochi-$1.bin" \
        cargo test -q --test it remote_client::bench_throughput -- --ignored --nocapture 2>&1 \
        | grep '^RESULT')
}
run_python() {
    "$python" "$here/remote_throughput_client.py" "127.0.0.1:$port" "$work/python-$1.bin" \
        | grep '^RESULT'
}
run_verify() {
    "$python" "$here/remote_throughput_client.py" "127.0.0.1:$port" "$work/verify-$1.bin" \
        --verify | grep '^RESULT'
}
for round in $(seq 1 "$rounds"); do
    variant "pochi-$round"
    variant "python-$round"
    variant "verify-$round"
    # The copies' dirty pages go to disk now, not during the first client's upload: the
    # client that ran first after them was the slowest, whichever it was.
    sync
    # And the clients take turns at going first.
    case $((round % 3)) in
    1) order="pochi python verify" ;;
    2) order="python verify pochi" ;;
    *) order="verify pochi python" ;;
    esac
    for client in $order; do
        case $client in
        pochi) pochi="$(run_pochi "$round")" ;;
        python) py="$(run_python "$round")" ;;
        verify) pv="$(run_verify "$round")" ;;
        esac
    done
    ru="$(mbps "$(field "$pochi" upload_s)")"
    pu="$(mbps "$(field "$py" upload_s)")"
    vu="$(mbps "$(field "$pv" upload_s)")"
    rd="$(mbps "$(field "$pochi" download_s)")"
    pd="$(mbps "$(field "$py" download_s)")"
    vd="$(mbps "$(field "$pv" download_s)")"
    echo "$round,$ru,$pu,$vu,$rd,$pd,$vd,$(ratio "$ru" "$pu"),$(ratio "$ru" "$vu"),$(ratio "$rd" "$pd"),$(ratio "$rd" "$vd")"
    rm -f "$work"/*-"$round".bin* 2>/dev/null || true
done
