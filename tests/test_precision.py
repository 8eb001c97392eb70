"""FP16 and FP8 graph variants (the graphs TensorRT builds from), checked on ONNX Runtime CPU."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from disca.bundle import Bundle
from disca.calibration.trajectories import record_inputs
from disca.exporter.onnx_export import FP32_ONLY
from disca.exporter.precision import TOLERANCES, activation_amax, fp8_targets, module_path, periodic_cone
from disca.exporter.validate import check_graph
from disca.metrics import psnr
from disca.models.graphs import FullGraph, PredictorGraph
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import DiscaPolicy
from disca.spec import dummy_inputs

THIRD_SHAPE = {"batch": 3, "frames": 3, "height": 12, "width": 4, "text_len": 5}  # neither export shape


def _feeds(bundle, graph, dit, seed=7):
    feeds = dummy_inputs(bundle.specs[graph], THIRD_SHAPE, bundle.patch, seed=seed)
    if graph == "predictor":
        with torch.no_grad():
            feeds["hidden"] = FullGraph(dit)(*(torch.from_numpy(feeds[k]) for k in ("latent", "t", "r", "text")))[1]
        feeds["hidden"] = feeds["hidden"].numpy()
    return feeds


def test_variants_are_recorded_with_files_hashes_and_provenance(tiny_bundle):
    b = Bundle.open(tiny_bundle, verify=True)
    for name, g in b.manifest["graphs"].items():
        # DBCache's rest / tail: fp32 only, their weights in the full graph's external data
        fp32_only = name in FP32_ONLY
        assert set(g["variants"]) == ({"fp32"} if fp32_only else {"fp32", "fp16", "fp8"})
        for precision, v in g["variants"].items():
            assert v["precision"] == precision and v["produced_by"] and v["opset"] == 23
            data = "full.onnx.data" if fp32_only else v["file"] + ".data"
            assert v["file"] in b.manifest["files"] and data in b.manifest["files"]
            assert v["validation"]["tolerance"] == TOLERANCES[precision]
            assert len(v["validation"]["results"]) == 2 * len(g["spec"]["outputs"])  # two shapes
            if precision != "fp32":
                assert v["validation"]["end_to_end_psnr_db"] > (50 if precision == "fp16" else 25)


@pytest.mark.parametrize("precision", ["fp16", "fp8"])
@pytest.mark.parametrize("graph", ["full", "predictor"])
def test_variant_parity_against_pytorch_at_a_third_shape(tiny_model, tiny_bundle, graph, precision):
    cfg, dit, predictor = tiny_model
    b = Bundle.open(tiny_bundle)
    module = FullGraph(dit) if graph == "full" else PredictorGraph(dit, predictor)
    session = ort.InferenceSession(str(b.graph_path(graph, precision)), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in b.specs[graph].outputs]
    results = check_graph(graph, session, module, _feeds(b, graph, dit), outputs, TOLERANCES[precision])
    if precision == "fp16":  # measured ~6e-4: far inside the 1e-2 acceptance
        assert max(r.rel_l2 for r in results) < 3e-3


def test_variants_keep_fp32_inputs_and_outputs(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    for graph in ("full", "predictor"):
        for precision in ("fp16", "fp8"):
            model = onnx.load(str(b.graph_path(graph, precision)), load_external_data=False)
            for value in list(model.graph.input) + list(model.graph.output):
                assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, (graph, precision, value.name)


def test_fp16_computes_sin_cos_angles_in_fp32(tiny_bundle):
    """Timestep and RoPE angles reach up to ~1000 rad: no FP16 value may feed a sin/cos."""
    model = onnx.load(str(Bundle.open(tiny_bundle).graph_path("full", "fp16")), load_external_data=False)
    cone = periodic_cone(model)
    assert any(model.graph.node[i].op_type == "Sin" for i in range(len(model.graph.node)))
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in cone:
            for name in node.input:
                p = producer.get(name)
                cast_to = next((a.i for a in p.attribute if a.name == "to"), None) if p is not None else None
                assert not (p is not None and p.op_type == "Cast" and cast_to == onnx.TensorProto.FLOAT16), node.name


def test_fp8_quantizes_the_block_linears_only(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    for graph, expected in (("full", 4), ("predictor", 4)):  # 2 blocks x 2 Linears; 1 block x 2 + fusion MLP x 2
        model = onnx.load(str(b.graph_path(graph, "fp8")), load_external_data=False)
        quantized = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert len(quantized) == expected
        fp8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN]
        assert len(fp8_weights) == expected + 1  # + the shared zero point
        dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        paths = [module_path(n) for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in dq]
        assert len(paths) == expected
        assert not any("modulation" in p or "embedder" in p or p.startswith("dit.final") for p in paths)


def test_activation_ranges_match_pytorch_hooks(tiny_model, tiny_bundle):
    """The "max" calibration read from ONNX Runtime equals the max |input| seen by each torch Linear."""
    cfg, dit, _ = tiny_model
    b = Bundle.open(tiny_bundle)
    feeds = [_feeds(b, "full", dit, seed=s) for s in (1, 2)]
    path = b.graph_path("full")
    amax = activation_amax(path, feeds)
    model = onnx.load(str(path), load_external_data=False)
    module = FullGraph(dit)
    seen = {}
    hooks = [
        module.get_submodule(module_path(n)).register_forward_hook(
            lambda m, inp, out, key=n.name: seen.__setitem__(key, max(seen.get(key, 0.0), inp[0].abs().max().item()))
        )
        for n in fp8_targets(model)
    ]
    with torch.no_grad():
        for f in feeds:
            module(*(torch.from_numpy(v) for v in f.values()))
    for h in hooks:
        h.remove()
    assert set(seen) == set(amax)
    for name in amax:
        assert amax[name] == pytest.approx(seen[name], rel=1e-4)


def test_recorded_inputs_come_from_real_runs(tiny_model):
    cfg, dit, predictor = tiny_model
    rng = np.random.default_rng(0)
    latents = [rng.standard_normal((1, cfg.dit.in_channels, 2, 8, 8), dtype=np.float32) for _ in range(2)]
    texts = [rng.standard_normal((1, 4, cfg.dit.text_dim), dtype=np.float32) for _ in range(2)]
    calls = record_inputs(
        TorchBackend.from_modules(dit, predictor), latents, texts, steps=6, shift=3.0, anchors=[0, 1, 3]
    )
    assert len(calls["full"]) == 2 * (6 + 3) and len(calls["predictor"]) == 2 * 3
    assert np.array_equal(calls["full"][0]["latent"], latents[0])  # the first step sees the noise
    # A predictor call's cache is what the full graph returned at the last anchor of the same run.
    with torch.no_grad():
        anchor = calls["full"][6 + 1]  # run 1, DisCa pass, anchor step 1
        cache = FullGraph(dit)(*(torch.from_numpy(anchor[k]) for k in ("latent", "t", "r", "text")))[1].numpy()
    np.testing.assert_allclose(calls["predictor"][0]["hidden"], cache, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision, min_db", [("fp16", 50.0), ("fp8", 25.0)])
def test_runtime_samples_with_each_variant(tiny_bundle, precision, min_db):
    b = Bundle.open(tiny_bundle)
    rng = np.random.default_rng(3)
    latent = rng.standard_normal((1, b.channels, 2, 8, 8), dtype=np.float32)
    text = rng.standard_normal((1, 4, b.text_dim), dtype=np.float32)
    outs = {}
    for p in ("fp32", precision):
        with OnnxRuntimeBackend(b, precision=p) as backend:
            outs[p], _ = denoise(backend, latent, text, steps=8, shift=3.0, policy=DiscaPolicy([0, 1, 4]))
    assert min_db < psnr(outs[precision], outs["fp32"]) < float("inf")  # close, and really another graph
