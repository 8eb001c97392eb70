"""Latency table on a GPU: ms per full step and per predictor step for each available backend.

    python scripts/bench_gpu.py BUNDLE [--repeats 50]

Rows: torch eager (fp32, CUDA), ONNX Runtime CUDA (fp32, with onnxruntime-gpu), TensorRT fp16
and fp8 (engines built with `disca-export build`). A row whose stack is missing is reported
as skipped with the reason. Shapes: the bundle's opt shape, batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from disca.bundle import Bundle
from disca.errors import DiscaError
from disca.runtime.backends import get_backend

ROWS = [
    ("torch eager fp32", "torch", {"device": "cuda"}),
    ("onnxruntime cuda fp32", "onnxruntime", {"providers": ["cuda"]}),
    ("tensorrt fp16", "tensorrt", {"precision": "fp16"}),
    ("tensorrt fp8", "tensorrt", {"precision": "fp8"}),
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    b = Bundle.open(args.bundle)
    dims = {d: v[1] for d, v in b.manifest["ranges"].items()}
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, b.channels, dims["frames"], dims["height"], dims["width"]), dtype=np.float32)
    text = rng.standard_normal((1, dims["text_len"], b.text_dim), dtype=np.float32)
    t = np.full(1, 0.5, dtype=np.float32)
    r = np.full(1, 0.45, dtype=np.float32)
    print(f"bundle {b.path}, latent {latent.shape}, text {text.shape}")
    print("| backend | ms / full step | ms / predictor step | predictor / full |\n|---|---|---|---|")
    for label, name, options in ROWS:
        try:
            full_ms, pred_ms = measure(get_backend(name, b, **options), (latent, t, r, text), args.repeats)
            print(f"| {label} | {full_ms:.3f} | {pred_ms:.3f} | {pred_ms / full_ms:.1%} |")
        except DiscaError as err:
            print(f"| {label} | skipped: {err} | | |")


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
