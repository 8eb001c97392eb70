"""TensorRT engines in a bundle: optimization profiles, the sidecar records, compatibility.

Pure Python (no TensorRT): the builder (`disca.exporter.tensorrt_build`) and the runtime
backend (`disca.runtime.backends.tensorrt_backend`) share it, and it is tested on CPU.

An engine only runs with the TensorRT version and GPU it was built with, and there is no
API to read those from a plan without deserializing it. So each plan has a record in the
manifest: TensorRT version, GPU name, compute capability, precision, profile, and the
sha256 of the ONNX graph it was built from. Loading compares the record with the machine.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from disca.bundle import Bundle, file_entry, fresh_name
from disca.errors import BackendUnavailable, BundleError, EngineMismatch
from disca.spec import DIMS, GraphSpec, resolve

ENGINE_DIR = "engines"
TIMING_CACHE = f"{ENGINE_DIR}/timing.cache"  # the builder's cache: not read by runs, so not listed in `files`
FP8_MIN_CC = (8, 9)  # FP8 tensor cores: Ada, Hopper, Blackwell
BUILD_HINT = "pip install 'disca[tensorrt]' on a machine with an NVIDIA GPU"


def environment() -> dict:
    """This machine's TensorRT version, GPU name and compute capability (needs tensorrt and a CUDA torch)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {BUILD_HINT}") from None
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("TensorRT engines need PyTorch with CUDA: pip install 'disca[torch]'") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU and none is visible here ({BUILD_HINT})")
    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def engine_key(graph: str, precision: str) -> str:
    return f"{graph}.{precision}"


def engine_file(graph: str, precision: str) -> str:
    return f"{ENGINE_DIR}/{graph}.{precision}.plan"


def profile_shapes(spec: GraphSpec, ranges, patch, static: bool = False) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shapes} for one optimization profile, from the manifest's ranges.

    `static`: min = opt = max = the opt shape (a fixed-shape engine, which CUDA graphs need).
    The derived `tokens` dim follows the other dims at each of the three points.
    """
    points = [{d: getattr(ranges, d)[k] for d in DIMS} for k in ((1, 1, 1) if static else (0, 1, 2))]
    return {t.name: [list(resolve(t, dims, patch)) for dims in points] for t in spec.inputs}


def parse_cc(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def check_precision_supported(precision: str, compute_capability: str, gpu: str) -> None:
    if precision == "fp8" and parse_cc(compute_capability) < FP8_MIN_CC:
        raise BackendUnavailable(
            f"FP8 engines need compute capability 8.9 or higher (Ada, Hopper, Blackwell); {gpu} has "
            f"{compute_capability}: build --precision fp16 instead"
        )


def check_engine(record: dict, environment: dict, onnx_sha256: str) -> None:
    """Raise EngineMismatch when the engine cannot run here or is stale.

    `environment`: {"tensorrt": version, "gpu": name, "compute_capability": "9.0"} of this machine.
    """
    plan = record["file"]
    fix = f"rebuild it with `disca-export build BUNDLE --precision {record['precision']}`"
    if record["tensorrt"] != environment["tensorrt"]:
        raise EngineMismatch(
            f"{plan} was built with TensorRT {record['tensorrt']}, this machine has {environment['tensorrt']}: {fix}"
        )
    if record["compute_capability"] != environment["compute_capability"] or record["gpu"] != environment["gpu"]:
        raise EngineMismatch(
            f"{plan} was built for {record['gpu']} (compute capability {record['compute_capability']}), this "
            f"machine has {environment['gpu']} ({environment['compute_capability']}): {fix}"
        )
    if record["onnx_sha256"] != onnx_sha256:
        raise EngineMismatch(f"{plan} was built from another version of {record['onnx']}: {fix}")


def graph_digest(bundle: Bundle, graph: str, precision: str) -> str:
    """sha256 over the manifest hashes of a graph variant's files (.onnx and its external data).

    Cheap at load time (no multi-GB hashing) and it changes whenever the graph is re-exported
    or recalibrated, which is when an engine built from it goes stale.
    """
    onnx_rel = str(bundle.graph_path(graph, precision).relative_to(bundle.path))
    files = bundle.manifest["files"]
    parts = [files[rel]["sha256"] for rel in (onnx_rel, onnx_rel + ".data") if rel in files]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def engine_record(bundle: Bundle, graph: str, precision: str) -> dict:
    records = bundle.manifest.get("engines", {})
    key = engine_key(graph, precision)
    if key not in records:
        built = ", ".join(records) or "none"
        raise BundleError(
            f"bundle {bundle.path} has no {precision} TensorRT engine for the {graph} graph (built: {built}); "
            f"build it with `disca-export build {bundle.path} --precision {precision}`"
        )
    return records[key]


def add_engine(bundle: Bundle, record: dict, plan: bytes) -> dict:
    """Write an engine's plan under a fresh name and switch the manifest to it in one atomic step; the plan it
    replaces (same graph and precision) is removed after. -> the record written."""
    manifest = copy.deepcopy(bundle.manifest)
    key = engine_key(record["graph"], record["precision"])
    old = (manifest.get("engines") or {}).get(key)
    stem, suffix = engine_file(record["graph"], record["precision"]).rsplit(".", 1)
    record = {**record, "file": fresh_name(stem, "." + suffix)}
    with bundle.staging() as stage:
        (stage / record["file"]).parent.mkdir(parents=True, exist_ok=True)
        (stage / record["file"]).write_bytes(plan)
        if old:
            manifest["files"].pop(old["file"], None)
        manifest["files"].pop(TIMING_CACHE, None)  # a builder cache, not read by runs (older bundles listed it)
        manifest.setdefault("engines", {})[key] = record
        manifest["files"][record["file"]] = file_entry(stage, record["file"])
        bundle.commit(manifest, stage)
    return record


def write_manifest(bundle: Bundle) -> None:
    """Rewrite a bundle's manifest from `bundle.manifest`: checked, fsync'd, in one atomic replace."""
    bundle.commit()


def plan_path(bundle: Bundle, record: dict) -> Path:
    return bundle.resolve(record["file"], f"engines.{engine_key(record['graph'], record['precision'])}.file")
