#!/usr/bin/env bash
# GPU checks, where an NVIDIA GPU (and ideally TensorRT) exists. Install first:
#   pip install -e '.[torch,tensorrt,dev]' onnxruntime-gpu
# Runs the gpu/tensorrt tests (they skip with the reason when a stack is missing), then builds
# fp16 and fp8 engines of the demo preset and prints the latency table of scripts/bench_gpu.py.
set -euo pipefail
out=${1:-/tmp/disca-gpu-check}
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true
python -m pytest -q -rs -m "gpu or tensorrt" tests/
disca-export onnx --preset demo --out "$out" --precision fp32,fp16,fp8 --overwrite
if python -c "import tensorrt" 2>/dev/null; then
    disca-export build "$out" --precision fp16
    disca-export build "$out" --precision fp8 || echo "fp8 engines not built (see the error above)"
fi
python scripts/bench_gpu.py "$out"
