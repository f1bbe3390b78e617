#!/bin/sh
# Re-resolves toolchain/requirements.lock from requirements.in (exact versions + hashes).
# The lock is embedded in the pochi binary; changing it changes the toolchain's hash, so
# the next build creates a new environment and reruns every Python stage.
#
# onnxruntime-gpu is excluded: nvidia-modelopt[onnx] asks for it on Linux, but it installs
# into the same `onnxruntime` package directory as the CPU wheel pinned here and the two
# would overwrite each other.
set -eu
cd "$(dirname "$0")"
uv pip compile requirements.in \
  --excludes excludes.txt \
  --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 \
  --generate-hashes \
  --custom-compile-command "toolchain/compile.sh" \
  -o requirements.lock
