"""From PyTorch to deployable graphs: ONNX export and validation, fp16 / fp8 variants, TensorRT builds.

The export itself needs the `torch` extra; `precision` (graph edits, with onnx) and `validate`
(parity figures) do not, so calibration and validation run in the base install. Hence the lazy
import of the exporter below.
"""

__all__ = ["OPSETS", "export_bundle", "export_shapes"]


def __getattr__(name):
    if name in __all__:
        from disca.exporter import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
