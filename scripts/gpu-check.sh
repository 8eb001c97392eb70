#!/usr/bin/env bash
# The one command to run on a machine with an NVIDIA GPU: installs the GPU stack, runs the GPU/TensorRT
# tests (they skip with the reason when a stack is missing), builds engines of the demo preset and prints
# the latency table of scripts/bench_gpu.py (torch eager, ONNX Runtime CUDA / TensorRT providers,
# TensorRT fp16 / fp8, TensorRT fp16 static with and without CUDA graphs).
#
#   scripts/gpu-check.sh [OUT_DIR]          (DISCA_SKIP_INSTALL=1: use the environment as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/disca-gpu-check}
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true

if [ "${DISCA_SKIP_INSTALL:-0}" != 1 ]; then
    # onnxruntime and onnxruntime-gpu share one import directory: remove both, install only the GPU one.
    pip uninstall -y -q onnxruntime onnxruntime-gpu || true
    pip install -q -e '.[gpu,torch,dev]'
    pip install -q -e '.[gpu,torch,tensorrt,dev]' || echo "TensorRT could not be installed: its rows and tests skip"
fi
python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python -c "import tensorrt as t; print('tensorrt', t.__version__)" 2>/dev/null || echo "tensorrt: not installed"

python -m pytest -q -rs tests/test_tensorrt_contract.py
python -m pytest -q -rs -m "gpu or tensorrt" tests/

disca-export onnx --preset demo --out "$out" --precision fp32,fp16,fp8 --overwrite
rm -rf "$out-static" && cp -r "$out" "$out-static"
if python -c "import tensorrt" 2>/dev/null; then
    disca-export build "$out" --precision fp16
    disca-export build "$out" --precision fp8 || echo "fp8 engines not built (see the error above)"
    disca-export build "$out-static" --precision fp16 --static --graphs full,predictor
fi
python scripts/bench_gpu.py "$out" --static-bundle "$out-static"
