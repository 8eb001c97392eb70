"""The `disca` model's tensors on Triton, in one place: what `disca-serve` binds, what
`disca-export triton` writes into config.pbtxt, and what the client sends.

Every tensor has a leading batch dimension (the model has max_batch_size > 0, so Triton's
dynamic batcher can group requests); one request carries one clip, so that dimension is 1.
dims below are without it; -1 is a free dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODEL_NAME = "disca"


@dataclass(frozen=True)
class TensorDef:
    name: str
    dtype: str  # Triton's name: TYPE_STRING (BYTES), TYPE_FP32, TYPE_INT32, TYPE_INT64
    dims: tuple[int, ...]
    optional: bool = True

    @property
    def numpy_dtype(self):
        return {"TYPE_STRING": np.object_, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64}[
            self.dtype
        ]


# Exactly one of prompt / text_embeddings; the rest default to the bundle's schedule and opt shape.
INPUTS = (
    TensorDef("prompt", "TYPE_STRING", (1,)),
    TensorDef("text_embeddings", "TYPE_FP32", (-1, -1)),  # (L, Dt)
    TensorDef("seed", "TYPE_INT64", (1,)),
    TensorDef("steps", "TYPE_INT32", (1,)),
    TensorDef("anchors", "TYPE_INT32", (1,)),  # a budget K: the bundle's best-known list of K anchors
    TensorDef("schedule", "TYPE_STRING", (1,)),  # anchor steps "0,1,2,5,9" or "full"
    TensorDef("policy", "TYPE_STRING", (1,)),
    TensorDef("threshold", "TYPE_FP32", (1,)),
    TensorDef("shift", "TYPE_FP32", (1,)),
    TensorDef("frames", "TYPE_INT32", (1,)),
    TensorDef("height", "TYPE_INT32", (1,)),
    TensorDef("width", "TYPE_INT32", (1,)),
)
INPUT_BY_NAME = {t.name: t for t in INPUTS}

# `error` is "" for a good request; for a bad one it names the problem (and `video` is a [1, 1, 1, 1] zero). It is
# in-band because PyTriton answers an exception with an error for every request of the batch, and a
# bad request must not fail the good ones Triton happened to batch it with.
OUTPUTS = (
    TensorDef("video", "TYPE_FP32", (-1, -1, -1, -1), optional=False),  # (C, F, H, W)
    TensorDef("stats", "TYPE_STRING", (1,), optional=False),  # the run statistics, JSON
    TensorDef("error", "TYPE_STRING", (1,), optional=False),
)
