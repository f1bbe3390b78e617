"""pochi quantize worker: bakes a precision into an ONNX model on the CPU.

fp16 / bf16: NVIDIA ModelOpt AutoCast (modelopt.onnx.autocast.convert_to_mixed_precision),
graph inputs and outputs kept fp32. int8 / fp8: ModelOpt ONNX PTQ with explicit
QuantizeLinear/DequantizeLinear, calibrated on a float32 .npy through ONNX Runtime's CPU
provider. The result is loaded in ONNX Runtime (CPU) and run on one sample against the
original model before pochi publishes it.

Run by pochi as:  python -I quantize.py REQUEST_JSON RESULT.json
The answer is RESULT.json only: {"ok": true, "manifest": {...}} or
{"ok": false, "kind": ..., "error": ..., "hint": ..., "traceback": ...}.
"""

import json
import os
import sys
import time
import traceback

ELEM_NAMES = {1: "fp32", 10: "fp16", 16: "bf16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64",
              9: "bool", 11: "fp64", 17: "fp8", 18: "fp8", 19: "fp8", 20: "fp8"}


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


def phase(name, started):
    sys.stderr.write(f"pochi quantize: {name} ({time.monotonic() - started:.1f}s)\n")
    sys.stderr.flush()


def split_keep(model, keep):
    """keep_fp32 entries: node names, else op types present in the model."""
    names = {node.name for node in model.graph.node}
    ops = {node.op_type for node in model.graph.node}
    nodes, op_types = [], []
    for entry in keep:
        if entry in names:
            nodes.append(entry)
        elif entry in ops:
            op_types.append(entry)
        else:
            import difflib

            close = difflib.get_close_matches(entry, sorted(names | ops), n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"the model's op types are: {', '.join(sorted(ops))}"
            raise Failure("keep_fp32", f"`keep_fp32` names `{entry}`, which is neither a node name nor an op type in the model", hint)
    return nodes, op_types


def load_calibration(path, samples, graph_input):
    import numpy as np

    try:
        data = np.load(path, mmap_mode="r")
    except Exception as error:
        raise Failure("calibration", f"cannot read the calibration data {path}: {error}",
                      "calibration.data must be a dataset stage (a float32 .npy of N samples)")
    if data.ndim < 2:
        raise Failure("calibration", f"the calibration data has shape {list(data.shape)}: expected N x C x ...", "")
    rank = len(graph_input.type.tensor_type.shape.dim)
    if data.ndim != rank:
        raise Failure(
            "calibration",
            f"the calibration data has shape {list(data.shape)} ({data.ndim} axes) but the model input "
            f"`{graph_input.name}` has {rank} axes",
            "the dataset's transform must produce the model's input layout (N x C x H x W or N x C x D x H x W)",
        )
    for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim):
        if axis > 0 and dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != data.shape[axis]:
            raise Failure(
                "calibration",
                f"the calibration data has shape {list(data.shape)} but the model input `{graph_input.name}` "
                f"is fixed at {dim.dim_value} on axis {axis}",
                "resize or crop the dataset to the model's input size",
            )
    n = min(samples, data.shape[0]) if samples else data.shape[0]
    return np.ascontiguousarray(data[:n], dtype=np.float32)


def sample_shape(graph_input, input_size):
    """The shape of one sample: the batch axis 1, the last len(input_size) axes (H W, or
    D H W) from `input_size` where dynamic, every other axis as the model fixes it. None when
    an axis stays dynamic (no size to try)."""
    dims = graph_input.type.tensor_type.shape.dim
    first_spatial = len(dims) - len(input_size or [])
    shape = []
    for axis, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(1)
        elif input_size and axis >= first_spatial:
            shape.append(int(input_size[axis - first_spatial]))
        else:
            return None
    return shape


def sample_input(model, graph_input, calibration, input_size=None):
    import numpy as np

    if calibration is not None:
        return calibration[:1]
    shape = sample_shape(graph_input, input_size)
    if shape is None:
        return None  # a dynamic spatial axis: no size to try
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def range_check_data(graph_input, request, workdir):
    """AutoCast's range check runs the model on random data, every dynamic axis at 1: a model
    with dynamic H and W runs at 1 x 1, where a convolution without padding fails inside
    ONNX Runtime. With `input_size` the data is an .npz at that size; without, such a model
    is refused with what to do. None when the model fixes its sizes."""
    import numpy as np

    dims = graph_input.type.tensor_type.shape.dim
    dynamic = [axis for axis, dim in enumerate(dims) if axis > 0 and not (dim.HasField("dim_value") and dim.dim_value > 0)]
    if not dynamic:
        return None
    shape = sample_shape(graph_input, request.get("input_size"))
    if shape is None:
        shown = " x ".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?" for d in dims)
        raise Failure(
            "model",
            f"the ONNX input `{graph_input.name}` ({shown}) has dynamic sizes: AutoCast's range check "
            "runs the model on random data and would run it at 1 x 1",
            "give the size to check at: `pochi convert ... --input-size H W` (input_size = [H, W] on a "
            "quantize stage), or skip the check: `--no-range-check` (range_check = false)")
    path = os.path.join(workdir, "range_check_input.npz")
    data = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    np.savez(path, **{graph_input.name: data})
    return path


def runtime_inputs(model):
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def run_cpu(path, feed):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def compare(reference, output):
    import numpy as np

    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(output, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / denom) if denom > 0 else (1.0 if not a.any() and not b.any() else 0.0)
    return {"max_abs_error": float(np.max(np.abs(a - b))) if a.size else 0.0, "cosine": cosine}


def describe(model):
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        types[value.name] = value.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    by_op, by_precision = {}, {}
    for node in inferred.graph.node:
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
        elem = types.get(node.output[0]) if node.output else None
        name = ELEM_NAMES.get(elem, "unknown")
        by_precision[name] = by_precision.get(name, 0) + 1
    weights = {}
    for init in inferred.graph.initializer:
        name = ELEM_NAMES.get(init.data_type, str(init.data_type))
        weights[name] = weights.get(name, 0) + 1
    return {
        "nodes": len(inferred.graph.node),
        "nodes_by_op_type": dict(sorted(by_op.items())),
        "nodes_by_precision": dict(sorted(by_precision.items())),
        "initializers_by_precision": dict(sorted(weights.items())),
        "quantize_linear": by_op.get("QuantizeLinear", 0),
        "dequantize_linear": by_op.get("DequantizeLinear", 0),
    }


def structural_check(path, runtime_error):
    """What can be checked of a bf16 model that ONNX Runtime's CPU provider cannot run: the
    ONNX checker, float32 graph inputs and outputs (keep_io_types), and bf16 weights."""
    import onnx

    onnx.checker.check_model(path)
    model = onnx.load(path, load_external_data=False)
    io_types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    if io_types != {1}:
        raise Failure("verify", "the bf16 model's graph inputs or outputs are not float32", "")
    if not any(init.data_type == 16 for init in model.graph.initializer):
        raise Failure("verify", "the bf16 model has no bf16 weights: AutoCast converted nothing",
                      "the model may have no operators AutoCast converts; check keep_fp32")
    first_line = runtime_error.strip().splitlines()[0] if runtime_error.strip() else runtime_error
    return {
        "ran": False,
        "structural": True,
        "why": "ONNX Runtime's CPU provider has no bf16 kernel for this model (" + first_line[:300] + "); "
               "checked instead: the ONNX checker, float32 inputs and outputs, bf16 weights. TensorRT runs "
               "it when it builds the engine; a report on a GPU measures its parity",
    }


def versions():
    import importlib.metadata as md

    found = {}
    for dist in ("nvidia-modelopt", "onnx", "onnxruntime", "numpy"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def private_copy(source, workdir):
    """ModelOpt may rewrite the model file it is given: work on a copy (with its external
    data files), never on the input pochi fingerprinted."""
    import shutil

    target = os.path.join(workdir, os.path.basename(source))
    shutil.copyfile(source, target)
    folder = os.path.dirname(os.path.abspath(source))
    for name in os.listdir(folder):
        if name.startswith(os.path.basename(source)) and name != os.path.basename(source):
            shutil.copyfile(os.path.join(folder, name), os.path.join(workdir, name))
    return target


def quantize(request):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pochi-quantize-") as workdir:
        return quantize_in(request, workdir)


def quantize_in(request, workdir):
    started = time.monotonic()
    import numpy as np
    import onnx

    original = request["onnx"]
    source = private_copy(original, workdir)
    out_path = request["outputs"]["onnx"]
    precision = request["precision"]
    model = onnx.load(source)
    inputs = runtime_inputs(model)
    if len(inputs) != 1:
        raise Failure("model", f"the model has {len(inputs)} inputs; pochi quantizes single-input models", "")
    graph_input = inputs[0]
    keep_nodes, keep_ops = split_keep(model, request.get("keep_fp32") or [])
    calibration = None
    calib = request.get("calibration")
    if calib:
        phase("loading calibration data", started)
        calibration = load_calibration(calib["data"], calib.get("samples"), graph_input)

    if precision in ("fp16", "bf16"):
        phase(f"autocast to {precision}", started)
        from modelopt.onnx.autocast import convert_to_mixed_precision

        # range_check = false: no reference run to find values beyond fp16's range.
        if request.get("range_check") is False:
            unchecked = {"data_max": float("inf")}
        else:
            data = range_check_data(graph_input, request, workdir)
            unchecked = {"calibration_data": data} if data else {}
        converted = convert_to_mixed_precision(
            onnx_path=source,
            low_precision_type=precision,
            nodes_to_exclude=keep_nodes or None,
            op_types_to_exclude=keep_ops or None,
            keep_io_types=True,
            providers=["cpu"],
            **unchecked,
        )
        onnx.save(converted, out_path)
    else:
        phase(f"{precision} post-training quantization on {len(calibration)} samples", started)
        from modelopt.onnx.quantization import quantize as modelopt_quantize

        batch = int(calib.get("batch_size") or 1)
        usable = (len(calibration) // batch) * batch
        if usable == 0:
            raise Failure("calibration", f"{len(calibration)} calibration samples are fewer than batch_size = {batch}", "")
        kwargs = dict(
            quantize_mode=precision,
            calibration_data=calibration[:usable],
            calibration_method=calib.get("method") or "entropy",
            calibration_eps=["cpu"],
            op_types_to_exclude=keep_ops or None,
            nodes_to_exclude=keep_nodes or None,
            output_path=out_path,
            high_precision_dtype=request.get("high_precision") or "fp16",
            log_level="WARNING",
        )
        if batch > 1 or any(not d.HasField("dim_value") for d in graph_input.type.tensor_type.shape.dim):
            shape = "x".join(str(s) for s in (batch,) + calibration.shape[1:])
            kwargs["calibration_shapes"] = f"{graph_input.name}:{shape}"
        if request.get("calibration_cache"):
            kwargs["calibration_cache_path"] = request["calibration_cache"]
        modelopt_quantize(source, **kwargs)
        if not os.path.exists(out_path):
            raise Failure("quantize", "ModelOpt finished without writing the quantized model", "")

    phase("checking the result in ONNX Runtime (CPU)", started)
    quantized = onnx.load(out_path)
    summary = describe(quantized)
    if precision in ("int8", "fp8") and summary["quantize_linear"] == 0 and summary["dequantize_linear"] == 0:
        hint = "the model may have no quantizable operators (Conv, MatMul, Gemm, ...)"
        if precision == "fp8":
            hint = ("ModelOpt's fp8 leaves out Conv layers with 16 or fewer input or output channels and "
                    "small MatMul/Gemm: a small model may have nothing to quantize; int8 covers small layers")
        raise Failure("quantize", f"the {precision} model has no QuantizeLinear/DequantizeLinear nodes", hint)
    sample = sample_input(model, graph_input, calibration, request.get("input_size"))
    check = {"ran": False}
    if sample is not None:
        feed = {graph_input.name: sample}
        reference = run_cpu(original, feed)
        try:
            got = run_cpu(out_path, feed)
        except Exception as error:
            if precision == "bf16" and "NOT_IMPLEMENTED" in str(error):
                got = None
                check = structural_check(out_path, str(error))
            else:
                raise Failure("verify", f"the {precision} model does not run in ONNX Runtime on the CPU: {error}", "")
    if sample is not None and got is not None:
        if not all(np.all(np.isfinite(np.asarray(o, dtype=np.float64))) for o in got):
            raise Failure("verify", f"the {precision} model produces non-finite outputs on a calibration sample", "")
        check = {"ran": True, "sample_shape": list(sample.shape), **compare(reference[0], got[0])}
    elif sample is None:
        try:
            __import__("onnxruntime").InferenceSession(out_path, providers=["CPUExecutionProvider"])
            check = {"ran": False, "loaded": True, "why": "dynamic spatial axes and no calibration data"}
        except Exception as error:
            if not (precision == "bf16" and "NOT_IMPLEMENTED" in str(error)):
                raise Failure("verify", f"the {precision} model does not load in ONNX Runtime on the CPU: {error}", "")
            check = structural_check(out_path, str(error))

    manifest = {
        "precision": precision,
        "source": original,
        "method": (calib or {}).get("method") if precision in ("int8", "fp8") else "autocast",
        "calibration_samples": None if calibration is None else int(len(calibration)),
        "kept_fp32": {"nodes": keep_nodes, "op_types": keep_ops},
        "high_precision": request.get("high_precision") if precision in ("int8", "fp8") else None,
        "calibration_cache": request.get("calibration_cache"),
        "check": check,
        "versions": versions(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    manifest.update(summary)
    write_json(request["outputs"]["manifest"], manifest)
    return manifest


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: quantize.py REQUEST_JSON RESULT.json\n")
        return 2
    result_path = argv[2]
    try:
        text = argv[1] if argv[1].lstrip().startswith("{") else open(argv[1], encoding="utf-8").read()
        manifest = quantize(json.loads(text))
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
