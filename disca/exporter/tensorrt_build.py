"""`disca-export build`: TensorRT engines from a bundle's ONNX graphs, through Polygraphy.

TensorRT 11 is strongly typed: the engine's precision is the graph's, so an FP16 engine is
built from the bundle's fp16 variant and an FP8 engine from its fp8 (Q/DQ) variant. One
optimization profile per engine, from the manifest's shape ranges; a timing cache kept in
the bundle makes rebuilds fast. Kept thin: everything that can be checked without a GPU
lives in `disca.engines` and is tested on CPU.
"""

from __future__ import annotations

import time

from disca._atomic import atomic_file
from disca.bundle import Bundle
from disca.engines import (
    ENGINE_DIR,
    TIMING_CACHE,
    add_engine,
    check_precision_supported,
    environment,
    graph_digest,
    profile_shapes,
)


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

    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    cache = bundle.resolve(TIMING_CACHE, "engines (the TensorRT timing cache)")
    (bundle.path / ENGINE_DIR).mkdir(exist_ok=True)
    records = []
    for graph in graphs:
        onnx_path = bundle.graph_path(graph, precision)
        shapes = profile_shapes(bundle.specs[graph], bundle.ranges, bundle.patch, static=static)
        profile = Profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.add(name, lo, opt, hi)
        config = CreateConfig(
            profiles=[profile],
            load_timing_cache=str(cache) if cache.exists() else None,
            builder_optimization_level=optimization_level,
            weight_streaming=weight_streaming or None,
            progress_monitor=_progress_monitor(log),
        )
        log(f"building the {graph} engine ({precision}, optimization level {optimization_level})...")
        t0 = time.perf_counter()
        network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
        # The timing cache is replaced only after the manifest switch: older bundles list it in `files`.
        with atomic_file(cache) as cache_tmp:
            plan = engine_bytes_from_network(network, config, save_timing_cache=str(cache_tmp))
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
            record = add_engine(bundle, record, bytes(plan))  # a fresh plan file, then one manifest switch
        rel = record["file"]
        log(f"  {rel}: {len(plan) / 2**20:.1f} MiB in {build_s:.0f}s")
        records.append(record)
    return records
