"""disca: DisCa (distillation-compatible learnable feature caching) for video DiTs,
from PyTorch to ONNX and TensorRT.

Importing disca needs neither torch nor TensorRT; `disca.models` and
`disca.exporter` need the `torch` extra.
"""

__version__ = "0.1.0"
