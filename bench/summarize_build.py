#!/usr/bin/env python3
"""Summarizes one measured build: each stage's status and duration from `pochi build
--json`, their sum against the build's wall time, and what `/usr/bin/time -v` measured.

    python3 bench/summarize_build.py BUILD.json [TIME.txt]

BUILD.json is pochi's `--json` summary; TIME.txt the output of `/usr/bin/time -v -o`
(its "Maximum resident set size" is the largest single process that was waited for, not
the sum of processes running at once: bench/tree_peak_rss.py measures that).
"""
import json
import sys


def time_fields(path):
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().rpartition(": ")
            if key:
                fields[key] = value
    return fields


def main():
    with open(sys.argv[1]) as f:
        build = json.load(f)
    total = 0
    for stage in build["stages"]:
        seconds = (stage.get("duration_ms") or 0) / 1000
        total += seconds
        print(f"stage {stage['stage']:24} {stage['status']:12} {seconds:8.1f} s")
    wall = build["duration_ms"] / 1000
    print(f"build: ok {build['ok']}, counts {json.dumps(build['counts'], sort_keys=True)}")
    print(f"wall {wall:.1f} s ({wall / 60:.1f} min); sum of stage durations {total:.1f} s;"
          f" sum / wall {total / wall:.3f}")
    if len(sys.argv) > 2:
        fields = time_fields(sys.argv[2])
        rss = int(fields.get("Maximum resident set size (kbytes)", "0"))
        print(f"/usr/bin/time: elapsed {fields.get('Elapsed (wall clock) time (h:mm:ss or m:ss)')},"
              f" user {fields.get('User time (seconds)')} s, system {fields.get('System time (seconds)')} s,"
              f" max RSS of the largest process {rss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
