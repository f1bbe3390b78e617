#!/usr/bin/env bash
# bench/remote_throughput.sh: upload and download throughput of a large blob to BuildGrid
# (cache-only, loopback) through pochi's ByteStream client against a Python grpcio client
# making the same ByteStream calls with BuildGrid's own protos, round by round in the
# same run. Each round uploads fresh blobs (a blob the server has would end early).
#
#   bench/remote_throughput.sh [MEGABYTES=250] [ROUNDS=3]
#
# BuildGrid 0.4.4 comes from the venv the tests create (target/tmp/remote-client), made
# here when missing. pochi's side is the ignored test `bench_throughput` in
# tests/remote_client.rs, built in release mode. pochi verifies every download's SHA-256
# while it streams; the Python side only writes the bytes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$here/.."
megabytes="${1:-250}"; rounds="${2:-3}"
venv="$root/target/tmp/remote-client/buildgrid-0.4.4"
if [ ! -x "$venv/bin/python3" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv.partial-$$"
  "$venv.partial-$$/bin/pip" install --quiet --disable-pip-version-check buildgrid==0.4.4
  mv "$venv.partial-$$" "$venv"
fi
python="$venv/bin/python3"
work="$(mktemp -d)"; server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/buildgrid.yml" <<YAML
server:
  - !channel
    address: "127.0.0.1:$port"
    insecure-mode: true
authorization:
  method: none
storages:
  - !disk-storage &cas
    path: $work/storage
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 64
    allow-updates: true
instances:
  - name: ''
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 16
YAML
"$python" -c "import sys; from buildgrid.server.app import cli; sys.argv[0] = 'bgd'; sys.exit(cli())" \
  server start "$work/buildgrid.yml" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
(cd "$root" && nice -n 10 cargo test -q --release --test remote_client --no-run 2>&1 | tail -3)
head -c "$((megabytes * 1000 * 1000))" /dev/urandom > "$work/base.bin"
variant() { # a copy of base.bin with its first bytes replaced, so each blob is new
  cp "$work/base.bin" "$work/$1.bin"
  printf '%-32s' "$1" | dd of="$work/$1.bin" conv=notrunc status=none
}
mbps() { "$python" -c "print(f'{$megabytes / $1:.0f}')"; }
echo "round,rust_upload_MBps,python_upload_MBps,upload_ratio,rust_download_MBps,python_download_MBps,download_ratio"
for round in $(seq 1 "$rounds"); do
  variant "rust-$round"; variant "python-$round"
  rust="$(cd "$root" && POCHI_BENCH_URL="grpc://127.0.0.1:$port" POCHI_BENCH_FILE="$work/rust-$round.bin" \
    cargo test -q --release --test remote_client bench_throughput -- --ignored --nocapture 2>&1 | grep '^RESULT')"
  py="$("$python" "$here/remote_throughput_client.py" "127.0.0.1:$port" "$work/python-$round.bin" | grep '^RESULT')"
  field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
  ru="$(mbps "$(field "$rust" upload_s)")"; pu="$(mbps "$(field "$py" upload_s)")"
  rd="$(mbps "$(field "$rust" download_s)")"; pd="$(mbps "$(field "$py" download_s)")"
  echo "$round,$ru,$pu,$("$python" -c "print(f'{$ru / $pu:.2f}')"),$rd,$pd,$("$python" -c "print(f'{$rd / $pd:.2f}')")"
  rm -f "$work"/*-"$round".bin* "$work/storage/cas/objects"/*/* 2>/dev/null || true
done
