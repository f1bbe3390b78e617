"""Python's onnxruntime on the same model, data and protocol as pochi's report stage:
intra-op threads = THREADS, inter-op 1, all graph optimizations, CPU provider; inputs
preloaded; WARMUP untimed runs, then ITERATIONS runs each timed around session.run.
THREADS = default: `onnxruntime.InferenceSession(MODEL)` with no SessionOptions at all
(ONNX Runtime's defaults, as a Python user runs it); THREADS = layout: the same but
graph_optimization_level = ORT_ENABLE_LAYOUT (what `ort`'s `Level3` sets; pochi's level
before it was fixed).

    python ort_python_throughput.py MODEL.onnx DATA.npy THREADS WARMUP ITERATIONS BATCH
Prints one JSON line: throughput (samples/s), mean_ms, median_ms, min_ms, p99_ms.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main(model, data, threads, warmup, iterations, batch):
    if threads == "default":
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    elif threads == "layout":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    else:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.load(data).astype(np.float32)
    batches = [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]
    for i in range(warmup):
        session.run(None, {name: batches[i % len(batches)]})
    times, samples = [], 0
    for i in range(iterations):
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        session.run(None, {name: b})
        times.append(time.perf_counter() - t0)
        samples += len(b)
    ms = np.array(times) * 1e3
    print(json.dumps({
        "throughput": samples / sum(times),
        "mean_ms": float(ms.mean()),
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "p99_ms": float(np.percentile(ms, 99)),
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]))
