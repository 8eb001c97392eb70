"""disca's TensorRT / Polygraphy / ONNX Runtime GPU code against stand-ins with exactly the documented
interface of the objects it touches, on CPU (no TensorRT, no GPU here).

Each stand-in follows its reference: TensorRT's Python API docs (IHostMemory: the buffer protocol and
`nbytes`, no `__len__`; IExecutionContext.set_tensor_address / set_input_shape answer a bool; ICudaEngine's
weight-streaming attributes), Polygraphy 0.53.6's source (`CreateConfig`'s keywords; a path given for a
timing cache is locked with a `<path>.lock` file that is never deleted, a file object is not; a saved
cache is fsync'ed; a parser error is a PolygraphyException), torch.cuda's device queries, and
onnxruntime's graph assignment report. disca's own code runs for real.
"""

import os
import sys
import types

import pytest
import torch

from disca.bundle import Bundle
from disca.cli.export import main as export_cli
from disca.engines import add_engine, environment, version_tuple
from disca.errors import BackendUnavailable, DiscaError
from disca.exporter.tensorrt_build import build_engines
from disca.runtime.backends import get_backend
from disca.runtime.backends.onnxrt import (
    ORT_TRT_CACHE,
    check_one_onnxruntime,
    check_placement,
    provider_options,
)
from disca.runtime.backends.tensorrt_backend import bind_inputs, check_input, set_weight_budget
from tests.test_cli import error_line, invoke
from tests.test_tensorrt import _record

GPUS = {0: ("NVIDIA H100 80GB HBM3", (9, 0)), 1: ("NVIDIA L4", (8, 9))}


# ----------------------------------------------------------------------------- stand-ins


class HostMemory(bytes):
    """tensorrt.IHostMemory: the buffer protocol, `nbytes` and `dtype`; no `__len__`."""

    __len__ = None  # len(plan) raises TypeError, as on the real object

    @property
    def nbytes(self):
        return bytes.__len__(self)

    dtype = "UINT8"


class PolygraphyException(Exception):
    pass


# Polygraphy 0.53.6's CreateConfig keywords (backend/trt/config.py).
CREATE_CONFIG_KEYWORDS = {
    "profiles", "precision_constraints", "load_timing_cache", "algorithm_selector", "sparse_weights",
    "tactic_sources", "restricted", "profiling_verbosity", "memory_pool_limits", "refittable", "strip_plan",
    "preview_features", "engine_capability", "direct_io", "builder_optimization_level",
    "hardware_compatibility_level", "max_aux_streams", "version_compatible", "exclude_lean_runtime",
    "quantization_flags", "error_on_timing_cache_miss", "disable_compilation_cache", "progress_monitor",
    "weight_streaming", "runtime_platform", "tiling_optimization_level",
}  # fmt: skip


def _lock(path):  # polygraphy.util.LockFile on a path: creates `<path>.lock`, never deletes it
    if isinstance(path, str):
        open(path + ".lock", "wb").close()


def _file_like(obj):  # polygraphy.util.is_file_like
    return hasattr(obj, "read") and hasattr(obj, "write")


def _check_mode(file_like, mode):  # polygraphy.util.warn_if_wrong_mode reads `file_like.mode` (BytesIO has none)
    assert ("b" in file_like.mode) == ("b" in mode)


def _load(src):  # polygraphy.util.load_file
    if _file_like(src):
        _check_mode(src, "rb")
        src.seek(0)
        return src.read()
    _lock(src)
    with open(src, "rb") as f:
        return f.read()


class Polygraphy:
    """polygraphy.backend.trt's loaders, recording what disca asks for."""

    def __init__(self, unparsable=()):
        self.unparsable = set(unparsable)
        self.loaded_caches = []  # timing cache bytes each build started from
        self.built = []

    def modules(self):
        trt = types.ModuleType("polygraphy.backend.trt")
        trt.Profile = Profile
        trt.CreateConfig = self.create_config
        trt.network_from_onnx_path = self.network_from_onnx_path
        trt.engine_bytes_from_network = self.engine_bytes_from_network
        exc = types.ModuleType("polygraphy.exception")
        exc.PolygraphyException = PolygraphyException
        root, backend = types.ModuleType("polygraphy"), types.ModuleType("polygraphy.backend")
        return {"polygraphy": root, "polygraphy.backend": backend, "polygraphy.backend.trt": trt,
                "polygraphy.exception": exc}  # fmt: skip

    def create_config(self, **kwargs):
        unknown = set(kwargs) - CREATE_CONFIG_KEYWORDS
        assert not unknown, f"not a CreateConfig keyword in Polygraphy 0.53.6: {unknown}"
        return kwargs

    def network_from_onnx_path(self, path, flags=None, plugin_instancenorm=None, strongly_typed=None, **kw):
        assert strongly_typed is True
        if os.path.basename(path) in self.unparsable:
            raise PolygraphyException("Could not parse ONNX correctly")
        return ("builder", "network", path)

    def engine_bytes_from_network(self, network, config=None, save_timing_cache=None):
        cache = config["load_timing_cache"]
        self.loaded_caches.append(_load(cache) if cache is not None else None)
        self.built.append(os.path.basename(network[2]))
        if save_timing_cache is not None:  # polygraphy.util.save_file: write, flush, fsync
            _lock(save_timing_cache)
            if isinstance(save_timing_cache, str):
                with open(save_timing_cache, "wb") as f:
                    f.write(b"cache:" + b",".join(n.encode() for n in self.built))
            else:
                _check_mode(save_timing_cache, "wb")
                save_timing_cache.write(b"cache:" + b",".join(n.encode() for n in self.built))
                save_timing_cache.flush()
                os.fsync(save_timing_cache.fileno())
        return HostMemory(b"plan of " + os.path.basename(network[2]).encode())


class Profile:
    def __init__(self):
        self.shapes = {}

    def add(self, name, min, opt, max):
        self.shapes[name] = (min, opt, max)
        return self


def _tensorrt_module(version):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.IProgressMonitor = IProgressMonitor
    return trt


@pytest.fixture
def machine(monkeypatch):
    """TensorRT 10.15.1 and two GPUs, as torch.cuda reports them; returns a function to install Polygraphy."""
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module("10.15.1.29"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(GPUS))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def index(device=None):
        device = torch.device(device) if device is not None else torch.device("cuda", 0)
        return device.index or 0

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPUS[index(device)][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: GPUS[index(device)][1])

    def install(**kwargs):
        pg = Polygraphy(**kwargs)
        for name, module in pg.modules().items():
            monkeypatch.setitem(sys.modules, name, module)
        return pg

    return install


def _bundle_files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- the builder


def test_plan_is_written_from_a_serialized_engine_without_len(bundle_copy):
    plan = HostMemory(b"\x00serialized engine\xff")
    with pytest.raises(TypeError):
        len(plan)  # the stand-in is faithful: what `len(plan)` did on a GPU
    b = Bundle.open(bundle_copy)
    record = add_engine(b, _record(b, "full", "fp16"), plan)
    assert (bundle_copy / record["file"]).read_bytes() == bytes(plan)
    assert Bundle.open(bundle_copy, verify=True).manifest["files"][record["file"]]["bytes"] == plan.nbytes


def test_build_writes_every_engine_and_leaves_no_lock_files(machine, bundle_copy):
    pg = machine()
    logs = []
    records = build_engines(bundle_copy, "fp16", ("full", "predictor"), log=logs.append)
    assert pg.built == ["full.fp16.onnx", "predictor.fp16.onnx"]  # the second graph is built too
    b = Bundle.open(bundle_copy, verify=True)
    for graph in ("full", "predictor"):
        plan = b.manifest["engines"][f"{graph}.fp16"]["file"]  # a fresh name per build
        assert (bundle_copy / plan).read_bytes() == f"plan of {graph}.fp16.onnx".encode()
    assert [r["gpu"] for r in records] == ["NVIDIA H100 80GB HBM3"] * 2
    assert any("MiB" in line for line in logs)
    # One timing cache per TensorRT version and compute capability (not listed in the manifest: runs don't
    # read it), and no `.lock` or temporary file left in the bundle.
    cache = "engines/timing.trt10.15.1.29.sm90.cache"
    files = _bundle_files(bundle_copy)
    plans = [b.manifest["engines"][f"{graph}.fp16"]["file"] for graph in ("full", "predictor")]
    assert [f for f in files if f.startswith("engines/")] == sorted([cache, *plans])
    assert not [f for f in files if f.endswith((".lock", ".tmp"))]
    assert cache not in b.manifest["files"]
    # The second build starts from the first one's cache; a rebuild from both.
    assert pg.loaded_caches == [None, b"cache:full.fp16.onnx"]
    build_engines(bundle_copy, "fp16", ("full",))
    assert pg.loaded_caches[-1] == b"cache:full.fp16.onnx,predictor.fp16.onnx"
    assert not [f for f in _bundle_files(bundle_copy) if f.endswith((".lock", ".tmp"))]


def test_parser_failure_is_one_error_line_suggesting_opset_20(machine, bundle_copy):
    pg = machine(unparsable={"predictor.fp16.onnx"})
    before = (bundle_copy / "manifest.json").read_text()
    line = error_line(invoke(export_cli, ["build", bundle_copy, "--precision", "fp16", "--graphs", "predictor"]))
    assert "TensorRT 10.15.1.29 could not parse predictor.fp16.onnx (Could not parse ONNX correctly" in line
    assert "--opset 20" in line
    assert pg.built == [] and (bundle_copy / "manifest.json").read_text() == before


def test_tensorrt_older_than_10_15_is_refused_for_opset_23(machine, bundle_copy, monkeypatch):
    pg = machine()
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module("10.14.1.48"))
    line = error_line(invoke(export_cli, ["build", bundle_copy, "--precision", "fp16"]))
    assert "TensorRT 10.14.1.48 cannot parse full.fp16.onnx (opset 23" in line
    assert "pip install 'tensorrt>=10.15'" in line and "--opset 20" in line
    assert pg.built == []
    assert version_tuple("11.0.0rc1") == (11, 0) and version_tuple("10.15.1.29") >= (10, 15)


def test_tensorrt_extra_admits_only_parsers_that_read_opset_23():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.load(open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb"))["project"]
    extras = project["optional-dependencies"]
    trt = next(Requirement(r) for r in extras["tensorrt"] if r.startswith("tensorrt"))
    assert not trt.specifier.contains("10.14.1") and trt.specifier.contains("10.15.1")
    assert trt.specifier.contains("11.4.0")
    # onnxruntime and onnxruntime-gpu overwrite each other: never both from one install.
    names = {k: {Requirement(r).name for r in v} for k, v in extras.items()}
    assert not {Requirement(r).name for r in project["dependencies"]} & {"onnxruntime", "onnxruntime-gpu"}
    assert names["cpu"] >= {"onnxruntime"} and names["gpu"] >= {"onnxruntime-gpu"}
    assert not [k for k, v in names.items() if "onnxruntime" in v and "onnxruntime-gpu" in v]
    assert not [k for k in extras if k not in ("cpu", "gpu") and names[k] & {"onnxruntime", "onnxruntime-gpu"}]


# ----------------------------------------------------------------------------- the runtime


def test_environment_is_the_requested_gpus(machine):
    assert environment("cuda:1") == {"tensorrt": "10.15.1.29", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert environment()["gpu"] == "NVIDIA H100 80GB HBM3"
    with pytest.raises(BackendUnavailable, match=r"device cuda:2 is not a visible GPU here \(cuda:0 to cuda:1\)"):
        environment("cuda:2")


def _engine_records(bundle, precision="fp16", **extra):
    for graph in ("full", "predictor"):
        add_engine(bundle, {**_record(bundle, graph, precision), "tensorrt": "10.15.1.29", **extra}, b"plan")


def test_engines_for_another_gpu_are_refused_on_the_requested_device(machine, bundle_copy):
    b = Bundle.open(bundle_copy)
    _engine_records(b)  # built on cuda:0, an H100
    with pytest.raises(DiscaError, match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), this machine "
                       r"has NVIDIA L4 \(8.9\)"):  # fmt: skip
        get_backend("tensorrt", b, device="cuda:1").activate()


def test_weight_streaming_engines_are_refused_with_cuda_graphs(machine, bundle_copy):
    b = Bundle.open(bundle_copy)
    _engine_records(b, static=True, weight_streaming=True)
    with pytest.raises(BackendUnavailable, match="streams its weights, which cannot be captured in a CUDA graph"):
        get_backend("tensorrt", b, cuda_graphs=True).activate()


class Engine:
    """tensorrt.ICudaEngine's weight-streaming attributes (TensorRT >= 10.1)."""

    streamable_weights_size = 1000

    def __init__(self):
        self.budgets = []

    def get_weight_streaming_automatic_budget(self):
        return 600

    @property
    def weight_streaming_budget_v2(self):
        return self.budgets[-1] if self.budgets else self.streamable_weights_size

    @weight_streaming_budget_v2.setter
    def weight_streaming_budget_v2(self, value):
        self.budgets.append(value)


def test_weight_streaming_engines_get_a_budget():
    streaming = {"file": "engines/full.fp16.plan", "weight_streaming": True}
    engine = Engine()
    assert set_weight_budget(engine, streaming, None) == 600 and engine.budgets == [600]  # TensorRT's automatic
    assert set_weight_budget(engine, streaming, 250) == 250 and engine.budgets == [600, 250]
    with pytest.raises(DiscaError, match=r"budget 5000 bytes is outside 0..1000"):
        set_weight_budget(engine, streaming, 5000)
    nothing = Engine()
    nothing.streamable_weights_size = 0  # TensorRT found nothing worth streaming
    assert set_weight_budget(nothing, streaming, None) == 0 and nothing.budgets == []
    plain = {"file": "engines/full.fp16.plan", "weight_streaming": False}
    assert set_weight_budget(Engine(), plain, None) is None
    with pytest.raises(BackendUnavailable, match="built without weight streaming: rebuild it"):
        set_weight_budget(Engine(), plain, 100)


class Context:
    """tensorrt.IExecutionContext's binding calls: set_input_shape and set_tensor_address answer False on
    a shape outside the profile or a rejected address (and keep what was bound before)."""

    def __init__(self, profile, reject=()):
        self.profile, self.reject = profile, set(reject)
        self.addresses, self.shapes = {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.profile[name]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)) or len(shape) != len(lo):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, address):
        if name in self.reject:
            return False
        self.addresses[name] = address
        return True


def _inputs(b):
    from disca.engines import profile_shapes

    profile = profile_shapes(b.specs["predictor"], b.ranges, b.patch)
    inputs = {name: torch.zeros(opt) for name, (_, opt, _) in profile.items()}
    return profile, inputs, {name: torch.float32 for name in inputs}


def test_rejected_address_dtype_and_device_are_errors(tiny_bundle):
    profile, inputs, dtypes = _inputs(Bundle.open(tiny_bundle))
    cpu = torch.device("cpu")
    ctx = Context(profile)
    bind_inputs(ctx, "predictor", inputs, dtypes, cpu, profile)
    assert ctx.addresses == {name: t.data_ptr() for name, t in inputs.items()}
    with pytest.raises(DiscaError, match="TensorRT rejected the address of predictor engine tensor hidden"):
        bind_inputs(Context(profile, reject={"hidden"}), "predictor", inputs, dtypes, cpu, profile)
    half = {**inputs, "latent": inputs["latent"].half()}
    with pytest.raises(DiscaError, match="input latent is torch.float16, the engine takes torch.float32"):
        bind_inputs(Context(profile), "predictor", half, dtypes, cpu, profile)
    with pytest.raises(DiscaError, match=r"input latent is on cpu, the engine runs on cuda:1"):
        check_input("predictor", "latent", inputs["latent"], torch.float32, torch.device("cuda", 1))
    big = {**inputs, "t": torch.zeros(99)}
    with pytest.raises(DiscaError, match=r"input t has shape \(99,\), outside the engine's profile"):
        bind_inputs(Context(profile), "predictor", big, dtypes, cpu, profile)


# ----------------------------------------------------------------------------- ONNX Runtime on a GPU


def test_ort_tensorrt_provider_gets_caches_profiles_and_cuda_behind_it(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    (trt_name, trt), (cuda_name, cuda) = provider_options(["TensorrtExecutionProvider"], b, "predictor", 1)
    assert (trt_name, cuda_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt["device_id"] == cuda["device_id"] == 1
    assert trt["trt_engine_cache_enable"] and trt["trt_timing_cache_enable"]
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(b.path / ORT_TRT_CACHE)
    # conftest's tiny ranges: tokens = frames * (height/2) * (width/2) + text_len
    assert trt["trt_profile_min_shapes"] == "latent:1x3x1x4x4,t:1,r:1,text:1x1x16,hidden:1x5x32"
    assert trt["trt_profile_max_shapes"] == "latent:3x3x4x12x12,t:3,r:3,text:3x8x16,hidden:3x152x32"
    assert provider_options(["CUDAExecutionProvider"], b, "full") == [("CUDAExecutionProvider", {"device_id": 0})]
    assert provider_options(["CPUExecutionProvider"], b, "full") == [("CPUExecutionProvider", {})]


def test_node_level_cpu_fallback_is_seen(tiny_bundle):
    with get_backend("onnxruntime", Bundle.open(tiny_bundle)) as backend:  # the real report, on the CPU
        assert set(backend.placement) >= {"full", "predictor"}
        assert set(backend.placement["full"]) == {"CPUExecutionProvider"}
        assert backend.placement["full"]["CPUExecutionProvider"]["MatMul"] > 0
    # Behind a GPU provider: shape computations on the CPU are ORT's design, matrix products are not.
    check_placement(
        {"CUDAExecutionProvider": {"MatMul": 8}, "CPUExecutionProvider": {"Shape": 4}}, "CUDAExecutionProvider", "full"
    )
    with pytest.raises(BackendUnavailable, match=r"put 2 MatMul node\(s\) of the full graph on the CPU behind CUDA"):
        check_placement({"CUDAExecutionProvider": {"MatMul": 6}, "CPUExecutionProvider": {"MatMul": 2, "Shape": 1}},
                        "CUDAExecutionProvider", "full")  # fmt: skip


def test_onnxruntime_and_onnxruntime_gpu_together_are_refused():
    check_one_onnxruntime({"onnxruntime", "numpy"})
    check_one_onnxruntime({"onnxruntime-gpu"})
    with pytest.raises(BackendUnavailable, match="both installed and overwrite each other: pip uninstall"):
        check_one_onnxruntime({"onnxruntime", "onnxruntime-gpu"})
