"""ONNX Runtime backend: needs only numpy + onnxruntime (no torch)."""

from __future__ import annotations

import collections
from importlib import metadata

import numpy as np

from disca.engines import ENGINE_DIR, profile_shapes
from disca.errors import BackendUnavailable, BundleError, DiscaError
from disca.runtime.backends.base import HEAD_USERS, Backend
from disca.runtime.backends.graph_ops import CONTROL_FLOW, op_types
from disca.runtime.inputs import non_negative_int, positive_int

# Where each execution provider keeps its tensors (for I/O binding).
_DEVICE = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
ORT_TRT_CACHE = f"{ENGINE_DIR}/onnxruntime-trt"  # the TensorRT provider's engine and timing caches, in the bundle
# Ops that do the work of a step: one of them on the CPU behind a GPU provider is a silent slowdown. (The CUDA
# provider places small shape computations on the CPU on purpose: those are reported, not refused.)
HEAVY_OPS = {
    "Attention",
    "Conv",
    "ConvTranspose",
    "DequantizeLinear",
    "Einsum",
    "Gemm",
    "LayerNormalization",
    "MatMul",
    "MultiHeadAttention",
    "QuantizeLinear",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "Softmax",
}
INSTALL_HINT = "pip install 'disca[cpu]' (or 'disca[gpu]' on a machine with an NVIDIA GPU, never both)"


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def check_one_onnxruntime(installed=None) -> None:
    """onnxruntime and onnxruntime-gpu install into the same `onnxruntime` package: with both, whichever was
    installed last wins, and the CUDA provider can vanish. `installed`: distribution names (default: this env's)."""
    if installed is None:
        installed = {n for n in ("onnxruntime", "onnxruntime-gpu") if _installed(n)}
    if {"onnxruntime", "onnxruntime-gpu"} <= set(installed):
        raise BackendUnavailable(
            "onnxruntime and onnxruntime-gpu are both installed and overwrite each other: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'disca[cpu]' or 'disca[gpu]'"
        )


def _shape_list(shapes: dict, point: int) -> str:
    """ORT TensorRT provider profile syntax: "latent:1x3x2x8x8,t:1,..." at one profile point (0/1/2)."""
    return ",".join(f"{name}:{'x'.join(map(str, dims[point]))}" for name, dims in shapes.items())


def provider_options(providers: list[str], bundle, graph: str, device_id: int = 0) -> list:
    """The providers to give InferenceSession, with their options: (name, {option: value}) pairs.

    TensorRT provider: its engine and timing caches in the bundle (the first session builds for minutes; the next
    ones load), one profile from the manifest's shape ranges (without it, every new shape rebuilds), and the CUDA
    provider behind it for the nodes TensorRT does not take.
    """
    out = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            shapes = profile_shapes(bundle.specs[graph], bundle.ranges, bundle.patch)
            cache = str(bundle.path / ORT_TRT_CACHE)
            out.append(
                (
                    name,
                    {
                        "device_id": device_id,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": cache,
                        "trt_profile_min_shapes": _shape_list(shapes, 0),
                        "trt_profile_opt_shapes": _shape_list(shapes, 1),
                        "trt_profile_max_shapes": _shape_list(shapes, 2),
                    },
                )
            )
            if "CUDAExecutionProvider" not in providers:
                out.append(("CUDAExecutionProvider", {"device_id": device_id}))
        elif name == "CUDAExecutionProvider":
            out.append((name, {"device_id": device_id}))
        else:
            out.append((name, {}))
    return out


def _predictor_depth(bundle) -> int:
    """Blocks in the bundle's predictor (adapted models may declare none: counted as a trunk slice)."""
    depth = (bundle.manifest["model"].get("predictor") or {}).get("depth", 1)
    return depth if isinstance(depth, int) else 1


def placement(session) -> dict[str, collections.Counter]:
    """{provider: Counter(op type)} of a session's nodes (needs `session.record_ep_graph_assignment_info`)."""
    placed = collections.defaultdict(collections.Counter)
    for subgraph in session.get_provider_graph_assignment_info():
        placed[subgraph.ep_name].update(node.op_type for node in subgraph.get_nodes())
    return dict(placed)


def check_placement(placed: dict, requested: str, graph: str) -> None:
    """Refuse a session whose heavy ops ORT quietly put on the CPU behind a GPU provider."""
    if requested == "CPUExecutionProvider":
        return
    heavy = {op: n for op, n in placed.get("CPUExecutionProvider", {}).items() if op in HEAVY_OPS}
    if heavy:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(heavy.items()))
        raise BackendUnavailable(
            f"ONNX Runtime put {ops} node(s) of the {graph} graph on the CPU behind {requested} (the provider has no "
            "kernel for them): use --backend tensorrt, the fp32 variant, or --providers cpu"
        )


class OnnxRuntimeBackend(Backend):
    """Runs the two ONNX graphs with ONNX Runtime.

    The cache (`hidden`) is bound as an output OrtValue on the provider's device
    by the full graph, and bound as an input OrtValue of the predictor graph:
    it never leaves the device between steps.
    """

    name = "onnxruntime"

    def __init__(
        self,
        bundle,
        providers=("cpu",),
        threads: int | None = None,
        precision: str = "fp32",
        spinning: bool = False,
        device_id: int = 0,
        light_threads: int | None = 1,
    ):
        super().__init__(bundle)
        if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
            raise DiscaError(f"providers must be a list of names (cpu, cuda, tensorrt), got {providers!r}")
        self.providers = [_ALIASES.get(p.lower(), p) for p in providers]
        self.threads = None if threads is None else positive_int("threads", threads)  # 0 is not "all cores"
        self.light_threads = None if light_threads is None else positive_int("light_threads", light_threads)
        if precision not in ("fp32", "fp16", "fp8"):
            raise DiscaError(f"precision must be fp32, fp16 or fp8, got {precision!r}")
        if not isinstance(spinning, bool):  # "no" would be truthy
            raise DiscaError(f"spinning must be True or False, got {spinning!r}")
        self.precision = precision
        self.spinning = spinning
        self.device_id = non_negative_int("device_id", device_id)
        self.placement = {}  # graph -> {provider: Counter(op type)}: where ORT put each graph's nodes

    def _activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(f"the onnxruntime backend needs onnxruntime: {INSTALL_HINT}") from None
        check_one_onnxruntime()
        available = ort.get_available_providers()
        for p in self.providers:
            if p not in available:
                raise BackendUnavailable(
                    f"ONNX Runtime provider {p} is not available here (available: {', '.join(available)}); "
                    "for CUDA/TensorRT: pip uninstall onnxruntime && pip install 'disca[gpu]'"
                )
        can_report = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")  # onnxruntime >= 1.23

        def options(threads):
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            # The sessions have a thread pool each and run alternately: a pool that spin-waits after its call
            # steals the cores from the other one (measured on 2 cores: full step 121 ms with spinning vs 65 ms
            # without).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
            # Where each node runs, to catch a node-level fallback to the CPU (ORT logs it at most).
            if can_report:
                opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            return opts

        # The per-token graphs (a predictor without blocks, the head, DBCache's tail) take well under a millisecond
        # on the CPU, where waking a second pool thread costs more than it saves: one thread runs them ~20% faster
        # on 2 cores (scripts/bench_graphs.py). A predictor with blocks is a slice of the trunk: all threads.
        light = {"head", "tail"} | ({"predictor"} if _predictor_depth(self.bundle) == 0 else set())
        opts, light_opts = options(self.threads), options(self.light_threads or self.threads)
        self.sessions = {}
        if "TensorrtExecutionProvider" in self.providers:
            try:
                cache = self.bundle.resolve(ORT_TRT_CACHE, "(the TensorRT provider's cache)")  # not via a symlink out
                cache.mkdir(parents=True, exist_ok=True)
                self.bundle.resolve(ORT_TRT_CACHE, "(the TensorRT provider's cache)")  # nor one made meanwhile
            except OSError as e:
                raise BackendUnavailable(
                    f"the TensorRT provider keeps its engines in the bundle, and {self.bundle.path} is not writable "
                    f"({e.strerror}): copy the bundle somewhere writable"
                ) from None
        # The head and probe graphs (training-free baselines only) are optional: older bundles, adapted models,
        # or a precision without them.
        manifest = self.bundle.manifest["graphs"]
        graphs = ["full", "predictor"]
        graphs += [
            g for g in ("head", "first", "rest", "tail") if self.precision in manifest.get(g, {}).get("variants", {})
        ]
        for graph in graphs:
            path = self.bundle.graph_path(graph, self.precision)
            _check_ops(graph, path, self.bundle)
            try:
                providers = provider_options(self.providers, self.bundle, graph, self.device_id)
                session = ort.InferenceSession(
                    str(path), sess_options=light_opts if graph in light else opts, providers=providers
                )
            except Exception as e:  # ORT raises its own exception types for unreadable models
                raise DiscaError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
            # onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing: fail loudly instead.
            if session.get_providers()[0] != self.providers[0]:
                raise BackendUnavailable(
                    f"ONNX Runtime could not start {self.providers[0]} (active: {', '.join(session.get_providers())})"
                )
            if can_report:
                self.placement[graph] = placement(session)
                check_placement(self.placement[graph], self.providers[0], graph)
            _check_io(graph, session, self.bundle)
            self.sessions[graph] = session
        self.device = _DEVICE.get(self.providers[0], "cpu")
        self._out = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def _deactivate_impl(self) -> None:
        self.sessions = {}

    def _run(self, graph: str, feeds: dict, cache=None):
        session = self.sessions[graph]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        if isinstance(cache, np.ndarray):  # a hidden state computed on the host (extrapolated)
            binding.bind_cpu_input("hidden", cache)
        elif cache is not None:  # the full graph's output, still on the device
            binding.bind_ortvalue_input("hidden", cache)
        for name in self._out[graph]:
            binding.bind_output(name, self.device, self.device_id)
        try:
            session.run_with_iobinding(binding)
        except Exception as e:  # ORT's own exception types: a graph that does not match its manifest declaration
            raise DiscaError(
                f"ONNX Runtime failed running the {graph} graph of {self.bundle.path}: {str(e).splitlines()[0]}"
            ) from None
        return binding.get_outputs()

    def _full_impl(self, latent, t, r, text):
        velocity, hidden = self._run("full", {"latent": latent, "t": t, "r": r, "text": text})
        return velocity.numpy(), hidden  # the cache stays an OrtValue on the device

    def _predict_impl(self, latent, t, r, text, cache):
        (velocity,) = self._run("predictor", {"latent": latent, "t": t, "r": r, "text": text}, cache=cache)
        return velocity.numpy()

    def _optional(self, graph: str, needed_by: str) -> None:
        if graph not in self.sessions:
            raise DiscaError(
                f"bundle {self.bundle.path} has no {self.precision} {graph} graph ({needed_by} need it): "
                "re-export it with this disca version"
            )

    def _head_impl(self, latent, t, r, text, hidden):
        self._optional("head", HEAD_USERS)
        (velocity,) = self._run("head", {"latent": latent, "t": t, "r": r, "text": text}, cache=hidden)
        return velocity.numpy()

    def _first_impl(self, latent, t, r, text):
        self._optional("first", "teacache / first-block")
        return tuple(v.numpy() for v in self._run("first", {"latent": latent, "t": t, "r": r, "text": text}))

    def _rest_impl(self, latent, t, text, vec, first):
        self._optional("rest", "dbcache")
        velocity, hidden = self._run("rest", {"latent": latent, "t": t, "text": text, "vec": vec, "first": first})
        return velocity.numpy(), hidden

    def _tail_impl(self, latent, t, vec, hidden):
        self._optional("tail", "dbcache")
        (velocity,) = self._run("tail", {"latent": latent, "t": t, "vec": vec}, cache=hidden)
        return velocity.numpy()

    def to_numpy(self, x) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else x.numpy()  # velocities are numpy, the cache an OrtValue


def _check_ops(graph: str, path, bundle) -> None:
    """No control flow (`graph_ops.CONTROL_FLOW`): disca's graphs have none, and a hostile Loop never returns."""
    try:
        found = op_types(path) & CONTROL_FLOW
    except (OSError, ValueError):
        return  # not readable as ONNX: ONNX Runtime's load reports it, in its words
    if found:
        raise BundleError(
            f"bundle {bundle.path}: the {graph} graph holds control flow ({', '.join(sorted(found))}), which "
            "disca's exported graphs never do; refusing to run it (re-export the bundle with disca-export)"
        )


_FLOAT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(bfloat16)"}


def _check_io(graph: str, session, bundle) -> None:
    """The graph's inputs and outputs are those its manifest declares (names, ranks, fixed dims; outputs in
    order and floating point): the runtime sizes its arrays from the declaration and unpacks the outputs by
    position, so a manifest that lies about the graph must fail here, not in an allocation, in ORT, or as a
    velocity of the wrong shape broadcast into the latent."""
    spec = bundle.specs[graph]

    def differs(declared, actual, inferred: bool = False) -> bool:
        # An output's dim may be a symbolic expression where the manifest has a number (the exporter could not
        # simplify it): only numbers are compared there, and the sampler checks the velocity's shape each step.
        return len(declared) != len(actual) or any(
            isinstance(d, int) and d != a and not (inferred and isinstance(a, str)) for d, a in zip(declared, actual)
        )

    declared = {t.name: t.shape for t in spec.inputs}
    actual = {i.name: i.shape for i in session.get_inputs()}
    if set(declared) != set(actual) or any(differs(declared[n], actual[n]) for n in declared):
        raise BundleError(
            f"bundle {bundle.path}: the {graph} graph's inputs {actual} do not match the manifest's "
            f"graphs.{graph}.spec {declared}"
        )
    declared_out = [(t.name, t.shape) for t in spec.outputs]
    outputs = session.get_outputs()
    actual_out = [(o.name, o.shape) for o in outputs]
    if (
        [n for n, _ in declared_out] != [n for n, _ in actual_out]
        or any(differs(d, a, inferred=True) for (_, d), (_, a) in zip(declared_out, actual_out))
        or any(o.type not in _FLOAT_TYPES for o in outputs)
    ):
        raise BundleError(
            f"bundle {bundle.path}: the {graph} graph's outputs {[(o.name, o.shape, o.type) for o in outputs]} do not "
            f"match the manifest's graphs.{graph}.spec {declared_out} (floating point, in that order)"
        )
