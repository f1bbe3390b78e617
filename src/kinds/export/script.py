"""pochi export worker: loads a checkpoint into its model, exports it to ONNX, checks the
ONNX with ONNX Runtime against PyTorch on a seeded random input, and writes the reference
input/outputs (.npz) and a manifest (JSON).

Run by pochi as:  python -I export.py REQUEST RESULT
REQUEST is a JSON object, inline or in a file; RESULT is where the answer goes, JSON only:
  {"ok": true, ...figures}   or   {"ok": false, "kind": ..., "error": ..., "hint": ..., "traceback": ...}
While it runs, RESULT.progress holds the current phase and the peak memory so far (what
pochi reports if the process is killed). Exit status: 0 ok, 1 failed (RESULT says why),
2 unusable arguments.
"""

import json
import os
import resource
import sys
import threading
import time
import traceback
import zipfile

PROTOCOL = 1
TWO_GB = 2 * 1024**3
OOM_HINT = (
    'export on the CPU (device = "cpu", the default), export a smaller input_shape, '
    'or declare more memory for the stage (resources = { memory = "..." }) and run it on a machine that has it'
)


class Failure(Exception):
    """An error pochi explains itself (no traceback needed to understand it)."""

    def __init__(self, kind, message, hint=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_json(path, value):
    temp = f"{path}.tmp{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(temp, path)


class Progress:
    """Writes the phase and the peak memory to RESULT.progress every half second."""

    def __init__(self, path):
        self.path = path
        self.current = "start"
        self.started = time.monotonic()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def phase(self, name):
        self.current = name
        sys.stderr.write(f"pochi export: {name} ({time.monotonic() - self.started:.1f}s)\n")
        sys.stderr.flush()
        self.write()

    def write(self):
        try:
            write_json(self.path, {"phase": self.current, "peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid()})
        except OSError:
            pass

    def loop(self):
        while not self.stop_event.wait(0.5):
            self.write()

    def start(self):
        self.write()
        self.thread.start()

    def stop(self):
        self.stop_event.set()


def is_oom(error, torch):
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


def oom_failure(error, torch, device, phase):
    peak = f"peak host memory {peak_rss_bytes() / 2**30:.2f} GiB"
    if device != "cpu" and torch.cuda.is_available():
        peak += f", peak GPU memory {torch.cuda.max_memory_allocated(0) / 2**30:.2f} GiB"
    where = "GPU" if device != "cpu" and not isinstance(error, MemoryError) else "host"
    return Failure("oom", f"out of {where} memory during {phase} on {device} ({peak}): {error}", OOM_HINT)


# ---- loading -----------------------------------------------------------------------------


def import_model(spec, torch):
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise Failure("model", f"`model = \"{spec}\"` is not an import path", 'write "package.module:Name" or "file.py:Name"')
    if target.endswith(".py"):
        import importlib.util

        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise Failure("model", f"the model file `{target}` does not exist", "the path is relative to the pipeline file")
        sys.path.insert(0, os.path.dirname(path))
        module_name = "pochi_model_" + "".join(c if c.isalnum() else "_" for c in os.path.basename(path)[:-3])
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        import importlib

        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            top = target.split(".")[0]
            if error.name and (error.name == target or target.startswith(error.name + ".") or error.name == top):
                hint = (
                    f"`{error.name}` is not installed in the toolchain (`pochi toolchain info` lists what is); "
                    'for your own code, write model = "path/to/file.py:Name" (relative to the pipeline)'
                )
            else:
                hint = f"`{target}` imports `{error.name}`, which the toolchain lacks"
            raise Failure("model", f"cannot import module `{target}` for model `{spec}`: {error}", hint)
    found = module
    for part in name.split("."):
        if not hasattr(found, part):
            import difflib

            close = difflib.get_close_matches(part, [n for n in dir(found) if not n.startswith("_")], n=3)
            hint = f"did you mean {', '.join('`' + c + '`' for c in close)}?" if close else None
            raise Failure("model", f"`{target}` has no `{name}`", hint)
        found = getattr(found, part)
    return found


def build_model(spec, args, torch):
    factory = import_model(spec, torch)
    try:
        model = factory(**args)
    except TypeError as error:
        raise Failure("model", f"cannot build `{spec}` with model_args {json.dumps(args, sort_keys=True)}: {error}", "check model_args against the class's parameters")
    if not isinstance(model, torch.nn.Module):
        raise Failure("model", f"`{spec}` returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def corrupt(path, error):
    return Failure(
        "checkpoint",
        f"cannot read the checkpoint `{path}`: it is not a PyTorch checkpoint pochi can load ({type(error).__name__}: {error})",
        "give a state_dict saved with torch.save, a pickled model, or a TorchScript archive; the file may be truncated or of another format",
    )


def read_checkpoint(path, torch):
    """Returns (object, format). Format: torchscript | state_dict | pickled_model."""
    if not os.path.isfile(path):
        raise Failure("checkpoint", f"the checkpoint `{path}` does not exist")
    if os.path.getsize(path) == 0:
        raise Failure("checkpoint", f"the checkpoint `{path}` is empty")
    if is_torchscript(path):
        try:
            return torch.jit.load(path, map_location="cpu"), "torchscript"
        except Exception as error:
            raise corrupt(path, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights"
    except Exception:
        pass
    # Not plain tensors: a pickled model (unpickling runs the checkpoint's code: it is the
    # user's own file, named in the pipeline).
    try:
        return torch.load(path, map_location="cpu", weights_only=False), "pickle"
    except Exception as error:
        raise corrupt(path, error)


def is_state_dict(value, torch):
    return isinstance(value, dict) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value.values())


def find_state_dict(obj, torch):
    if is_state_dict(obj, torch):
        return obj, None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "network"):
            if is_state_dict(obj.get(key), torch):
                return obj[key], key
    return None, None


def key_mismatch(model_keys, state, expected):
    missing = [k for k in model_keys if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in model_keys
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def listing(keys, limit=12):
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_model(request, torch):
    """Returns (model, facts about the checkpoint)."""
    path = request["checkpoint"]
    obj, how = read_checkpoint(path, torch)
    facts = {"path": path, "bytes": os.path.getsize(path)}
    if how == "torchscript":
        facts["format"] = "torchscript"
        return obj, facts
    if isinstance(obj, torch.nn.Module):
        facts["format"] = "pickled_model"
        return obj, facts
    if isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        facts["format"] = "pickled_model"
        facts["nested_under"] = "model"
        return obj["model"], facts
    state, nested = find_state_dict(obj, torch)
    if state is None:
        keys = f" with keys {listing(sorted(map(str, obj.keys())))}" if isinstance(obj, dict) else ""
        raise Failure(
            "checkpoint",
            f"the checkpoint `{path}` holds a {type(obj).__name__}{keys}: neither a state_dict (also under `state_dict` or `model_state_dict`), a model nor a TorchScript archive",
        )
    facts["format"] = "state_dict"
    if nested:
        facts["nested_under"] = nested
    if not request.get("model"):
        raise Failure("model", f"the checkpoint `{path}` is a state_dict: set `model` to the class it belongs to", 'e.g. model = "monai.networks.nets:SwinUNETR"')
    model = build_model(request["model"], request.get("model_args") or {}, torch)
    expected = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}
        facts["stripped_prefix"] = "module."
    missing, unexpected, shapes = key_mismatch(list(expected.keys()), state, expected)
    if missing or unexpected or shapes:
        lines = [
            f"the checkpoint's state_dict does not match `{request['model']}` with model_args {json.dumps(request.get('model_args') or {}, sort_keys=True)}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape"
        ]
        if missing:
            lines.append(f"missing in the checkpoint: {listing(missing)}")
        if unexpected:
            lines.append(f"unexpected in the checkpoint: {listing(unexpected)}")
        for key, got, want in shapes[:12]:
            lines.append(f"shape of {key}: checkpoint {list(got)}, model {list(want)}")
        raise Failure(
            "state_dict",
            "\n".join(lines),
            "check `model` and `model_args` against how the checkpoint was trained (e.g. feature_size, in/out channels); loading is strict",
        )
    model.load_state_dict(state, strict=True)
    return model, facts


# ---- export ------------------------------------------------------------------------------


def flatten_outputs(value, torch):
    """Returns [(name or None, tensor)] for a tensor, a tuple/list of tensors, or a dict."""
    if isinstance(value, torch.Tensor):
        return [(None, value)]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out.extend(flatten_outputs(item, torch))
        return out
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out.extend((str(key), t) for _, t in flatten_outputs(item, torch))
        return out
    raise Failure("model", f"the model returned a {type(value).__name__}; the export stage needs tensors (a tensor, a tuple/list or a dict of them)")


def dynamic_axes_for(request, names_in, names_out, outputs, rank):
    input_axes = {int(axis): name for axis, name in request["dynamic_axes"].items()}
    axes = {}
    if input_axes:
        axes[names_in[0]] = input_axes
    for name, (_, tensor) in zip(names_out, outputs):
        out_axes = {}
        for axis, axis_name in input_axes.items():
            if axis == 0 and tensor.dim() > 0:
                out_axes[0] = axis_name
            elif tensor.dim() == rank and axis < rank:
                out_axes[axis] = axis_name
        if out_axes:
            axes[name] = out_axes
    return axes


def run_export(model, sample, path, request, names_in, names_out, axes, torch):
    kwargs = {"opset_version": request["opset"], "input_names": names_in, "output_names": names_out}
    if request["exporter"] == "dynamo":
        torch.onnx.export(model, (sample,), path, dynamo=True, dynamic_axes=axes or None, external_data=False, optimize=True, **kwargs)
    else:
        torch.onnx.export(model, (sample,), path, dynamo=False, dynamic_axes=axes or None, do_constant_folding=True, **kwargs)


def consolidate(path, data_path, onnx, write_external):
    """Rewrites the exported model as one .onnx (+ one data file when `write_external`)."""
    directory = os.path.dirname(os.path.abspath(path))
    others = set(os.listdir(directory)) - {os.path.basename(path)}
    if not others and not write_external:
        return
    model = onnx.load(path, load_external_data=True)
    for name in others:
        os.remove(os.path.join(directory, name))
    if write_external:
        location = os.path.basename(data_path)
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)
    else:
        onnx.save_model(model, path)


def describe_value(info, onnx):
    dims = []
    for dim in info.type.tensor_type.shape.dim:
        dims.append(dim.dim_param if dim.dim_param else int(dim.dim_value))
    elem = onnx.TensorProto.DataType.Name(info.type.tensor_type.elem_type).lower()
    return {"name": info.name, "shape": dims, "dtype": elem}


def compare(ort_values, ref_values, names_out, rtol, atol, np):
    figures = []
    for name, got, want in zip(names_out, ort_values, ref_values):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            figures.append({"name": name, "shape_mismatch": [list(got.shape), list(want.shape)], "passed": False})
            continue
        diff = np.abs(got - want)
        outside = int(np.count_nonzero(diff > atol + rtol * np.abs(want)))
        figures.append(
            {
                "name": name,
                "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
                "values": int(diff.size),
                "outside_tolerance": outside,
                "passed": outside == 0 and bool(np.all(np.isfinite(got)) or not np.all(np.isfinite(want))),
            }
        )
    return figures


def export(request, progress):
    timings = {}
    started = time.monotonic()
    mark = [started]

    def lap(name):
        now = time.monotonic()
        timings[name] = round(now - mark[0], 3)
        mark[0] = now

    progress.phase("import torch")
    import numpy as np
    import torch

    lap("import_s")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    device = "cuda:0" if visible not in ("", "-1") else "cpu"
    if device != "cpu" and not torch.cuda.is_available():
        raise Failure("device", f"the stage runs on GPU {visible} but this toolchain's torch sees no GPU (torch {torch.__version__})", 'use device = "cpu", or a toolchain whose torch has CUDA')
    torch.manual_seed(request["seed"])
    np.random.seed(request["seed"] % 2**32)

    phase = "loading the checkpoint"
    progress.phase(phase)
    try:
        model, checkpoint = load_model(request, torch)
        model.eval()
        parameters = int(sum(p.numel() for p in model.parameters()))
        parameter_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
        lap("load_s")
        external = request["external_data"]
        if external == "auto" and parameter_bytes >= TWO_GB:
            raise Failure(
                "external_data",
                f"the model's parameters take {parameter_bytes / 2**30:.2f} GiB, over ONNX's 2 GB limit for a single file",
                "set external_data = true: the weights go to <name>.onnx.data next to the .onnx",
            )
        write_external = external is True

        shape = [1] + list(request["input_shape"])
        generator = torch.Generator().manual_seed(request["seed"])
        sample = torch.randn(shape, generator=generator, dtype=torch.float32)
        if device != "cpu":
            # The reference outputs must be true fp32: TF32 (on by default for convolutions
            # on Ampere and newer) makes a GPU forward differ from ONNX Runtime's fp32 by
            # ~1e-3 (seen on an H100 with SwinUNETR).
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            # Some torch versions refuse to reset the counters of an uninitialized device.
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats(0)
            model = model.to(device)
        sample_dev = sample.to(device)

        phase = "the PyTorch forward pass"
        progress.phase(phase)
        with torch.no_grad():
            try:
                raw = model(sample_dev)
            except Exception as error:
                if is_oom(error, torch):
                    raise
                raise Failure(
                    "input_shape",
                    f"the model does not accept an input of shape {shape} (input_shape = {list(request['input_shape'])} plus the batch axis): {type(error).__name__}: {error}",
                    "check input_shape (channels first, batch excluded) against what the model accepts, e.g. SwinUNETR needs spatial sizes divisible by 32",
                )
        outputs = flatten_outputs(raw, torch)
        lap("forward_s")
        names_in = list(request.get("input_names") or ["input"])
        if len(names_in) != 1:
            raise Failure("names", f"input_names has {len(names_in)} names but the export stage feeds the model one input tensor")
        given_out = request.get("output_names")
        if given_out:
            names_out = list(given_out)
        elif len(outputs) == 1:
            names_out = ["output"]
        else:
            names_out = [name or f"output_{i}" for i, (name, _) in enumerate(outputs)]
        if len(names_out) != len(outputs):
            raise Failure("names", f"output_names has {len(names_out)} names but the model returns {len(outputs)} tensors")
        axes = dynamic_axes_for(request, names_in, names_out, outputs, len(shape))

        phase = f"the ONNX export ({request['exporter']} exporter, opset {request['opset']})"
        progress.phase(phase)
        onnx_path = request["outputs"]["onnx"]
        with torch.no_grad():
            run_export(model, sample_dev, onnx_path, request, names_in, names_out, axes, torch)
        import onnx

        data_path = request["outputs"].get("onnx_data")
        consolidate(onnx_path, data_path, onnx, write_external)
        onnx.checker.check_model(onnx_path)
        lap("export_s")
        peak_gpu = int(torch.cuda.max_memory_allocated(0)) if device != "cpu" else None
    except Failure:
        raise
    except Exception as error:
        if is_oom(error, torch):
            raise oom_failure(error, torch, device, phase)
        raise

    references = [t.detach().float().cpu().numpy() for _, t in outputs]
    del model, raw, outputs
    if device != "cpu":
        torch.cuda.empty_cache()

    verification = None
    verify = request.get("verify")
    import onnxruntime as ort

    if verify:
        phase = "verification with ONNX Runtime"
        progress.phase(phase)
        options = ort.SessionOptions()
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        got = session.run(None, {names_in[0]: sample.numpy()})
        del session
        figures = compare(got, references, names_out, verify["rtol"], verify["atol"], np)
        verification = {
            "rtol": verify["rtol"],
            "atol": verify["atol"],
            "provider": "CPUExecutionProvider",
            "batch": 1,
            "seed": request["seed"],
            "outputs": figures,
            "max_abs_diff": max((f.get("max_abs_diff", float("inf")) for f in figures), default=0.0),
            "mean_abs_diff": max((f.get("mean_abs_diff", float("inf")) for f in figures), default=0.0),
            "passed": all(f["passed"] for f in figures),
        }
        lap("verify_s")
        if not verification["passed"]:
            worst = [f for f in figures if not f["passed"]]
            details = "; ".join(
                f"`{f['name']}`: shapes {f['shape_mismatch'][0]} vs {f['shape_mismatch'][1]}"
                if "shape_mismatch" in f
                else f"`{f['name']}`: max |diff| {f['max_abs_diff']:.3g}, mean {f['mean_abs_diff']:.3g}, {f['outside_tolerance']} of {f['values']} values outside atol {verify['atol']:g} + rtol {verify['rtol']:g} x |reference|"
                for f in worst
            )
            raise Failure(
                "verification",
                f"the ONNX model's outputs differ from PyTorch's on the same input: {details}",
                "nothing was published; if the difference is expected, loosen verify = { rtol = ..., atol = ... }, or try another opset or exporter = \"dynamo\"",
            )

    phase = "writing the reference and the manifest"
    progress.phase(phase)
    reference_path = request["outputs"]["reference"]
    arrays = {f"input.{names_in[0]}": sample.numpy()}
    arrays.update({f"output.{name}": value for name, value in zip(names_out, references)})
    with open(reference_path, "wb") as out:
        np.savez(out, **arrays)
    if write_external and data_path:
        produced = os.path.join(os.path.dirname(os.path.abspath(onnx_path)), os.path.basename(data_path))
        os.replace(produced, data_path)

    graph = onnx.load(onnx_path, load_external_data=False).graph
    initializer_names = {i.name for i in graph.initializer}
    timings["total_s"] = round(time.monotonic() - started, 3)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    if "monai" in sys.modules:
        versions["monai"] = sys.modules["monai"].__version__
    manifest = {
        "pochi_manifest": PROTOCOL,
        "model": request.get("model"),
        "model_args": request.get("model_args") or {},
        "checkpoint": checkpoint,
        "device": device,
        "exporter": request["exporter"],
        "opset": request["opset"],
        "seed": request["seed"],
        "input_shape": list(request["input_shape"]),
        "dynamic_axes": {name: {str(k): v for k, v in a.items()} for name, a in axes.items()},
        "inputs": [describe_value(i, onnx) for i in graph.input if i.name not in initializer_names],
        "outputs": [describe_value(o, onnx) for o in graph.output],
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "onnx_bytes": os.path.getsize(onnx_path),
        "external_data_bytes": os.path.getsize(data_path) if write_external and data_path else None,
        "reference": {"inputs": {names_in[0]: f"input.{names_in[0]}"}, "outputs": {n: f"output.{n}" for n in names_out}},
        "verification": verification,
        "durations": timings,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": peak_gpu,
        "versions": versions,
    }
    write_json(request["outputs"]["manifest"], manifest)
    return {
        "onnx_bytes": manifest["onnx_bytes"],
        "parameters": parameters,
        "verification": verification,
        "durations": timings,
        "peak_rss_bytes": manifest["peak_rss_bytes"],
        "peak_gpu_bytes": peak_gpu,
        "device": device,
    }


def read_request(arg):
    text = arg if arg.lstrip().startswith("{") else open(arg, encoding="utf-8").read()
    request = json.loads(text)
    if request.get("protocol") != PROTOCOL:
        raise ValueError(f"request protocol {request.get('protocol')} is not {PROTOCOL}")
    return request


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: export.py REQUEST RESULT\n")
        return 2
    result_path = argv[2]
    try:
        request = read_request(argv[1])
    except Exception as error:
        write_json(result_path, {"ok": False, "kind": "request", "error": f"unusable request: {error}", "traceback": traceback.format_exc()})
        return 2
    progress = Progress(result_path + ".progress")
    progress.start()
    try:
        result = export(request, progress)
        result["ok"] = True
    except Failure as failure:
        result = {"ok": False, "kind": failure.kind, "error": failure.message, "hint": failure.hint, "traceback": traceback.format_exc()}
    except Exception as error:
        result = {"ok": False, "kind": "exception", "error": f"{type(error).__name__}: {error}", "hint": None, "traceback": traceback.format_exc()}
    progress.stop()
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["phase"] = progress.current
    if not result["ok"]:
        sys.stderr.write(result["traceback"])
        sys.stderr.write(f"pochi export: failed: {result['error']}\n")
    write_json(result_path, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
