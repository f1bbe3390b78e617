#!/usr/bin/env python3
"""Runs a command and samples the summed resident memory of it and all its descendants
(every 0.5 s, from /proc), which `/usr/bin/time -v` cannot give: its "maximum resident
set size" is that of the largest single process, not of everything running at once.

    python3 bench/tree_peak_rss.py [--log FILE] -- COMMAND ARGS...

Prints the wall time, the peak of the summed RSS and when it happened, and the command's
exit status; `--log` writes every sample (seconds, GiB, the processes' names). With
`--per-child`, also the peak summed RSS of each direct child's tree (for `pochi build`: each
stage's process, its workers included), named by its command line, with the script's file
name and the request's `stage` or `precision` when it reads a request file (pochi's
workers and `pochi run-stage`).
"""
import json
import argparse
import os
import subprocess
import sys
import time


def children_map():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    return parents


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def name(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def label(pid):
    """A short name for a stage's process: its program and script, and what its request says."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    words = [os.path.basename(a) if "/" in a else a for a in argv[:4]]
    for arg in argv:
        if arg.endswith("request.json"):
            try:
                with open(arg) as f:
                    request = json.load(f)
            except (OSError, ValueError):
                continue
            stage = (request.get("context") or {}).get("stage")
            for key, value in (("stage", stage), ("precision", request.get("precision"))):
                if value:
                    words.append(f"{key}={value}")
    return " ".join(words)


def tree(root):
    parents, todo, seen = children_map(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(parents.get(pid, []))
    return seen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log")
    parser.add_argument("--per-child", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    log = open(args.log, "w") if args.log else None
    started = time.time()
    child = subprocess.Popen(command)
    peak, peak_at, peak_names = 0, 0.0, ""
    children = {}  # pid -> [label, first seen, last seen, peak KiB]
    while child.poll() is None:
        pids = tree(child.pid)
        total = sum(rss_kib(p) for p in pids)
        now = time.time() - started
        if args.per_child:
            for pid in children_map().get(child.pid, []):
                entry = children.setdefault(pid, [label(pid), now, now, 0])
                entry[2] = now
                entry[3] = max(entry[3], sum(rss_kib(p) for p in tree(pid)))
        names = ",".join(sorted({name(p) for p in pids if rss_kib(p) > 100 * 1024}))
        if log:
            log.write(f"{now:.1f} {total / 2**20:.3f} {names}\n")
            log.flush()
        if total > peak:
            peak, peak_at, peak_names = total, now, names
        time.sleep(0.5)
    wall = time.time() - started
    print(f"wall {wall:.1f} s; peak summed RSS {peak / 2**20:.2f} GiB at {peak_at:.0f} s ({peak_names}); exit {child.returncode}",
          file=sys.stderr)
    for what, first, last, kib in children.values():
        if kib > 0:
            print(f"child {first:7.0f}-{last:7.0f} s  peak {kib / 2**20:6.2f} GiB  {what}", file=sys.stderr)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
