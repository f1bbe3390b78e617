"""pochi engine worker: builds a TensorRT engine from an ONNX model with TensorRT's
official Python API (TensorRT 10.x and 11), then checks the precision it got.

Run by pochi as:  python -I engine.py REQUEST.json RESULT.json
              or  python -I engine.py --probe RESULT.json
pochi decides the optimization profiles (from the ONNX's declared shapes) before this runs;
the request carries them. The answer is RESULT.json only:
{"ok": true, ...} or {"ok": false, "kind": ..., "error": ..., "hint": ..., "traceback": ...}.

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
    strongly_typed = not use_fp16_flag and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise Failure("parse", "TensorRT cannot parse the ONNX: " + "; ".join(errors) or "unknown error",
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
    cache_reused = False
    if cache_path:
        blob = b""
        if os.path.exists(cache_path):
            with open(cache_path, "rb") as f:
                blob = f.read()
            cache_reused = bool(blob)
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)

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
        },
        "duration_s": round(time.monotonic() - started, 3),
    }
    write_json(request["outputs"]["manifest"], manifest)
    return manifest


def main(argv):
    if len(argv) == 3 and argv[1] == "--probe":
        return probe(argv[2])
    if len(argv) != 3:
        sys.stderr.write("usage: engine.py REQUEST.json RESULT.json | --probe RESULT.json\n")
        return 2
    result_path = argv[2]
    try:
        with open(argv[1]) as f:
            request = json.load(f)
        manifest = build(request)
        result = {"ok": True, "manifest": manifest}
    except Failure as failure:
        result = {"ok": False, "kind": failure.kind, "error": str(failure), "hint": failure.hint}
    except Exception as error:
        result = {"ok": False, "kind": "exception", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()}
    write_json(result_path, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
