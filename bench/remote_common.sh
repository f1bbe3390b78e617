# bench/remote_common.sh: sourced by the remote benchmarks. Starts BuildGrid 0.4.4 in
# cache-only mode on 127.0.0.1 (the venv and launcher the tests use: tests/servers/), in
# its own session, stopped with it when the script exits; sets $work, $port, $venv,
# $python and $server.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
venv="$(python3 "$root/tests/servers/install_buildgrid.py")"
python="$venv/bin/python"
work="$(mktemp -d)"
server=""
stop_server() {
    if [ -n "$server" ]; then
        kill -TERM -- "-$server" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop_server EXIT
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
setsid python3 "$root/tests/servers/launch.py" buildgrid-cache --venv "$venv" \
    --dir "$work/buildgrid" --port "$port" > "$work/buildgrid.log" 2>&1 &
server=$!
for _ in $(seq 1 1200); do
    if "$python" "$root/tests/servers/reapi_client.py" --server "127.0.0.1:$port" \
        --rpc-timeout 5 capabilities > /dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
"$python" "$root/tests/servers/reapi_client.py" --server "127.0.0.1:$port" capabilities > /dev/null \
    || { cat "$work/buildgrid.log" >&2; exit 1; }
