"""The op types of an ONNX file, read from its protobuf without the `onnx` package (the runtime needs only
numpy and onnxruntime).

A bundle is untrusted: ONNX Runtime runs whatever a graph holds, and a `Loop` with a huge trip count never
returns. disca's graphs are straight-line (no control flow), so a graph with one is refused before it is loaded.
"""

from __future__ import annotations

from pathlib import Path

CONTROL_FLOW = frozenset({"Loop", "Scan", "If"})

# Field numbers in onnx.proto: ModelProto.graph = 7, ModelProto.functions = 25, GraphProto.node = 1,
# FunctionProto.node = 7, NodeProto.op_type = 4.
_MODEL_GRAPH, _MODEL_FUNCTIONS, _GRAPH_NODE, _FUNCTION_NODE, _NODE_OP_TYPE = 7, 25, 1, 7, 4


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed protobuf")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated or malformed protobuf")
            yield key >> 3, i, i + n
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if i != end:
        raise ValueError("truncated or malformed protobuf")


def op_types(path: Path) -> set[str]:
    """Every op type in the model's main graph and its local functions. ValueError when it is not an ONNX model."""
    buf = Path(path).read_bytes()
    ops: set[str] = set()
    for field, start, end in _fields(buf, 0, len(buf)):
        node_field = {_MODEL_GRAPH: _GRAPH_NODE, _MODEL_FUNCTIONS: _FUNCTION_NODE}.get(field)
        if node_field is None:
            continue
        for f, s, e in _fields(buf, start, end):
            if f == node_field:
                ops.update(buf[a:b].decode("utf-8", "replace") for g, a, b in _fields(buf, s, e) if g == _NODE_OP_TYPE)
    return ops
