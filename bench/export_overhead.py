#!/usr/bin/env python3
"""The cost of pochi around an export: the full-size SwinUNETR export (feature_size 48,
96^3, CPU) through `pochi build` against the same export run directly in Python with the
same worker script and the same request, interleaved (A B B A ...) on one machine.

    python3 bench/export_overhead.py [--rounds 3] [--pochi target/release/pochi]

It builds pipelines/swin_unetr.toml once (checkpoint + a warm-up export), then in each
round cleans the `onnx` stage and rebuilds it with pochi, and runs
`python -I <cache>/workers/<hash>/export.py REQUEST RESULT` with the request pochi sends
(same checkpoint, same keys, outputs in a scratch directory). Wall time and peak RSS come
from wait4() on each process (pochi's figure covers pochi and its worker). Prints a JSON
summary on stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(ROOT, "pipelines", "swin_unetr.toml")
BUILD = os.path.join(ROOT, "pipelines", "build", "swin_unetr")


def timed(argv, **kwargs):
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv[0]} failed:\n{stderr}")
    return elapsed, usage.ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pochi", default=os.path.join(ROOT, "target", "release", "pochi"))
    options = parser.parse_args()
    pochi = options.pochi
    env = dict(os.environ, NO_COLOR="1")

    subprocess.run([pochi, "build", PIPELINE], check=True, env=env)
    python = subprocess.run([pochi, "toolchain", "path"], check=True, capture_output=True, text=True).stdout.strip()
    cache = os.environ.get("POCHI_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pochi")
    workers = os.path.join(cache, "v1", "workers")
    worker = max((os.path.join(workers, d, "export.py") for d in os.listdir(workers) if os.path.exists(os.path.join(workers, d, "export.py"))), key=os.path.getmtime)

    scratch = tempfile.mkdtemp(prefix="pochi-export-bench-")
    outputs = {key: os.path.join(scratch, key, name) for key, name in [("onnx", "swin_unetr.onnx"), ("reference", "swin_unetr.reference.npz"), ("manifest", "swin_unetr.manifest.json")]}
    request = {
        "protocol": 1,
        "checkpoint": os.path.join(BUILD, "random_init.pth"),
        "model": "monai.networks.nets:SwinUNETR",
        "model_args": {"feature_size": 48, "in_channels": 1, "out_channels": 14},
        "input_shape": [1, 96, 96, 96],
        "dynamic_axes": {"0": "batch"},
        "opset": 17,
        "input_names": None,
        "output_names": None,
        "exporter": "legacy",
        "verify": {"rtol": 1e-3, "atol": 1e-5},
        "seed": 0,
        "external_data": "auto",
        "outputs": outputs,
    }
    request_path = os.path.join(scratch, "request.json")
    with open(request_path, "w") as out:
        json.dump(request, out)

    def run_pochi():
        subprocess.run([pochi, "clean", PIPELINE, "-t", "onnx"], check=True, capture_output=True, env=env)
        return timed([pochi, "build", PIPELINE], env=env)

    def run_direct():
        for path in outputs.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                os.remove(path)
        return timed([python, "-I", worker, request_path, os.path.join(scratch, "result.json")], cwd=os.path.dirname(PIPELINE), env=dict(env, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1"))

    results = {"pochi": [], "direct": []}
    for round_index in range(options.rounds):
        order = [("pochi", run_pochi), ("direct", run_direct)]
        if round_index % 2:
            order.reverse()
        for name, run in order:
            elapsed, rss = run()
            results[name].append({"wall_s": round(elapsed, 2), "peak_rss_bytes": rss})
            print(f"round {round_index + 1}: {name:6} {elapsed:7.2f} s  peak RSS {rss / 2**30:.2f} GiB", file=sys.stderr)

    with open(os.path.join(BUILD, "swin_unetr.manifest.json")) as f:
        manifest = json.load(f)
    pochi_mean = statistics.mean(r["wall_s"] for r in results["pochi"])
    direct_mean = statistics.mean(r["wall_s"] for r in results["direct"])
    summary = {
        "rounds": options.rounds,
        "pochi": results["pochi"],
        "direct": results["direct"],
        "pochi_mean_s": round(pochi_mean, 2),
        "direct_mean_s": round(direct_mean, 2),
        "ratio": round(pochi_mean / direct_mean, 3),
        "pochi_median_s": round(statistics.median(r["wall_s"] for r in results["pochi"]), 2),
        "direct_median_s": round(statistics.median(r["wall_s"] for r in results["direct"]), 2),
        "last_manifest": {k: manifest[k] for k in ("parameters", "onnx_bytes", "durations", "peak_rss_bytes", "verification")},
        "worker": worker,
        "python": python,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
