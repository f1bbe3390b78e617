#!/usr/bin/env bash
# bench/cache_restore.sh: restoring a large output from the local cache against hashing it
# (issue 10), on the filesystem of the current temporary directory and, when this runs as
# root with mkfs.xfs available, on a loop-mounted XFS with reflinks (created and removed
# here).
#
# Usage: bench/cache_restore.sh            (MB=250 by default)
#   MB=100 PROFILE=release bench/cache_restore.sh
#
# It runs the ignored unit test `cache::tests::bench_restore_of_a_large_output`, which
# writes an MB MiB file of random bytes and writes a Markdown table (shown here) (best of five runs,
# warm page cache): blake3 of the file, blake3 + sha256 in one read, a store of a new blob,
# a store of a blob already there, a restore (reflink or copy, every byte verified), and a
# plain std::fs::copy for reference. The test binary is the dev profile unless
# PROFILE=release (the hashing and copying happen in dependencies and std, which are
# optimized in both).
set -euo pipefail
cd "$(dirname "$0")/.."
MB="${MB:-250}"
PROFILE="${PROFILE:-dev}"
release=()
[ "$PROFILE" = release ] && release=(--release)

table="$(mktemp)"
run() {
    POCHI_BENCH_DIR="$1" POCHI_BENCH_MB="$MB" POCHI_BENCH_OUT="$table" nice -n 10 \
        cargo test "${release[@]}" --lib cache::tests::bench_restore_of_a_large_output \
        -- --ignored --test-threads=1 >/dev/null
    cat "$table"
}

trap 'rm -f "$table"' EXIT
fs_of() { df -T "$1" | awk 'NR == 2 { print $2 }'; }

tmp="${TMPDIR:-/tmp}"
echo "## $(fs_of "$tmp") ($tmp)"
run "$tmp"

if [ "$(id -u)" = 0 ] && command -v mkfs.xfs >/dev/null; then
    work="$(mktemp -d)"
    mnt="$work/mnt"
    cleanup() {
        umount "$mnt" 2>/dev/null || true
        rm -rf "$work" "$table"
    }
    trap cleanup EXIT
    mkdir "$mnt"
    truncate -s "$((MB * 4 + 512))M" "$work/xfs.img"
    mkfs.xfs -q -m reflink=1 "$work/xfs.img"
    if mount -o loop "$work/xfs.img" "$mnt" 2>/dev/null; then
        echo
        echo "## xfs with reflink=1 (loop device)"
        run "$mnt"
    else
        echo "(no loop mount here: XFS with reflinks not measured)" >&2
    fi
else
    echo "(not root or no mkfs.xfs (apt-get install xfsprogs): XFS with reflinks not measured)" >&2
fi
