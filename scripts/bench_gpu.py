"""Latency table on a GPU: ms per full step and per predictor step for each available backend.

    python scripts/bench_gpu.py BUNDLE [--static-bundle STATIC] [--repeats 50]

Rows: torch eager (fp32, CUDA), ONNX Runtime CUDA and TensorRT execution providers (with
onnxruntime-gpu), TensorRT fp16 and fp8 (engines of BUNDLE built with `disca-export build`),
and, from STATIC (a copy of the bundle built with `disca-export build --static`), TensorRT fp16
static-shape engines without and with CUDA graphs. A row whose stack or engines are missing is
reported as skipped with the reason. Shapes: the bundle's opt shape (what a static engine takes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from disca.bundle import Bundle
from disca.errors import DiscaError
from disca.runtime.backends import get_backend

# (label, backend, options, which bundle)
ROWS = [
    ("torch eager fp32", "torch", {"device": "cuda"}, "bundle"),
    ("onnxruntime cuda fp32", "onnxruntime", {"providers": ["cuda"]}, "bundle"),
    ("onnxruntime tensorrt-provider fp16", "onnxruntime", {"providers": ["tensorrt"], "precision": "fp16"}, "bundle"),
    ("tensorrt fp16", "tensorrt", {"precision": "fp16"}, "bundle"),
    ("tensorrt fp8", "tensorrt", {"precision": "fp8"}, "bundle"),
    ("tensorrt fp16 static", "tensorrt", {"precision": "fp16"}, "static"),
    ("tensorrt fp16 static + cuda graphs", "tensorrt", {"precision": "fp16", "cuda_graphs": True}, "static"),
]


def time_calls(backend, fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    backend.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError becomes argparse's "invalid positive_int value"
    if value < 1:  # 0 repeats: the median of nothing
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--static-bundle", help="a copy of BUNDLE with static-shape engines (`build --static`)")
    ap.add_argument("--repeats", type=positive_int, default=50)
    args = ap.parse_args()
    try:
        bundles = {"bundle": Bundle.open(args.bundle)}
        if args.static_bundle:
            bundles["static"] = Bundle.open(args.static_bundle)
    except DiscaError as err:  # a bad path: argparse's one error line, not a traceback
        ap.error(str(err))
    b = bundles["bundle"]
    dims = {d: v[1] for d, v in b.manifest["ranges"].items()}
    rng = np.random.default_rng(0)
    batch = dims["batch"]
    latent = rng.standard_normal((batch, b.channels, dims["frames"], dims["height"], dims["width"]), dtype=np.float32)
    text = rng.standard_normal((batch, dims["text_len"], b.text_dim), dtype=np.float32)
    t = np.full(batch, 0.5, dtype=np.float32)
    r = np.full(batch, 0.45, dtype=np.float32)
    print(f"GPU: {gpu_name()}")
    print(f"bundle {b.path}, latent {latent.shape}, text {text.shape}, median of {args.repeats} calls")
    print("| backend | ms / full step | ms / predictor step | predictor / full |\n|---|---|---|---|")
    for label, name, options, which in ROWS:
        if which not in bundles:
            print(f"| {label} | skipped: no --static-bundle | | |")
            continue
        try:
            full_ms, pred_ms = measure(get_backend(name, bundles[which], **options), (latent, t, r, text), args.repeats)
            print(f"| {label} | {full_ms:.3f} | {pred_ms:.3f} | {pred_ms / full_ms:.1%} |")
        except DiscaError as err:
            print(f"| {label} | skipped: {err} | | |")


def gpu_name() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (no torch)"
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"


def measure(backend, arrays, repeats: int) -> tuple[float, float]:
    """Median ms of a full call and of a predictor call (reading the full call's cache)."""
    with backend:
        x, t, r, e = (backend.asarray(a) for a in arrays)
        _, cache = backend.full(x, t, r, e)
        full_ms = time_calls(backend, lambda: backend.full(x, t, r, e), repeats)
        pred_ms = time_calls(backend, lambda: backend.predict(x, t, r, e, cache), repeats)
    return full_ms, pred_ms


if __name__ == "__main__":
    main()
