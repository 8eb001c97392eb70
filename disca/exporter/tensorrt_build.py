"""`disca-export build`: TensorRT engines from a bundle's ONNX graphs, through Polygraphy.

TensorRT 11 is strongly typed: the engine's precision is the graph's, so an FP16 engine is
built from the bundle's fp16 variant and an FP8 engine from its fp8 (Q/DQ) variant. One
optimization profile per engine, from the manifest's shape ranges; a timing cache kept in
the bundle (one per TensorRT version and compute capability) makes rebuilds fast. Kept thin:
everything that can be checked without a GPU lives in `disca.engines`; the Polygraphy calls
are checked against stand-ins with TensorRT's documented interface (tests/test_tensorrt_contract.py).
"""

from __future__ import annotations

import contextlib
import tempfile
import time

from disca._atomic import atomic_file
from disca.bundle import Bundle
from disca.engines import (
    ENGINE_DIR,
    add_engine,
    check_parser_supports,
    check_precision_supported,
    environment,
    graph_digest,
    profile_shapes,
    timing_cache_file,
)
from disca.errors import DiscaError


class EngineBuildError(DiscaError):
    """TensorRT (through Polygraphy) could not parse a graph or build its engine."""


def _progress_monitor(log):
    """A trt.IProgressMonitor that reports each build phase (builds take minutes)."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            log(f"    {phase_name} ({num_steps} steps)" if parent_phase is None else f"      {phase_name}")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            if phase_name in self.started:
                log(f"      {phase_name}: {time.perf_counter() - self.started.pop(phase_name):.1f}s")

    return Monitor()


def _last_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def build_engines(
    bundle_path,
    precision: str,
    graphs=("full", "predictor"),
    *,
    static: bool = False,
    optimization_level: int = 3,
    weight_streaming: bool = False,
    log=lambda msg: None,
) -> list[dict]:
    """Build and record one engine per graph. -> the manifest records written."""
    bundle = Bundle.open(bundle_path)
    for graph in graphs:
        bundle.graph_path(graph, precision)  # a clear error if the variant is missing
    env = environment()
    check_precision_supported(precision, env["compute_capability"], env["gpu"])
    for graph in graphs:
        variant = bundle.manifest["graphs"][graph]["variants"][precision]
        check_parser_supports(variant.get("opset", 23), env["tensorrt"], variant["file"])

    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path
    from polygraphy.exception import PolygraphyException

    failures = (PolygraphyException, RuntimeError, TypeError, ValueError)  # Polygraphy's, and the bindings'
    # One timing cache per TensorRT version and compute capability. Not read by runs, so not listed in `files`:
    # it is replaced (atomically) after each engine's manifest switch.
    cache = bundle.resolve(timing_cache_file(env), "engines (the TensorRT timing cache)")
    (bundle.path / ENGINE_DIR).mkdir(exist_ok=True)
    records = []
    for graph in graphs:
        onnx_path = bundle.graph_path(graph, precision)
        shapes = profile_shapes(bundle.specs[graph], bundle.ranges, bundle.patch, static=static)
        profile = Profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.add(name, lo, opt, hi)
        # The timing caches go through open binary files: given a path, Polygraphy locks it with a `<path>.lock`
        # file that it never deletes (it would be left in the bundle), and it reads a file object's `mode` and
        # fsyncs what it saves (so no BytesIO).
        with contextlib.ExitStack() as files:
            old_cache = files.enter_context(open(cache, "rb")) if cache.exists() else None
            new_cache = files.enter_context(tempfile.TemporaryFile())
            config = CreateConfig(
                profiles=[profile],
                load_timing_cache=old_cache,
                builder_optimization_level=optimization_level,
                weight_streaming=weight_streaming or None,
                progress_monitor=_progress_monitor(log),
            )
            log(f"building the {graph} engine ({precision}, optimization level {optimization_level})...")
            t0 = time.perf_counter()
            try:
                network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
            except failures as e:
                raise EngineBuildError(
                    f"TensorRT {env['tensorrt']} could not parse {onnx_path.name} ({_last_line(e)}; the parser's "
                    "messages are above): re-export the bundle with `disca-export onnx ... --opset 20` (no "
                    "Attention / RMSNormalization nodes)"
                ) from None
            try:
                plan = engine_bytes_from_network(network, config, save_timing_cache=new_cache)
            except failures as e:
                raise EngineBuildError(
                    f"TensorRT {env['tensorrt']} could not build the {graph} engine from {onnx_path.name}: "
                    f"{_last_line(e)} (the builder's messages are above)"
                ) from None
            new_cache.seek(0)
            cache_bytes = new_cache.read()
        build_s = time.perf_counter() - t0
        record = {
            "graph": graph,
            "precision": precision,
            "onnx": onnx_path.name,
            "onnx_sha256": graph_digest(bundle, graph, precision),
            **env,
            "profile": shapes,
            "static": static,
            "builder_optimization_level": optimization_level,
            "weight_streaming": weight_streaming,
            "build_s": round(build_s, 1),
        }
        record = add_engine(bundle, record, plan)  # a fresh plan file, then one manifest switch
        del plan
        if cache_bytes:  # it already holds the loaded cache's entries (the builder started from them)
            with atomic_file(cache) as tmp:
                tmp.write_bytes(cache_bytes)
        nbytes = bundle.manifest["files"][record["file"]]["bytes"]
        log(f"  {record['file']}: {nbytes / 2**20:.1f} MiB in {build_s:.0f}s")
        records.append(record)
    return records
