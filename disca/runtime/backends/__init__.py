"""Interchangeable backends for the two graphs. Each is imported only when asked for,
so the ONNX Runtime path never imports torch (and nothing imports TensorRT)."""

from __future__ import annotations

from disca.errors import BackendUnavailable
from disca.runtime.backends.base import Backend

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def get_backend(name: str, bundle, **options) -> Backend:
    """A backend (not yet active) for `bundle`. Options: onnxruntime: providers, threads, precision; torch: device;
    tensorrt: precision, device, cuda_graphs."""
    if name == "onnxruntime":
        from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, **options)
    if name == "torch":
        from disca.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(bundle, **options)
    if name == "tensorrt":
        from disca.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle, **options)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "get_backend"]
