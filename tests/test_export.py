import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from disca._atomic import atomic_directory, current_umask
from disca.build import build_bundle
from disca.bundle import Bundle
from disca.errors import ParityError, ShapeError
from disca.exporter import export_shapes
from disca.exporter.validate import check_graph
from disca.models.graphs import FullGraph
from disca.spec import DIMS, ShapeRanges, dummy_inputs


def test_bundle_holds_the_validated_graphs(tiny_bundle):
    """full + predictor (DisCa), head (the training-free baselines' cached step), first (their probe), and
    DBCache's rest / tail (fp32 only, their weights stored once, in the full graph's data file)."""
    b = Bundle.open(tiny_bundle, verify=True)
    assert sorted(b.specs) == ["first", "full", "head", "predictor", "rest", "tail"]
    m = b.manifest
    assert [t["name"] for t in m["graphs"]["full"]["spec"]["outputs"]] == ["velocity", "hidden"]
    assert [t["name"] for t in m["graphs"]["predictor"]["spec"]["inputs"]][-1] == "hidden"
    assert [t["name"] for t in m["graphs"]["head"]["spec"]["inputs"]][-1] == "hidden"
    assert [t["name"] for t in m["graphs"]["first"]["spec"]["outputs"]] == ["tokens", "modulated", "first", "vec"]
    assert list(m["graphs"]["rest"]["variants"]) == ["fp32"] and "rest.onnx.data" not in m["files"]
    locations = {
        e.value
        for init in onnx.load(str(tiny_bundle / "rest.onnx"), load_external_data=False).graph.initializer
        for e in init.external_data
        if e.key == "location"
    }
    assert locations == {"full.onnx.data"}
    for graph in ("full", "predictor", "head", "first", "rest", "tail"):
        v = m["graphs"][graph]["variants"]["fp32"]
        assert v["opset"] == 23
        first, second = v["validation"]["shapes"]
        assert all(first[d] != second[d] for d in DIMS)  # the second shape differs on every axis
        assert v["validation"]["results"] and all(r["rel_l2"] <= 1e-4 for r in v["validation"]["results"])
    assert set(m["versions"]) >= {"disca", "torch", "onnx", "onnxruntime"}
    assert m["schedule"]["anchors"][0] == 0
    assert all(len(e["sha256"]) == 64 for e in m["files"].values())
    assert "full.onnx.data" in m["files"]  # external data


def test_graph_io_is_named_and_symbolic(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "predictor.onnx"), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["latent"] == ["batch", 3, "frames", "height", "width"]
    assert dims["hidden"] == ["batch", "tokens", 32]
    ops = {n.op_type for n in onnx.load(str(tiny_bundle / "full.onnx"), load_external_data=False).graph.node}
    assert {"Attention", "RMSNormalization"} <= ops  # opset 23 keeps them as single nodes


def test_graphs_run_at_a_third_shape_inside_the_ranges(tiny_model, tiny_bundle):
    """Neither export shape: batch 3, frames 3, 12x4, 5 text tokens."""
    cfg, dit, _ = tiny_model
    b = Bundle.open(tiny_bundle)
    session = ort.InferenceSession(str(b.graph_path("full")), providers=["CPUExecutionProvider"])
    dims = {"batch": 3, "frames": 3, "height": 12, "width": 4, "text_len": 5}
    feeds = dummy_inputs(b.specs["full"], dims, b.patch, seed=7)
    results = check_graph("full", session, FullGraph(dit), feeds, ["velocity", "hidden"], {"rel_l2": 1e-4})
    assert results[1].shape == (3, 3 * 6 * 2 + 5, 32)


def test_parity_failure_names_graph_output_and_shape(tiny_model, tiny_bundle):
    cfg, dit, _ = tiny_model
    b = Bundle.open(tiny_bundle)
    session = ort.InferenceSession(str(b.graph_path("full")), providers=["CPUExecutionProvider"])
    feeds = dummy_inputs(b.specs["full"], export_shapes(b.ranges)[0], b.patch)
    other = FullGraph(type(dit)(cfg.dit))  # same architecture, other weights
    torch.nn.init.normal_(other.dit.final.linear.weight)
    with pytest.raises(ParityError, match=r"full graph: output velocity at shape \(2, 3, 2, 8, 8\)"):
        check_graph("full", session, other, feeds, ["velocity", "hidden"], {"rel_l2": 1e-4})


def test_opset_20_exports_decomposed_attention(tiny_bundle_plain):
    out = tiny_bundle_plain
    ops = {n.op_type for n in onnx.load(str(out / "full.onnx"), load_external_data=False).graph.node}
    assert "Attention" not in ops and "Softmax" in ops
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["dir"] is None and not (out / "weights").exists()
    assert all(
        r["rel_l2"] <= 1e-4 for r in manifest["graphs"]["predictor"]["variants"]["fp32"]["validation"]["results"]
    )


def test_bad_ranges_and_opset_fail_before_writing(tiny_model, tmp_path):
    cfg, dit, predictor = tiny_model
    with pytest.raises(ShapeError, match="multiples of the patch size 2"):
        build_bundle(cfg, dit, predictor, tmp_path / "x", ranges=ShapeRanges(height=[4, 7, 12]))
    with pytest.raises(ShapeError, match="opset 19"):
        build_bundle(cfg, dit, predictor, tmp_path / "x", opset=19)
    assert not list(tmp_path.iterdir())


def test_a_fixed_size_range_exports_and_runs_at_that_size(tiny_model, tmp_path):
    """`--text-len 8` or `--frames 2:2:2` (min == max): torch.export refuses a Dim with min == max."""
    from disca.runtime import Pipeline

    cfg, dit, predictor = tiny_model
    ranges = ShapeRanges(batch=[1, 1, 1], frames=[2, 2, 2], height=[4, 8, 12], width=[8, 8, 8], text_len=[4, 4, 4])
    out = build_bundle(cfg, dit, predictor, tmp_path / "fixed", ranges=ranges)
    with Pipeline.load(out) as pipe:
        video = pipe.generate(text_embeddings=np.ones((4, 16), np.float32), steps=3, anchors=[0, 2], height=4).video
        assert video.shape == (1, 3, 2, 4, 8) and np.isfinite(video).all()
        with pytest.raises(ShapeError, match="text_len=5 is outside the bundle's range 4..4"):
            pipe.generate(text_embeddings=np.ones((5, 16), np.float32), steps=3, anchors=[0, 2])


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.onnx").write_text("half-written")
            raise RuntimeError("export crashed")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert (target / "keep.txt").read_text() == "precious"
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's private 0700
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_dummy_inputs_follow_the_declaration(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    feeds = dummy_inputs(
        b.specs["predictor"], {"batch": 2, "frames": 2, "height": 4, "width": 6, "text_len": 3}, b.patch
    )
    assert feeds["latent"].shape == (2, 3, 2, 4, 6) and feeds["hidden"].shape == (2, 2 * 2 * 3 + 3, 32)
    assert np.all(feeds["r"] <= feeds["t"]) and feeds["t"].dtype == np.float32
