#!/bin/bash
# bench/gpu_export_check.sh: checks `device = "cuda:N"` exports on a GPU machine whose
# Python already has torch, onnx and onnxruntime (no registry access needed):
#   1. a small conv net exported on cuda:0 (the manifest records peak GPU memory);
#   2. the same net with the process starved of GPU memory: a real
#      torch.cuda.OutOfMemoryError, which must fail the stage with the OOM remedy and
#      publish nothing;
#   3. the one-shot `pochi export-onnx --device cuda:0`;
#   4. with MONAI importable (MONAI_SITE=dir holding monai/ and einops/ to copy in), the
#      full SwinUNETR (feature_size 48, 96^3) exported on the GPU, for its peak GPU memory.
# Usage: POCHI=target/release/pochi [MONAI_SITE=dir] bench/gpu_export_check.sh [OUT_DIR]
set -u
POCHI=$(realpath "${POCHI:-target/release/pochi}")
OUT=${1:-${OUT:-/tmp/gpu-export-check}}
SCRIPT_DIR=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${MONAI_SITE:-}" ] && MONAI_SITE=$(realpath "$MONAI_SITE")
WORK=$(mktemp -d)
mkdir -p "$OUT"
cd "$WORK"
cp "$SCRIPT_DIR/pipelines/scripts/random_init_checkpoint.py" .
nvidia-smi --query-gpu=index,name,memory.free,memory.total --format=csv
PY=$(command -v python3 || command -v python)
"$PY" -c "import torch, onnx, onnxruntime as o; print('torch', torch.__version__, 'onnx', onnx.__version__, 'onnxruntime', o.__version__, o.get_available_providers(), 'cuda', torch.cuda.is_available())"
"$PY" -m venv --system-site-packages --without-pip "$WORK/venv"
# When python3 is itself a venv (as on NVIDIA's images), a new venv sees the base
# interpreter's packages, not the parent venv's: chain the parent's with a .pth file.
"$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
  > "$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/parent-venv.pth"
if [ -n "${MONAI_SITE:-}" ]; then
  cp -r "$MONAI_SITE"/* "$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"/
fi
export POCHI_PYTHON="$WORK/venv/bin/python" POCHI_CACHE_DIR="$WORK/cache" NO_COLOR=1
cat > model.py <<'EOF'
import torch


class Small(torch.nn.Module):
    def __init__(self, channels=3, width=16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def starved(channels=3, width=16):
    """The same model, in a process allowed almost no GPU memory: a real CUDA OOM."""
    torch.cuda.set_per_process_memory_fraction(1e-6, 0)
    return Small(channels, width)
EOF
cat > pipeline.toml <<'EOF'
[stages.small_weights]
kind = "command"
run = ["{python}", "{inputs.script}", "--model", "model:Small", "--out", "{outputs.checkpoint}"]
inputs = { script = "random_init_checkpoint.py", model = "model.py" }
outputs = { checkpoint = "ckpt/small.pth" }

[stages.small_gpu]
kind = "export"
checkpoint = "@small_weights"
model = "model.py:Small"
input_shape = [3, 64, 64]
device = "cuda:0"

[stages.small_oom]
kind = "export"
checkpoint = "@small_weights"
model = "model.py:starved"
input_shape = [3, 512, 512]
device = "cuda:0"
EOF
"$POCHI" toolchain info
"$POCHI" build --keep-going --json pipeline.toml > "$OUT/small.json"
cat "$OUT/small.json"
cp build/pipeline/small_gpu.manifest.json "$OUT/" && cat build/pipeline/small_gpu.manifest.json
ls build/pipeline/small_oom.onnx 2>/dev/null && echo "FAIL: the OOM stage published an .onnx"
"$POCHI" export-onnx ckpt/small.pth --model model.py:Small --input-size 32 32 --device cuda:0 -o "$OUT/oneshot.onnx"
if "$WORK/venv/bin/python" -c "import monai, einops" 2>/dev/null; then
  cat > swin.toml <<'EOF'
[stages.weights]
kind = "command"
run = ["{python}", "{inputs.script}", "--model", "monai.networks.nets:SwinUNETR",
       "--arg", "in_channels=1", "--arg", "out_channels=14", "--arg", "feature_size=48", "--out", "{outputs.checkpoint}"]
inputs = { script = "random_init_checkpoint.py" }
outputs = { checkpoint = "ckpt/swin.pth" }

[stages.swin_gpu]
kind = "export"
checkpoint = "@weights"
model = "monai.networks.nets:SwinUNETR"
model_args = { in_channels = 1, out_channels = 14, feature_size = 48 }
input_shape = [1, 96, 96, 96]
device = "cuda:0"
EOF
  "$POCHI" build --json swin.toml > "$OUT/swin.json"
  cp build/swin/swin_gpu.manifest.json "$OUT/" && cat build/swin/swin_gpu.manifest.json
fi
echo "results in $OUT"
