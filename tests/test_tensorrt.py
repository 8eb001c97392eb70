"""TensorRT: what can be checked without it on CPU (profiles, engine records, compatibility,
CLI errors), and the engine build + backend conformance where TensorRT and a GPU exist."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from disca.bundle import Bundle
from disca.cli.export import main as export_cli
from disca.cli.run import main as run_cli
from disca.engines import (
    add_engine,
    check_engine,
    check_precision_supported,
    engine_file,
    engine_record,
    graph_digest,
    profile_shapes,
)
from disca.errors import BackendUnavailable, BundleError, EngineMismatch
from tests.test_cli import error_line, invoke

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ENV = {"tensorrt": "11.4.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_profile_follows_the_manifest_ranges(tiny_bundle):
    b = Bundle.open(tiny_bundle)  # tiny: patch (1, 2, 2), hidden 32; ranges in conftest.TINY_RANGES
    full = profile_shapes(b.specs["full"], b.ranges, b.patch)
    assert full["latent"] == [[1, 3, 1, 4, 4], [1, 3, 2, 8, 8], [3, 3, 4, 12, 12]]
    assert full["t"] == [[1], [1], [3]] and full["text"] == [[1, 1, 16], [1, 4, 16], [3, 8, 16]]
    pred = profile_shapes(b.specs["predictor"], b.ranges, b.patch)
    # tokens = frames * (height/2) * (width/2) + text_len at each point
    assert pred["hidden"] == [[1, 1 * 2 * 2 + 1, 32], [1, 2 * 4 * 4 + 4, 32], [3, 4 * 6 * 6 + 8, 32]]
    static = profile_shapes(b.specs["predictor"], b.ranges, b.patch, static=True)
    assert all(lo == opt == hi for lo, opt, hi in static.values())
    assert static["latent"][1] == full["latent"][1]


def _record(bundle, graph="full", precision="fp16"):
    return {
        "graph": graph,
        "precision": precision,
        "file": engine_file(graph, precision),
        "onnx": bundle.graph_path(graph, precision).name,
        "onnx_sha256": graph_digest(bundle, graph, precision),
        **ENV,
        "profile": profile_shapes(bundle.specs[graph], bundle.ranges, bundle.patch),
        "static": False,
    }


def test_engine_compatibility_checks_name_the_mismatch(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    record = _record(b)
    digest = graph_digest(b, "full", "fp16")
    check_engine(record, ENV, digest)  # the same machine and graph: fine
    with pytest.raises(EngineMismatch, match=r"built with TensorRT 11.4.0, this machine has 11.5.0: rebuild"):
        check_engine(record, {**ENV, "tensorrt": "11.5.0"}, digest)
    with pytest.raises(EngineMismatch, match=r"built for NVIDIA H100 80GB HBM3 .*NVIDIA L4 \(8.9\): rebuild"):
        check_engine(record, {**ENV, "gpu": "NVIDIA L4", "compute_capability": "8.9"}, digest)
    with pytest.raises(EngineMismatch, match="another version of full.fp16.onnx: rebuild"):
        check_engine(record, ENV, graph_digest(b, "full", "fp8"))


def test_graph_digest_follows_the_external_data(bundle_copy):
    before = graph_digest(Bundle.open(bundle_copy), "full", "fp16")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"]["full.fp16.onnx.data"]["sha256"] = "0" * 64  # as after a re-export with other weights
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert graph_digest(Bundle.open(bundle_copy), "full", "fp16") != before


def test_fp8_needs_compute_capability_8_9():
    check_precision_supported("fp8", "8.9", "NVIDIA L4")
    check_precision_supported("fp8", "10.0", "NVIDIA B200")
    check_precision_supported("fp16", "7.5", "Tesla T4")
    with pytest.raises(BackendUnavailable, match=r"FP8 engines need compute capability 8.9 .* A100 has 8.0"):
        check_precision_supported("fp8", "8.0", "NVIDIA A100")


def test_engine_records_live_in_the_manifest(bundle_copy):
    b = Bundle.open(bundle_copy)
    with pytest.raises(BundleError, match=r"no fp16 TensorRT engine for the full graph .*disca-export build"):
        engine_record(b, "full", "fp16")
    first = add_engine(b, _record(b), b"plan bytes")
    reopened = Bundle.open(bundle_copy, verify=True)  # the plan is a listed, hashed bundle file
    assert engine_record(reopened, "full", "fp16")["gpu"] == ENV["gpu"]
    assert reopened.manifest["files"][first["file"]]["bytes"] == len(b"plan bytes")
    assert first["file"].startswith("engines/full.fp16.") and first["file"].endswith(".plan")
    assert not [p for p in bundle_copy.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".disca")]
    second = add_engine(reopened, _record(reopened), b"a rebuilt plan")  # a rebuild: new name, old plan removed
    assert second["file"] != first["file"] and not (bundle_copy / first["file"]).exists()
    assert Bundle.open(bundle_copy, verify=True).manifest["files"][second["file"]]["bytes"] == len(b"a rebuilt plan")


@pytest.mark.skipif(HAS_TRT, reason="checks the error shown where TensorRT is absent")
def test_cli_without_tensorrt_names_the_extra(tiny_bundle, tmp_path):
    line = error_line(invoke(export_cli, ["build", tiny_bundle, "--precision", "fp16"]))
    assert "TensorRT is not installed: pip install 'disca[gpu,torch,tensorrt]'" in line
    line = error_line(invoke(run_cli, [tiny_bundle, "--prompt", "a b", "--backend", "tensorrt"]))
    assert "pip install 'disca[gpu,torch,tensorrt]'" in line


def test_build_cli_errors_before_touching_tensorrt(tiny_bundle, tiny_bundle_plain, tmp_path):
    line = error_line(invoke(export_cli, ["build", tiny_bundle_plain, "--precision", "fp8"]))
    assert "has no fp8 variant of the full graph" in line and "disca-export calibrate" in line
    line = error_line(invoke(export_cli, ["build", tiny_bundle, "--precision", "fp8", "--graphs", "x"]))
    assert "not a graph" in line
    assert "does not exist" in error_line(invoke(export_cli, ["build", tmp_path / "nope", "--precision", "fp16"]))
    line = error_line(invoke(run_cli, [tiny_bundle, "--prompt", "a b", "--backend", "tensorrt", "--precision", "fp32"]))
    assert "TensorRT engines are fp16 or fp8" in line


# ----------------------------------------------------------------------------- on a GPU with TensorRT
# scripts/gpu-check.sh runs these. The CPU contract tests (test_tensorrt_contract.py) check the same code
# against stand-ins; these check it against TensorRT itself.

ALL_GRAPHS = ("full", "predictor", "head", "first")


def _gpu_or_skip():
    if not HAS_TRT:
        pytest.skip("TensorRT is not installed (pip install 'disca[gpu,torch,tensorrt]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")


@pytest.fixture(scope="module")
def built_bundle(tiny_bundle, tmp_path_factory):
    """Dynamic-shape engines of every graph: fp16, and fp8 where the GPU has FP8."""
    _gpu_or_skip()
    from disca.exporter.tensorrt_build import build_engines

    out = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(tiny_bundle, out)
    build_engines(out, "fp16", ALL_GRAPHS)
    import torch

    if torch.cuda.get_device_capability() >= (8, 9):
        build_engines(out, "fp8", ALL_GRAPHS)
    assert not [p for p in out.rglob("*") if p.name.endswith((".lock", ".tmp"))]
    return out


@pytest.fixture(scope="module")
def static_bundle(tiny_bundle, tmp_path_factory):
    """Static-shape fp16 engines (the ranges' opt shapes), for CUDA graphs."""
    _gpu_or_skip()
    from disca.exporter.tensorrt_build import build_engines

    out = tmp_path_factory.mktemp("trt-static") / "tiny"
    shutil.copytree(tiny_bundle, out)
    build_engines(out, "fp16", ALL_GRAPHS, static=True)
    return out


def _opt_inputs(b, seed=0):
    """latent, text at the bundle's opt shape (what a static engine takes)."""
    dims = {d: v[1] for d, v in b.manifest["ranges"].items()}
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((dims["batch"], b.channels, dims["frames"], dims["height"], dims["width"]))
    text = rng.standard_normal((dims["batch"], dims["text_len"], b.text_dim))
    return latent.astype(np.float32), text.astype(np.float32)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, min_db", [("fp16", 40.0), ("fp8", 25.0)])
def test_tensorrt_backend_matches_pytorch(built_bundle, precision, min_db):
    """Conformance: a DisCa run on the engines against the same run in PyTorch fp32."""
    from disca.metrics import psnr
    from disca.runtime.backends import get_backend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import DiscaPolicy

    b = Bundle.open(built_bundle)
    if f"full.{precision}" not in b.manifest.get("engines", {}):
        pytest.skip(f"no {precision} engine on this GPU")
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, b.channels, 2, 8, 8), dtype=np.float32)
    text = rng.standard_normal((1, 4, b.text_dim), dtype=np.float32)
    outs = {}
    for name, options in (("torch", {"device": "cuda"}), ("tensorrt", {"precision": precision})):
        with get_backend(name, b, **options) as backend:
            outs[name], stats = denoise(backend, latent, text, steps=8, shift=3.0, policy=DiscaPolicy([0, 1, 4]))
    assert (stats.full_calls, stats.predictor_calls) == (3, 5)
    assert psnr(outs["tensorrt"], outs["torch"]) > min_db


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_head_engine_matches_pytorch(built_bundle):
    """The head engine (reuse, DisCa's reuse gaps, the training-free caches) against PyTorch fp32."""
    from disca.metrics import psnr
    from disca.runtime.backends import get_backend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import make_policy

    b = Bundle.open(built_bundle)
    latent, text = _opt_inputs(b)
    outs = {}
    for name, options in (("torch", {"device": "cuda"}), ("tensorrt", {"precision": "fp16"})):
        with get_backend(name, b, **options) as backend:
            outs[name], stats = denoise(backend, latent, text, steps=8, shift=3.0, policy=make_policy("reuse", [0, 4]))
    assert stats.graphs["head"][0] == 6
    assert psnr(outs["tensorrt"], outs["torch"]) > 40.0


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_cuda_graphs_keep_cfg_velocities_apart(static_bundle):
    """Two full calls in a row (CFG's conditional and unconditional passes) return two different tensors,
    equal to the same calls without CUDA graphs; the guided run matches too."""
    import torch

    from disca.runtime.backends import get_backend
    from disca.runtime.sampler import denoise_cfg

    b = Bundle.open(static_bundle)
    latent, text = _opt_inputs(b)
    null = np.zeros_like(text)
    results, runs = {}, {}
    for graphs in (False, True):
        with get_backend("tensorrt", b, precision="fp16", cuda_graphs=graphs) as be:
            x, e, n = be.asarray(latent), be.asarray(text), be.asarray(null)
            t = be.asarray(np.full(latent.shape[0], 0.5))
            cond, _ = be.full(x, t, t, e)
            uncond, _ = be.full(x, t, t, n)
            results[graphs] = (cond.clone(), uncond.clone(), cond.data_ptr() != uncond.data_ptr())
            runs[graphs], _ = denoise_cfg(be, latent, text, null, steps=6, shift=3.0, guidance=5.0)
    cond, uncond, apart = results[True]
    assert apart and not torch.allclose(cond, uncond)
    assert torch.allclose(cond, results[False][0], atol=1e-3) and torch.allclose(uncond, results[False][1], atol=1e-3)
    np.testing.assert_allclose(runs[True], runs[False], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_cuda_graphs_keep_teacaches_probe(static_bundle):
    """TeaCache remembers the last probe output: the next probe must not overwrite it. The run with CUDA
    graphs takes the same decisions (same full steps) as the run without."""
    import torch

    from disca.runtime.backends import get_backend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import TeaCachePolicy

    b = Bundle.open(static_bundle)
    latent, text = _opt_inputs(b)
    runs = {}
    for graphs in (False, True):
        with get_backend("tensorrt", b, precision="fp16", cuda_graphs=graphs) as be:
            if graphs:
                x, e = be.asarray(latent), be.asarray(text)
                t1, t2 = be.asarray(np.full(latent.shape[0], 0.9)), be.asarray(np.full(latent.shape[0], 0.3))
                first = be.first(x, t1, t1, e)[1]
                kept = first.clone()
                second = be.first(x, t2, t2, e)[1]
                assert torch.equal(first, kept) and not torch.equal(first, second)
            out, stats = denoise(be, latent, text, steps=10, shift=3.0, policy=TeaCachePolicy(0.01, [1.0, 0.0]))
            runs[graphs] = out, stats.full_calls
    assert runs[True][1] == runs[False][1] > 2  # a probe that never changed would skip every middle step
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_non_default_device(built_bundle):
    """Engines run on cuda:1 (deserialized, allocated and launched there) and agree with cuda:0."""
    import torch

    from disca.runtime.backends import get_backend

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    if torch.cuda.get_device_name(0) != torch.cuda.get_device_name(1):
        pytest.skip("the two GPUs differ (engines are built for one)")
    b = Bundle.open(built_bundle)
    latent, text = _opt_inputs(b)
    outs = {}
    for device in ("cuda:0", "cuda:1"):
        with get_backend("tensorrt", b, precision="fp16", device=device) as be:
            x, t, e = be.asarray(latent), be.asarray(np.full(latent.shape[0], 0.5)), be.asarray(text)
            velocity, cache = be.full(x, t, t, e)
            assert velocity.device == torch.device(device) and cache.device == torch.device(device)
            outs[device] = be.to_numpy(be.predict(x, t, t, e, cache))
    assert torch.cuda.current_device() == 0
    np.testing.assert_allclose(outs["cuda:1"], outs["cuda:0"], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_weight_streaming_engines_run_with_a_budget(tiny_bundle, tmp_path):
    """Engines built with --weight-streaming run with TensorRT's automatic budget and with half their weights
    streamed, and agree."""
    _gpu_or_skip()
    from disca.exporter.tensorrt_build import build_engines
    from disca.runtime.backends import get_backend

    out = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, out)
    build_engines(out, "fp16", ("full", "predictor"), weight_streaming=True)
    b = Bundle.open(out)
    latent, text = _opt_inputs(b)
    outs, budget = [], None
    for _ in range(2):
        with get_backend("tensorrt", b, precision="fp16", weight_budget=budget) as be:
            assert be.budgets["full"] is not None
            x, t, e = be.asarray(latent), be.asarray(np.full(latent.shape[0], 0.5)), be.asarray(text)
            outs.append(be.to_numpy(be.full(x, t, t, e)[0]))
            budget = min(engine.streamable_weights_size for engine in be.engines.values()) // 2
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-3)
