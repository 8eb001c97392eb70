"""Interchangeable backends for the two graphs. Each is imported only when asked for,
so the ONNX Runtime path never imports torch (and nothing imports TensorRT)."""

from __future__ import annotations

import inspect

from disca.errors import BackendUnavailable
from disca.runtime.backends.base import Backend

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def get_backend(name: str, bundle, **options) -> Backend:
    """A backend (not yet active) for `bundle`. Options: onnxruntime: providers, threads, precision; torch: device;
    tensorrt: precision, device, cuda_graphs."""
    if name == "onnxruntime":
        from disca.runtime.backends.onnxrt import OnnxRuntimeBackend as cls
    elif name == "torch":
        from disca.runtime.backends.torch_backend import TorchBackend as cls
    elif name == "tensorrt":
        from disca.runtime.backends.tensorrt_backend import TensorRTBackend as cls
    else:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "bundle"}
    unknown = sorted(set(options) - takes)
    if unknown:  # a TypeError from the constructor would not say which options there are
        raise BackendUnavailable(
            f"the {name} backend takes no option {unknown[0]!r}; it takes {', '.join(sorted(takes))}"
        )
    return cls(bundle, **options)


__all__ = ["BACKENDS", "Backend", "get_backend"]
