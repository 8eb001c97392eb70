"""Reduced-precision variants of an exported FP32 graph: FP16, and FP8 with explicit Q/DQ.

TensorRT 11 is strongly typed: an engine computes in the precision its ONNX graph
declares, so each precision is its own graph. Both variants keep FP32 inputs and
outputs (casts inside the graph), so every backend feeds them exactly like the FP32 graph.

- FP16: ONNX Runtime's float16 converter, with the numerically sensitive ops
  (LayerNorm / RMSNorm reductions, softmax) left in FP32, and every sin/cos together with
  all it is computed from: the timestep embedding and the RoPE tables take sin/cos of
  angles up to ~1000 and ~100 rad, where FP16's spacing (0.03-0.5 rad) would garble them.
- FP8: on top of the FP16 graph, per-tensor FLOAT8E4M3FN QuantizeLinear/DequantizeLinear
  on the inputs and weights of the Linear layers inside the transformer blocks (and the
  predictor's fusion MLP). Embedders, adaLN modulation, the final layer and the output
  projection stay FP16, as in ModelOpt's FP8 recipe for DiTs. Weights are stored as FP8.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "fp8")
FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN value

SENSITIVE_OPS = ("LayerNormalization", "RMSNormalization", "Softmax", "ReduceMean", "Range")
PERIODIC_OPS = ("Sin", "Cos")
# Linear layers quantized to FP8: inside `blocks.N` except the adaLN modulation, and the predictor's fusion MLP.
FP8_MODULES = re.compile(r"(^|\.)blocks\.\d+\.(?!modulation$)\w+$|(^|\.)fusion\.\d+$")

# Acceptance of a variant against the FP32 PyTorch reference, per output.
TOLERANCES = {"fp32": {"rel_l2": 1e-4}, "fp16": {"cosine": 0.999, "rel_l2": 1e-2}, "fp8": {"cosine": 0.99}}


def module_path(node) -> str:
    """The torch module a node was exported from ('dit.blocks.3.linear1'), '' when unknown.

    The dynamo exporter records the module stack in the node's metadata: [..., module path, function name].
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def periodic_cone(model) -> set[str]:
    """Names of the Sin/Cos nodes and of every node they depend on (angles and positions)."""
    producer = {out: n for n in model.graph.node for out in n.output}
    todo = [n for n in model.graph.node if n.op_type in PERIODIC_OPS]
    cone: set[str] = set()
    while todo:
        node = todo.pop()
        if node.name in cone:
            continue
        cone.add(node.name)
        todo += [producer[i] for i in node.input if i in producer]
    return cone


def to_fp16(model):
    """An FP16 copy of `model` (onnx.ModelProto, external data loaded), FP32 at the inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    keep = sorted(periodic_cone(model))
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *SENSITIVE_OPS],
        node_block_list=keep,
        disable_shape_infer=True,  # its shape inference cannot load graphs over 2 GB; types suffice
    )
    blocked = set(keep) | {n.name for n in model.graph.node if n.op_type in SENSITIVE_OPS}
    _skip_round_trips(half, blocked)
    return half


def _skip_round_trips(model, fp32_nodes: set[str]) -> None:
    """Remove FP32 -> FP16 -> FP32 cast round trips: consumers read the FP32 value directly.

    The converter puts such a round trip between every two FP32 nodes, which rounds t * 1000
    inside the timestep embedding to FP16 (errors of up to 0.25 rad on angles up to 1000 rad).
    """
    from onnx import TensorProto

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {out: n for n in model.graph.node for out in n.output}
    fp32 = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    fp32 |= {o for n in model.graph.node if n.name in fp32_nodes for o in n.output}
    bypass = {}  # output of the Cast back to FP32 -> the FP32 value before the Cast to FP16
    for node in model.graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if first is not None and cast_to(first) == TensorProto.FLOAT16 and first.input[0] in fp32:
            bypass[node.output[0]] = first.input[0]
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = bypass.get(name, name)
    _prune(model)


def _prune(model) -> None:
    """Drop nodes none of whose outputs is used."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)


def fp8_targets(model) -> list:
    """The MatMul/Gemm nodes with a constant weight that the FP8 variant quantizes."""
    consts = {i.name for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts and FP8_MODULES.search(module_path(n))
    ]


def activation_amax(model_path: Path, feeds_list: Iterable[dict], providers=("CPUExecutionProvider",)) -> dict:
    """{node name: max |input|} of each FP8 target's activation input, over the calibration feeds.

    Runs the FP32 graph with those activations exposed as extra outputs ("max" calibration).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    targets = fp8_targets(model)
    tensors = sorted({n.input[0] for n in targets})
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=list(providers))
    amax = dict.fromkeys(tensors, 0.0)
    seen = 0
    for feeds in feeds_list:
        for name, value in zip(tensors, session.run(tensors, feeds)):
            amax[name] = max(amax[name], float(np.abs(value).max()))
        seen += 1
    if not seen:
        raise ValueError("FP8 calibration needs at least one set of inputs")
    return {n.name: amax[n.input[0]] for n in targets}


def to_fp8(fp16_model, amax: dict[str, float], only=None):
    """Insert FP8 Q/DQ into an FP16 graph made by `to_fp16`, with per-tensor scales amax / 448.

    `amax`: from `activation_amax` on the FP32 graph (node names survive the FP16 conversion).
    `only`: quantize just these target layers (node names); the others stay FP16.
    Weights become FLOAT8E4M3FN initializers behind a DequantizeLinear; activations get a
    QuantizeLinear -> DequantizeLinear pair (TensorRT fuses both into an FP8 GEMM).
    """
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(fp16_model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = [n for n in fp8_targets(model) if only is None or n.name in only]
    missing = [n.name for n in targets if n.name not in amax]
    if missing:
        raise ValueError(f"no calibration range for {len(missing)} FP8 layers (e.g. {missing[0]})")

    zero = "fp8_zero_point"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=ml_dtypes.float8_e4m3fn), zero))
    new_nodes: dict[str, list] = {}  # target node name -> nodes to insert before it
    for node in targets:
        x, w_name = node.input[0], node.input[1]
        w_init = inits[w_name]
        w = numpy_helper.to_array(w_init).astype(np.float32)
        w_scale = max(float(np.abs(w).max()), 1e-12) / FP8_MAX
        x_scale = max(amax[node.name], 1e-12) / FP8_MAX
        p = node.name
        graph.initializer.remove(w_init)
        graph.initializer.extend(
            [
                numpy_helper.from_array((w / w_scale).astype(ml_dtypes.float8_e4m3fn), f"{p}.w_fp8"),
                numpy_helper.from_array(np.array(w_scale, dtype=np.float16), f"{p}.w_scale"),
                numpy_helper.from_array(np.array(x_scale, dtype=np.float16), f"{p}.x_scale"),
            ]
        )
        new_nodes[p] = [
            helper.make_node("DequantizeLinear", [f"{p}.w_fp8", f"{p}.w_scale", zero], [f"{p}.w_dq"], f"{p}.w_dq"),
            helper.make_node("QuantizeLinear", [x, f"{p}.x_scale", zero], [f"{p}.x_q"], f"{p}.x_q"),
            helper.make_node("DequantizeLinear", [f"{p}.x_q", f"{p}.x_scale", zero], [f"{p}.x_dq"], f"{p}.x_dq"),
        ]
        node.input[0], node.input[1] = f"{p}.x_dq", f"{p}.w_dq"  # each Linear weight has this one consumer
    ordered = []
    for node in graph.node:
        ordered += new_nodes.get(node.name, [])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    for vi in list(graph.value_info):  # stale after the rewiring; ORT and TensorRT infer what they need
        graph.value_info.remove(vi)
    return model


def save_model(model, path: Path) -> None:
    """Save with the weights in `<file>.data` next to it (graphs over 2 GB need external data)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving moves the tensors of the model it is given out to the file
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
