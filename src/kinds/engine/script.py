"""pochi engine worker: builds a TensorRT engine from an ONNX model with TensorRT's
official Python API (TensorRT 10.x and 11), then checks the precision it got; and runs an
engine for the report stage (timed runs and its outputs on a data set).

Run by pochi as:  python -I engine.py REQUEST.json RESULT.json
              or  python -I engine.py --infer REQUEST.json RESULT.json
              or  python -I engine.py --probe RESULT.json
pochi decides the optimization profiles (from the ONNX's declared shapes) before this runs;
the request carries them. The answer is RESULT.json only:
{"ok": true, ...} or {"ok": false, "kind": ..., "error": ..., "hint": ..., "traceback": ...}.

Inference uses the documented TensorRT 10/11 runtime API (deserialize_cuda_engine, named
I/O tensors, set_input_shape, set_tensor_address, execute_async_v3) with device memory,
stream and CUDA events from PyTorch (part of the toolchain).

Test hook: when POCHI_TEST_TENSORRT_STANDIN is set, that directory is put first on
sys.path so tests can import a recording stand-in `tensorrt` (tests/fixtures/fake_tensorrt);
real runs never set it.
"""

import json
import os
import subprocess
import sys
import time
import traceback

STANDIN_ENV = "POCHI_TEST_TENSORRT_STANDIN"


class Failure(Exception):
    def __init__(self, kind, message, hint=""):
        super().__init__(message)
        self.kind = kind
        self.hint = hint


def write_json(path, value):
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(temp, path)


def import_tensorrt():
    standin = os.environ.get(STANDIN_ENV)
    if standin:
        sys.path.insert(0, standin)
    import tensorrt  # noqa: F401  (ImportError handled by callers)

    return tensorrt


def gpu_facts(trt):
    """(name, compute capability, CUDA version) of the first visible GPU."""
    standin = getattr(trt, "_pochi_standin_gpu", None)
    if standin is not None:
        return standin()
    name = cc = cuda = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
        first = out.stdout.strip().splitlines()[0]
        name, cc = [part.strip() for part in first.split(",")[:2]]
    except Exception:
        pass
    try:
        import importlib.metadata as md

        for dist in md.distributions():
            dist_name = (dist.metadata["Name"] or "").lower()
            if dist_name.startswith("tensorrt-cu") or dist_name.startswith("tensorrt_cu"):
                cuda = dist_name.replace("_", "-").split("-")[1]  # cu12 / cu13
                break
    except Exception:
        pass
    return name, cc, cuda


def probe(result_path):
    try:
        trt = import_tensorrt()
    except Exception as error:
        write_json(result_path, {"tensorrt": None, "error": f"{type(error).__name__}: {error}"})
        return 0
    name, cc, cuda = gpu_facts(trt)
    write_json(result_path, {
        "tensorrt": getattr(trt, "__version__", "unknown"),
        "error": None,
        "gpu_name": name,
        "compute_capability": cc,
        "cuda": cuda,
    })
    return 0


# ---- ONNX precision --------------------------------------------------------------------

FLOAT16, BFLOAT16, FLOAT8_TYPES = 10, 16, {17, 18, 19, 20}


def onnx_precision(path):
    """What the ONNX carries: int8 / fp8 (Q/DQ), fp16 / bf16 (half weights), else fp32."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    ops = {node.op_type for node in graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        for init in graph.initializer:
            if init.data_type in FLOAT8_TYPES:
                return "fp8"
        return "int8"
    types = {init.data_type for init in graph.initializer}
    if FLOAT16 in types:
        return "fp16"
    if BFLOAT16 in types:
        return "bf16"
    return "fp32"


# ---- layer precision -------------------------------------------------------------------

def layer_precisions(info):
    """Counts layers by the data type of their first output, from the inspector's JSON."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    counts = {}
    for layer in layers:
        if not isinstance(layer, dict):
            counts["unknown"] = counts.get("unknown", 0) + 1
            continue
        outputs = layer.get("Outputs") or []
        text = ""
        if outputs and isinstance(outputs[0], dict):
            text = str(outputs[0].get("Format/Datatype", ""))
        precision = classify(text)
        counts[precision] = counts.get(precision, 0) + 1
    return counts


def classify(text):
    t = text.lower()
    for needles, name in (
        (("int8",), "int8"),
        (("fp8", "e4m3"), "fp8"),
        (("bf16", "bfloat16"), "bf16"),
        (("fp16", "half"), "fp16"),
        (("fp32", "float"), "fp32"),
        (("int32", "int64", "bool"), "int"),
    ):
        if any(n in t for n in needles):
            return name
    return "unknown"


def check_precision(wanted, counts):
    """Fails when the engine has no layer in the precision asked for."""
    if wanted in ("fp32", None):
        return
    if counts.get(wanted, 0) == 0:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no layers reported"
        raise Failure(
            "precision",
            f"the engine was asked to be {wanted} but TensorRT built no {wanted} layer (layers by precision: {shown})",
            "with TensorRT 11 the precision must be baked into the ONNX: put a `quantize` stage "
            f"(precision = \"{wanted}\") before the engine; with TensorRT 10 check that the GPU supports {wanted}",
        )


# ---- build ----------------------------------------------------------------------------

def use_timing_cache(config, cache_path):
    """Gives the builder the timing cache at `cache_path` (an empty one when there is none).
    TensorRT refuses a cache made with another GPU, CUDA or TensorRT (`set_timing_cache`
    returns False): then the build starts from an empty cache, which replaces the file.
    Returns (reused, rejected)."""
    blob = b""
    if os.path.exists(cache_path):
        with open(cache_path, "rb") as f:
            blob = f.read()
    if config.set_timing_cache(config.create_timing_cache(blob), False):
        return bool(blob), False
    if not blob or not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise Failure("build", "TensorRT refused an empty timing cache", "")
    return False, True


def build(request):
    started = time.monotonic()
    try:
        trt = import_tensorrt()
    except ImportError as error:
        raise Failure("unavailable", f"TensorRT is not available on this machine: {error}",
                      "install TensorRT for this GPU (pip install tensorrt from NVIDIA's index)")
    version = getattr(trt, "__version__", "0")
    major = int(version.split(".")[0])
    onnx_path = request["onnx"]
    carried = onnx_precision(onnx_path)
    wanted = request["precision"]
    if wanted == "auto":
        wanted = carried
    use_fp16_flag = False
    if carried == "fp32" and wanted in ("fp16", "bf16"):
        if major >= 11:
            raise Failure(
                "precision",
                f"TensorRT {version} builds strongly typed networks only: an fp32 ONNX cannot become an {wanted} engine",
                f"add a `quantize` stage with precision = \"{wanted}\" and build the engine from it",
            )
        if wanted == "bf16":
            raise Failure("precision", "pochi bakes bf16 into the ONNX; use a `quantize` stage", "")
        use_fp16_flag = True
    elif carried != wanted and wanted != "fp32":
        raise Failure(
            "precision",
            f"the ONNX carries {carried} but the engine was asked to be {wanted}",
            f"build the engine from a `quantize` stage with precision = \"{wanted}\", or set precision = \"auto\"",
        )
    # TensorRT 11 builds every network strongly typed: its STRONGLY_TYPED flag (value 0 in
    # 11.4, 1 in 10.x) is deprecated and ignored, so it is not passed there.
    flags = 0
    if major >= 11:
        strongly_typed = True
    else:
        strongly_typed = not use_fp16_flag and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        if strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = "; ".join(errors) or "the parser reported no error (see the log above)"
        raise Failure("parse", "TensorRT cannot parse the ONNX: " + detail,
                      "check the opset and operators against TensorRT's ONNX support matrix")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request["workspace"]))
    config.builder_optimization_level = int(request["optimization_level"])
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if use_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)

    profiles = request["shapes"]["profiles"]
    if profiles:
        profile = builder.create_optimization_profile()
        for p in profiles:
            profile.set_shape(p["input"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
        config.add_optimization_profile(profile)

    cache_path = request.get("timing_cache")
    cache_reused = cache_rejected = False
    if cache_path:
        cache_reused, cache_rejected = use_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise Failure("build", "TensorRT failed to build the engine (see the log above)",
                      "a larger `workspace` or a lower `optimization_level` can help")
    engine_path = request["outputs"]["engine"]
    with open(engine_path, "wb") as f:
        f.write(bytes(serialized))

    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        data = bytes(config.get_timing_cache().serialize())
        temp = cache_path + f".{os.getpid()}.tmp"
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, cache_path)

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    counts = layer_precisions(info)
    check_precision(wanted, counts)

    name, cc, cuda = gpu_facts(trt)
    manifest = {
        "tensorrt": version,
        "gpu": {"name": name, "compute_capability": cc, "cuda": cuda},
        "onnx": onnx_path,
        "onnx_precision": carried,
        "precision": wanted,
        "layers_by_precision": counts,
        "shapes": request["shapes"],
        "builder": {
            "strongly_typed": strongly_typed,
            "fp16_flag": use_fp16_flag,
            "workspace": int(request["workspace"]),
            "optimization_level": int(request["optimization_level"]),
            "timing_cache": cache_path,
            "timing_cache_reused": cache_reused,
            "timing_cache_rejected": cache_rejected,
        },
        "duration_s": round(time.monotonic() - started, 3),
    }
    write_json(request["outputs"]["manifest"], manifest)
    return manifest


# ---- inference (the report stage) -----------------------------------------------------

class CudaDevice:
    """Device memory, a stream and CUDA events from PyTorch, on the one visible GPU."""

    def __init__(self, torch):
        if not torch.cuda.is_available():
            raise Failure("gpu", "the TensorRT worker sees no CUDA device (torch.cuda.is_available() is False)",
                          "run the report on a machine with an NVIDIA GPU and its driver, with device = \"cuda\"")
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def facts(self, trt):
        props = self.torch.cuda.get_device_properties(0)
        return props.name, f"{props.major}.{props.minor}"

    def empty(self, shape, dtype):
        return self.torch.empty(tuple(shape), dtype=dtype, device="cuda")

    def upload(self, array, into):
        """Copies a host array into device memory, on the worker's stream."""
        with self.torch.cuda.stream(self.stream):
            into.copy_(self.torch.from_numpy(array).to(into.dtype))

    def timed(self, run):
        """Runs `run()` on the stream; seconds measured by CUDA events around it."""
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        run()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def synchronize(self):
        self.stream.synchronize()


class HostDevice:
    """Only for the TensorRT stand-in of pochi's tests (which runs on the CPU): host memory
    and wall-clock time. A real TensorRT never gets this device."""

    def __init__(self, torch):
        self.torch = torch
        self.handle = 0

    def facts(self, trt):
        name, cc, _ = trt._pochi_standin_gpu()
        return name, cc

    def empty(self, shape, dtype):
        return self.torch.empty(tuple(shape), dtype=dtype)

    def upload(self, array, into):
        into.copy_(self.torch.from_numpy(array).to(into.dtype))

    def timed(self, run):
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    def synchronize(self):
        pass


TORCH_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
    "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}


def torch_dtype(torch, trt_dtype):
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in TORCH_DTYPES:
        raise Failure("dtype", f"the engine has a tensor of type {name}, which the report cannot feed or read", "")
    return getattr(torch, TORCH_DTYPES[name])


def check_built_for(request, trt, here_name, here_cc):
    """Engines run only with the TensorRT version and GPU model they were built with."""
    built = request.get("built_for") or {}
    version = getattr(trt, "__version__", "unknown")
    wanted_trt = built.get("tensorrt")
    if wanted_trt and wanted_trt != version:
        raise Failure("mismatch", f"the engine was built with TensorRT {wanted_trt}; this machine has TensorRT {version}",
                      "rebuild the engine with this TensorRT (pochi rebuilds it: the TensorRT version is part of the engine's key)")
    wanted_cc = (built.get("gpu") or {}).get("compute_capability")
    if wanted_cc and here_cc and str(wanted_cc) != str(here_cc):
        built_name = (built.get("gpu") or {}).get("name") or "another GPU"
        raise Failure("mismatch",
                      f"the engine was built for {built_name} (compute capability {wanted_cc}); this GPU is {here_name} (compute capability {here_cc})",
                      "TensorRT engines run only on the GPU model they were built for: build the engine on this machine")


def choose_batch(engine, name, asked, samples):
    """The asked batch, else the engine's fixed batch, else 1 (raised to the profile's min)."""
    declared = list(engine.get_tensor_shape(name))
    if declared and declared[0] > 0:
        fixed = declared[0]
        if asked and asked != fixed:
            raise Failure("batch", f"batch = {asked}, but the engine's batch is fixed at {fixed}", "")
        batch, low, high = fixed, fixed, fixed
    else:
        low, _, high = [list(s) for s in engine.get_tensor_profile_shape(name, 0)]
        low, high = low[0], high[0]
        batch = asked or max(1, low)
        if not low <= batch <= high:
            raise Failure("batch", f"batch = {batch} is outside the engine's profile ({low}..{high} for `{name}`)",
                          "set the report's batch inside the engine's profile, or build the engine with a wider batch range")
    last = samples % batch
    if last and last < low:
        raise Failure("batch", f"{samples} samples leave a last batch of {last}, below the engine's minimum batch {low}",
                      "use a sample count that divides into batches the engine accepts")
    return batch


class Bindings:
    """Output buffers for one batch size; `bind` points the context at them and at an input."""

    def __init__(self, device, torch, engine, context, input_name, output_names, shape):
        context.set_input_shape(input_name, tuple(shape))
        self.input_dtype = torch_dtype(torch, engine.get_tensor_dtype(input_name))
        self.outputs = {}
        for name in output_names:
            out_shape = list(context.get_tensor_shape(name))
            self.outputs[name] = device.empty(out_shape, torch_dtype(torch, engine.get_tensor_dtype(name)))
        self.shape = tuple(shape)
        self.input_name = input_name

    def bind(self, context, input_tensor):
        context.set_input_shape(self.input_name, self.shape)
        context.set_tensor_address(self.input_name, input_tensor.data_ptr())
        for name, tensor in self.outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())


def infer(request):
    try:
        trt = import_tensorrt()
    except ImportError as error:
        raise Failure("unavailable", f"TensorRT is not available on this machine: {error}",
                      "install TensorRT for this GPU (pip install tensorrt from NVIDIA's index)")
    import numpy as np

    try:
        import torch
    except ImportError as error:
        raise Failure("torch", f"running an engine needs PyTorch (for GPU memory, streams and events): {error}",
                      "use the managed toolchain, or install torch in the [toolchain] python")

    standin_cpu = getattr(trt, "_pochi_standin_device", None) == "cpu"
    device = HostDevice(torch) if standin_cpu else CudaDevice(torch)
    gpu_name, gpu_cc = device.facts(trt)
    check_built_for(request, trt, gpu_name, gpu_cc)

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    with open(request["engine"], "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        raise Failure("load", f"TensorRT cannot load {request['engine']} (see the log above)",
                      "engines load only with the TensorRT version and GPU model they were built with: rebuild it here")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1:
        raise Failure("inputs", f"the engine has {len(inputs)} inputs ({', '.join(inputs)}); the report feeds one", "")
    input_name = inputs[0]
    data = np.ascontiguousarray(np.load(request["data"]).astype(np.float32))
    samples = data.shape[0]
    batch = choose_batch(engine, input_name, request.get("batch"), samples)
    context = engine.create_execution_context()
    if context is None:
        raise Failure("memory", "TensorRT could not create an execution context (out of GPU memory?)", "")

    chunks = [data[i:i + batch] for i in range(0, samples, batch)]
    bindings = {}
    for chunk in chunks:
        if chunk.shape[0] not in bindings:
            bindings[chunk.shape[0]] = Bindings(device, torch, engine, context, input_name, outputs, chunk.shape)
    # Every batch on the device before the timed runs, so they time execution only.
    staged = []
    for chunk in chunks:
        on_device = device.empty(chunk.shape, bindings[chunk.shape[0]].input_dtype)
        device.upload(chunk, on_device)
        staged.append(on_device)
    device.synchronize()

    def execute():
        if not context.execute_async_v3(device.handle):
            raise Failure("run", "TensorRT's execute_async_v3 failed (see the log above)", "")

    def run_staged(k):
        bindings[chunks[k].shape[0]].bind(context, staged[k])
        execute()

    for i in range(int(request["warmup"])):
        run_staged(i % len(staged))
    device.synchronize()
    times, sizes = [], []
    started = time.perf_counter()
    i = 0
    while len(times) < int(request["iterations"]) or time.perf_counter() - started < float(request["min_duration_s"]):
        k = i % len(staged)
        bindings[chunks[k].shape[0]].bind(context, staged[k])  # host work, before the timing
        times.append(device.timed(execute))
        sizes.append(chunks[k].shape[0])
        i += 1

    # One pass over the data, end to end: copy in, run, copy out.
    collected = {name: [] for name in outputs}
    end_to_end = []
    for chunk in chunks:
        b = bindings[chunk.shape[0]]
        t0 = time.perf_counter()
        into = device.empty(chunk.shape, b.input_dtype)
        device.upload(chunk, into)
        b.bind(context, into)
        execute()
        device.synchronize()
        host = {name: b.outputs[name].float().cpu().numpy().copy() for name in outputs}
        end_to_end.append(time.perf_counter() - t0)
        for name in outputs:
            collected[name].append(host[name])
    arrays = {f"output.{name}": np.concatenate(parts, axis=0) for name, parts in collected.items()}
    np.savez(request["outputs"], **arrays)
    return {
        "tensorrt": getattr(trt, "__version__", "unknown"),
        "gpu": {"name": gpu_name, "compute_capability": gpu_cc},
        "input": input_name,
        "outputs": outputs,
        "batch": batch,
        "times_s": times,
        "samples": sizes,
        "end_to_end_s": end_to_end,
        "timing": "CUDA events around execute_async_v3" if not standin_cpu else "wall clock (TensorRT stand-in on the CPU)",
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "--probe":
        return probe(argv[2])
    mode, key = build, "manifest"
    if len(argv) == 4 and argv[1] == "--infer":
        mode, key = infer, "run"
        argv = argv[1:]
    if len(argv) != 3:
        sys.stderr.write("usage: engine.py REQUEST.json RESULT.json | --infer REQUEST.json RESULT.json | --probe RESULT.json\n")
        return 2
    result_path = argv[2]
    try:
        with open(argv[1]) as f:
            request = json.load(f)
        answer = mode(request)
        result = {"ok": True, key: answer}
    except Failure as failure:
        result = {"ok": False, "kind": failure.kind, "error": str(failure), "hint": failure.hint}
    except Exception as error:
        result = {"ok": False, "kind": "exception", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()}
    write_json(result_path, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
