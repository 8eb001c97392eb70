"""ONNX Runtime backend: needs only numpy + onnxruntime (no torch)."""

from __future__ import annotations

import numpy as np

from disca.errors import BackendUnavailable, DiscaError
from disca.runtime.backends.base import HEAD_USERS, Backend

# Where each execution provider keeps its tensors (for I/O binding).
_DEVICE = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend(Backend):
    """Runs the two ONNX graphs with ONNX Runtime.

    The cache (`hidden`) is bound as an output OrtValue on the provider's device
    by the full graph, and bound as an input OrtValue of the predictor graph:
    it never leaves the device between steps.
    """

    name = "onnxruntime"

    def __init__(
        self, bundle, providers=("cpu",), threads: int | None = None, precision: str = "fp32", spinning: bool = False
    ):
        super().__init__(bundle)
        self.providers = [_ALIASES.get(p.lower(), p) for p in providers]
        self.threads = threads
        self.precision = precision
        self.spinning = spinning

    def _activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
        available = ort.get_available_providers()
        for p in self.providers:
            if p not in available:
                raise BackendUnavailable(
                    f"ONNX Runtime provider {p} is not available here (available: {', '.join(available)}); "
                    "for CUDA/TensorRT install onnxruntime-gpu"
                )
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        # The two sessions have a thread pool each and run alternately: a pool that spin-waits after its call
        # steals the cores from the other one (measured on 2 cores: full step 121 ms with spinning vs 65 ms without).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        self.sessions = {}
        # The head and probe graphs (training-free baselines only) are optional: older bundles, adapted models,
        # or a precision without them.
        manifest = self.bundle.manifest["graphs"]
        graphs = ["full", "predictor"]
        graphs += [
            g for g in ("head", "first", "rest", "tail") if self.precision in manifest.get(g, {}).get("variants", {})
        ]
        for graph in graphs:
            path = self.bundle.graph_path(graph, self.precision)
            try:
                session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
            except Exception as e:  # ORT raises its own exception types for unreadable models
                raise DiscaError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
            # onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing: fail loudly instead.
            if session.get_providers()[0] != self.providers[0]:
                raise BackendUnavailable(
                    f"ONNX Runtime could not start {self.providers[0]} (active: {', '.join(session.get_providers())})"
                )
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
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
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
