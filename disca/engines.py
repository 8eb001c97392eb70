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
LEGACY_TIMING_CACHE = f"{ENGINE_DIR}/timing.cache"  # older bundles listed their one timing cache in `files`
FP8_MIN_CC = (8, 9)  # FP8 tensor cores: Ada, Hopper, Blackwell
BUILD_HINT = "pip install 'disca[gpu,torch,tensorrt]' on a machine with an NVIDIA GPU"
# The ONNX parser reads opset 23's Attention from TensorRT 10.14 and its RMSNormalization from 10.15.
MIN_TENSORRT_OPSET23 = (10, 15)


def environment(device="cuda") -> dict:
    """TensorRT version, name and compute capability of `device` ("cuda": the current one; "cuda:1", ...).

    Needs tensorrt and a CUDA torch.
    """
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
    device = torch.device(device)
    if device.type != "cuda" or (device.index or 0) >= torch.cuda.device_count():
        raise BackendUnavailable(
            f"device {device} is not a visible GPU here (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }


def version_tuple(version: str) -> tuple[int, ...]:
    """A version string as numbers: "10.15.1.29" -> (10, 15, 1, 29).

    Stops at the first part that is not a number: "11.0.0rc1" -> (11, 0).
    """
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def check_parser_supports(opset: int, tensorrt_version: str, onnx_name: str) -> None:
    """An opset-23 graph (one Attention node, RMSNormalization) needs TensorRT >= 10.15's ONNX parser."""
    if opset >= 23 and version_tuple(tensorrt_version) < MIN_TENSORRT_OPSET23:
        need = ".".join(map(str, MIN_TENSORRT_OPSET23))
        raise BackendUnavailable(
            f"TensorRT {tensorrt_version} cannot parse {onnx_name} (opset {opset}: Attention and "
            f"RMSNormalization need TensorRT >= {need}): pip install 'tensorrt>={need}', or re-export the bundle "
            "with `disca-export onnx ... --opset 20` (both decomposed)"
        )


def timing_cache_file(environment: dict) -> str:
    """The builder's timing cache, one per TensorRT version and compute capability (a cache from another
    version or GPU is useless to TensorRT, and a bundle may be built on several machines)."""
    cc = environment["compute_capability"].replace(".", "")
    return f"{ENGINE_DIR}/timing.trt{environment['tensorrt']}.sm{cc}.cache"


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


def add_engine(bundle: Bundle, record: dict, plan) -> dict:
    """Write an engine's plan under a fresh name and switch the manifest to it in one atomic step; the plan it
    replaces (same graph and precision) is removed after. -> the record written.

    `plan`: bytes, or TensorRT's IHostMemory (the buffer protocol and `nbytes`, but no `len()`): a memoryview
    reads it in place, with no copy of a multi-GB plan, as NVIDIA's demo does.
    """
    manifest = copy.deepcopy(bundle.manifest)
    key = engine_key(record["graph"], record["precision"])
    old = (manifest.get("engines") or {}).get(key)
    stem, suffix = engine_file(record["graph"], record["precision"]).rsplit(".", 1)
    record = {**record, "file": fresh_name(stem, "." + suffix)}
    with bundle.staging() as stage:
        (stage / record["file"]).parent.mkdir(parents=True, exist_ok=True)
        (stage / record["file"]).write_bytes(memoryview(plan).cast("B"))
        if old:
            manifest["files"].pop(old["file"], None)
        manifest["files"].pop(LEGACY_TIMING_CACHE, None)  # a builder cache, not read by runs
        manifest.setdefault("engines", {})[key] = record
        manifest["files"][record["file"]] = file_entry(stage, record["file"])
        bundle.commit(manifest, stage)
    return record


def write_manifest(bundle: Bundle) -> None:
    """Rewrite a bundle's manifest from `bundle.manifest`: checked, fsync'd, in one atomic replace."""
    bundle.commit()


def plan_path(bundle: Bundle, record: dict) -> Path:
    return bundle.resolve(record["file"], f"engines.{engine_key(record['graph'], record['precision'])}.file")
