"""From PyTorch to deployable graphs: ONNX export and validation (TensorRT builds arrive later).

Needs the `torch` extra.
"""

from disca.exporter.onnx_export import OPSETS, export_bundle, export_shapes

__all__ = ["OPSETS", "export_bundle", "export_shapes"]
